"""Image-quality measures on (B, 1, H, W) tensors in [0, 1], averaged per image.

PSNR and SSIM follow scikit-image's definitions (`peak_signal_noise_ratio`, `structural_similarity` with
its defaults: 7x7 uniform window, K1=0.01, K2=0.03, sample covariance, mean over the valid region), so
the numbers printed during training match those `ae-bench` computes with scikit-image for the baselines.
A test checks the agreement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WIN = 7
_K1, _K2 = 0.01, 0.03


def mse_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, ...) x2 -> (B,) mean squared error of each image."""
    return (x - y).pow(2).flatten(1).mean(1)


def psnr_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B,) PSNR in dB; a perfect match is capped at 100 dB instead of +inf so means stay finite."""
    mse = mse_per_image(x, y).clamp_min(data_range**2 * 1e-10)
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B, 1, H, W) x2 -> (B,) SSIM, scikit-image's default (uniform 7x7 window, valid region)."""
    x = x.to(torch.float64)
    y = y.to(torch.float64)
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    n = SSIM_WIN * SSIM_WIN
    cov_norm = n / (n - 1)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, SSIM_WIN, stride=1)  # (B, 1, H-6, W-6): the valid region only

    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).to(torch.float32)
