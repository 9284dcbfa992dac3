"""The noise model, in one place: `clip(x + std * N(0, 1), 0, 1)` on images in [0, 1].

Training (torch), parity inputs, the benchmark and `ae-denoise --add-noise` all draw noise through this
module, so "the model's noise" means one thing everywhere; the exported metadata records it as
`NOISE_MODEL` plus the std the model was trained with. numpy only: the runtime has no torch. The torch
side draws its normal samples with torch's generator (for reproducible training) and applies the same
`apply_noise` formula; a test checks that both give the same result for the same samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NOISE_KIND = "gaussian_clipped"
NOISE_FORMULA = "clip(x + std * N(0, 1), 0, 1)"
NOISE_CLIP = (0.0, 1.0)


def noise_model(std: float) -> dict[str, Any]:
    """The noise description written into every exported file's metadata."""
    return {"kind": NOISE_KIND, "std": float(std), "clip": list(NOISE_CLIP), "formula": NOISE_FORMULA}


def check_std(std: float) -> float:
    """A finite std >= 0, or ValueError saying so."""
    if not np.isfinite(std) or std < 0:
        raise ValueError(f"noise std must be a finite number >= 0; got {std}")
    return float(std)


def apply_noise(clean: Any, std: float, normal: Any) -> Any:
    """clip(clean + std * normal, 0, 1) for numpy arrays or torch tensors (anything with `clip`).

    `normal` holds standard-normal samples of clean's shape; drawing them is the caller's (numpy's or
    torch's generator), the formula is this one.
    """
    return (clean + std * normal).clip(*NOISE_CLIP)


def add_noise(clean: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """float32 images in [0, 1] (any shape) -> a noisy float32 copy, drawn from `rng`."""
    normal = rng.standard_normal(clean.shape, dtype=np.float32)
    return apply_noise(clean.astype(np.float32, copy=False), np.float32(std), normal).astype(
        np.float32, copy=False
    )
