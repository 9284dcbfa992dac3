"""A fully convolutional denoiser for grayscale photographs of any height and width.

Why a second architecture: the lecture's autoencoder squeezes a 28x28 image through Linear layers, so it
only exists at 28x28 and only knows centred Fashion-MNIST objects. This network has no Linear layer: a
small U-Net whose every layer is a convolution, so one set of weights runs on any (H, W).

Shape of the network (`width` C, `levels` L, `depth` D):

* encoder: a 3x3 stem at full resolution, then L stages that each halve the resolution with a 2x2
  stride-2 convolution (doubling the channels up to 4C) followed by D 3x3 convolutions;
* decoder: L stages that each double the resolution with a 2x2 stride-2 transposed convolution, add the
  encoder's feature map of that resolution (the skip connection) and run D 3x3 convolutions; then a 3x3
  convolution to one channel at full resolution.

The network predicts the noise and subtracts it from its input (residual learning, as DnCNN does): the
identity is free, so the layers only have to model the noise, which trains much faster than predicting
the clean image. The output is clamped to [0, 1], the range every image in this project lives in.

"Latent" for this model is the bottleneck feature map (B, C * 2**min(L, 2), H / 2**L, W / 2**L), but it is
not a code the decoder can work from alone: the skip connections carry full- and part-resolution detail
around it. So only the whole denoiser is exported; there is no separate encoder or decoder file.

Input height and width must be multiples of `total_stride` (2**L); `pad_to_stride` reflect-pads and the
caller crops back (the runtime does the same in numpy).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from runtimes.tiling import plan_tiles, run_tiled


def _conv_block(channels: int, depth: int) -> nn.Sequential:
    """D 3x3 convolutions with ReLU, resolution and channels unchanged."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def stage_channels(width: int, levels: int) -> list[int]:
    """Channels at full resolution and after each downsampling: C, 2C, 4C, 4C, ... (capped at 4C)."""
    return [width * 2 ** min(level, 2) for level in range(levels + 1)]


def receptive_radius(levels: int, depth: int) -> int:
    """How far (in input pixels, along each axis) an output pixel reaches: the exact receptive radius.

    Why it matters: a tile of the input that extends this far beyond the part of the output it is kept
    for gives exactly the whole-image result there (the runtime's halo tiles, `runtimes.tiling`), as
    long as tiles start on multiples of the total stride. Summed along the deepest path, output to
    input: the tail and the full-resolution fuse convolution (1 each); the D 3x3 convolutions after each
    upsampling at levels 1..L-1 and after each downsampling at levels 1..L (2**l each); the stem (1); and
    the alignment of a bottleneck pixel's 2**L x 2**L footprint (2**L - 1). The 2x2 stride-2 convolutions
    add nothing more: a downsampled pixel depends on exactly the pixels its footprint covers, an upsampled
    one on the pixel whose footprint holds it. Tested against gradients of random networks, every phase.
    """
    up_convs = depth * (2**levels - 2)  # sum of 2**l for l = 1..L-1
    down_convs = depth * (2 ** (levels + 1) - 2)  # sum of 2**l for l = 1..L
    return 3 + up_convs + down_convs + (2**levels - 1)


class FcnDenoiser(nn.Module):
    """(B, 1, H, W) noisy in [0, 1] -> (B, 1, H, W) denoised in [0, 1]; H, W multiples of total_stride."""

    def __init__(self, width: int, levels: int, depth: int) -> None:
        super().__init__()
        channels = stage_channels(width, levels)
        self.total_stride = 2**levels
        self.receptive_radius = receptive_radius(levels, depth)
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(inplace=True))  # (B, C, H, W)
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in range(levels):
            c_in, c_out = channels[level], channels[level + 1]
            self.down.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 2, stride=2),  # (B, c_out, H / 2**(level+1), ...)
                    nn.ReLU(inplace=True),
                    _conv_block(c_out, depth),
                )
            )
            self.up.append(nn.ConvTranspose2d(c_out, c_in, 2, stride=2))  # back to (B, c_in, H / 2**level)
        # After each skip addition, D convolutions at that resolution (the full-resolution one gets one).
        self.fuse = nn.ModuleList(
            _conv_block(channels[level], depth if level > 0 else 1) for level in range(levels)
        )
        self.tail = nn.Conv2d(width, 1, 3, padding=1)  # (B, 1, H, W): the predicted noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stem(x)  # (B, C, H, W)
        skips: list[torch.Tensor] = []
        for down in self.down:
            skips.append(features)
            features = down(features)  # half the resolution
        for level in reversed(range(len(self.down))):
            features = F.relu(self.up[level](features) + skips[level])  # skip connection
            features = self.fuse[level](features)
        noise = self.tail(features)  # (B, 1, H, W)
        return torch.clamp(x - noise, 0.0, 1.0)


def pad_to_stride(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, int, int]:
    """Reflect-pad (B, 1, H, W) at the bottom/right to multiples of `stride`; returns (padded, H, W)."""
    height, width = int(x.shape[-2]), int(x.shape[-1])
    pad_h, pad_w = (-height) % stride, (-width) % stride
    if pad_h or pad_w:
        mode = "reflect" if height > pad_h and width > pad_w else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, height, width


def denoise_any_size(model: FcnDenoiser, x: torch.Tensor, tile_pixels: int | None = None) -> torch.Tensor:
    """Run the model on (B, 1, H, W) of any H, W: pad to the total stride, crop back.

    With `tile_pixels`, images larger than that run as halo tiles of at most that many pixels, one at a
    time (`runtimes.tiling`, the runtime's own plan): the whole image's result, with memory bounded by the
    tile instead of growing with the photograph (~0.65 GB per megapixel whole, width 32, fp32).
    """
    padded, height, width = pad_to_stride(x, model.total_stride)
    if tile_pixels is not None:
        batch, _, padded_h, padded_w = padded.shape
        stride = model.total_stride
        plan = plan_tiles(padded_h, padded_w, batch, model.receptive_radius, stride, 1, tile_pixels)
        if plan.count > 1:

            def run(windows: np.ndarray) -> np.ndarray:  # (T, 1, h, w) -> (T, 1, h, w)
                return model(torch.from_numpy(windows).to(x.device)).cpu().numpy()

            tiled = run_tiled(run, padded.cpu().numpy(), plan, (height, width), 1, tile_pixels)
            return torch.from_numpy(tiled).to(x.device)
    return model(padded)[..., :height, :width]
