"""Decoded images <-> a model's input size: the size modes, shared by `ae-denoise` and training.

Size modes (`SizeMode`). A model with symbolic height and width (the fully convolutional photo model)
takes every image at its own size, whatever the mode (`Denoiser` may run it as exact halo tiles). For a
fixed-size model (the lecture's 28x28):

* "exact" (default): the image must already have the model's size; any other is refused with
  SizeMismatchError, which names both sizes and the two flags below. Never a silent resize: a photograph
  squeezed through a 28x28 model of clothing comes back as a scaled-up picture of a shirt.
* "resize" (opt in): resize to the model size, denoise, resize the result back. Right for images that
  are, like the training data, one object per picture.
* "tile": overlapping model-size tiles (stride = half a tile) over a reflection-padded image, blended with
  a sin^2 (Hann) window. The window is a partition of unity at half-tile stride, so the blend is an exact
  weighted average with no seams, and every original pixel lies inside tiles rather than on their edge.
  Note the model is an autoencoder of centred 28x28 objects with a tiny latent code: on crops of larger
  scenes it keeps the picture's structure but does not reliably beat the noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from runtimes.layout import ImageLayout, prepare_images, restore_images

SIZE_MODES = ("exact", "resize", "tile")
SizeMode = Literal["exact", "resize", "tile"]


class SizeMismatchError(ValueError):
    """A fixed-size model cannot take this image as it is; the message names both sizes and the flags."""

    def __init__(self, size: tuple[int, int], model_size: tuple[int, int]) -> None:
        (height, width), (model_h, model_w) = size, model_size
        super().__init__(
            f"image is {width}x{height} (width x height) but the model takes only {model_w}x{model_h} "
            f"images; nothing written. To denoise it anyway: --size-mode resize (scale to {model_w}x{model_h}"
            " and back) or --size-mode tile (overlapping model-size tiles); or use a model that takes any "
            "size (ae-train --preset photo)"
        )


def to_uint8(values: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8 0-255, rounded to nearest (values outside [0, 1] are clipped)."""
    scaled = values * np.float32(255.0)
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return scaled.astype(np.uint8)


def fit_gray8(gray8: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 -> (h, w) uint8, bicubic; the one resize that training and serving share.

    Why one function: a folder of images used for training (`train.data`'s folder dataset) and the same
    files denoised with `--size-mode resize` must become the same model input, pixel for pixel. Resizing
    in 8-bit "L" mode clips bicubic overshoot by itself.
    """
    h, w = size
    if gray8.shape == (h, w):
        return gray8
    return np.asarray(Image.fromarray(gray8).resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)


@dataclass(frozen=True)
class FitPlan:
    """How an image was cut or scaled into model samples, so `from_model` can put the result back."""

    mode: SizeMode
    size: tuple[int, int]  # the original (H, W)
    tile: tuple[int, int]  # the model's (h, w)
    stride: tuple[int, int] = (0, 0)  # tile mode: (sy, sx)
    grid: tuple[int, int] = (1, 1)  # tile mode: tiles per column and row
    padded: tuple[int, int] = (0, 0)  # tile mode: reflection-padded (Hp, Wp)
    channels: int = 1  # 3: an RGB image, each channel its own sample (any-size models only)

    @property
    def count(self) -> int:
        """Model samples this image produced."""
        return self.grid[0] * self.grid[1] * self.channels


def to_model(
    gray8: np.ndarray, tile: tuple[int, int] | None, mode: SizeMode = "exact"
) -> tuple[np.ndarray, FitPlan]:
    """(H, W) uint8 -> float32 model samples (T, 1, h, w) in [0, 1] and the plan to undo it.

    `tile` None: the model takes any size, so the image goes in whole whatever the mode; an (H, W, 3)
    RGB image then becomes three samples, one per channel. "exact" with a fixed-size model raises
    SizeMismatchError unless the image already has the model's size: silently resizing a photograph to
    28x28 and back destroys it.
    """
    if mode not in SIZE_MODES:
        raise ValueError(f"size mode must be one of {', '.join(SIZE_MODES)}; got {mode!r}")
    if gray8.ndim == 3:
        if tile is not None or gray8.shape[2] != 3:
            raise ValueError(f"RGB images go to any-size models only, as (H, W, 3); got {gray8.shape}")
        height, width = gray8.shape[:2]
        samples, _layout = prepare_images(gray8, None)  # (3, 1, H, W): the runtime's one colour split
        return samples, FitPlan("exact", (height, width), (height, width), channels=3)
    height, width = gray8.shape
    if tile is None or (mode == "exact" and gray8.shape == tile):
        unit = gray8.astype(np.float32) / np.float32(255.0)  # (H, W)
        return unit.reshape(1, 1, height, width), FitPlan("exact", (height, width), (height, width))
    if mode == "exact":
        raise SizeMismatchError((height, width), tile)
    th, tw = tile
    if mode == "resize":
        plan = FitPlan("resize", (height, width), tile)
        unit = fit_gray8(gray8, tile).astype(np.float32) / np.float32(255.0)  # (h, w)
        return unit.reshape(1, 1, th, tw), plan
    sy, sx = max(1, th // 2), max(1, tw // 2)
    rows, cols = math.ceil(height / sy) + 1, math.ceil(width / sx) + 1
    padded_h, padded_w = (rows - 1) * sy + th, (cols - 1) * sx + tw
    # Pad top/left by one stride so the first original row/column sits mid-tile, and bottom/right so the
    # grid ends exactly on the padded edge. numpy reflects repeatedly when the pad exceeds the image.
    padded = np.pad(gray8, ((sy, padded_h - sy - height), (sx, padded_w - sx - width)), mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (th, tw))[::sy, ::sx]  # (rows, cols, h, w)
    samples = windows.reshape(rows * cols, 1, th, tw).astype(np.float32) / np.float32(255.0)
    plan = FitPlan("tile", (height, width), tile, (sy, sx), (rows, cols), (padded_h, padded_w))
    return samples, plan


def _window(length: int) -> np.ndarray:
    """sin^2 window, offset by half a sample: never zero, and sums to 1 when shifted by length / 2."""
    return (np.sin(np.pi * (np.arange(length, dtype=np.float64) + 0.5) / length) ** 2).astype(np.float32)


def from_model(samples: np.ndarray, plan: FitPlan) -> np.ndarray:
    """Model output (T, 1, h, w) float32 in [0, 1] -> (H, W) uint8 at the original size ((H, W, 3) for
    an RGB plan)."""
    th, tw = plan.tile
    height, width = plan.size
    if plan.channels == 3:
        return restore_images(samples, ImageLayout("hwc", "uint8", 3))  # (H, W, 3), rounded like to_uint8
    if plan.mode == "exact":
        return to_uint8(samples.reshape(height, width))
    if plan.mode == "resize":
        unit = samples.reshape(th, tw)
        if (height, width) != plan.tile:
            resized = Image.fromarray(np.ascontiguousarray(unit)).resize(
                (width, height), Image.Resampling.BICUBIC
            )
            unit = np.asarray(resized, dtype=np.float32)
        return to_uint8(unit)
    rows, cols = plan.grid
    sy, sx = plan.stride
    weight = np.outer(_window(th), _window(tw))  # (h, w)
    tiles = samples.reshape(rows, cols, th, tw) * weight  # (rows, cols, h, w)
    acc = np.zeros(plan.padded, dtype=np.float32)
    norm = np.zeros(plan.padded, dtype=np.float32)
    if 2 * sy == th and 2 * sx == tw:
        # Tiles of equal row parity and equal column parity do not overlap: add each of the four groups
        # with one reshape instead of a Python loop over every tile.
        for py in (0, 1):
            for px in (0, 1):
                group = tiles[py::2, px::2]  # (ry, rx, h, w)
                ry, rx = group.shape[:2]
                if ry == 0 or rx == 0:
                    continue
                y0, x0 = py * sy, px * sx
                acc[y0 : y0 + ry * th, x0 : x0 + rx * tw] += group.transpose(0, 2, 1, 3).reshape(
                    ry * th, rx * tw
                )
                norm[y0 : y0 + ry * th, x0 : x0 + rx * tw] += np.tile(weight, (ry, rx))
    else:
        for r in range(rows):
            for c in range(cols):
                acc[r * sy : r * sy + th, c * sx : c * sx + tw] += tiles[r, c]
                norm[r * sy : r * sy + th, c * sx : c * sx + tw] += weight
    region = (slice(sy, sy + height), slice(sx, sx + width))
    return to_uint8(acc[region] / norm[region])
