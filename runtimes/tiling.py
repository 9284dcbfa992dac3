"""Halo tiles: an any-size convolutional model run on pieces of an image, with the whole image's result.

Why: run whole, one photograph is one sample, so it runs on one core while the others wait, and its
feature maps grow with it. Measured with the photo model (32 channels, 3 levels) on a 2-core x86 VM,
onnxruntime 1.32, one thread: 1.07 s per megapixel at 128x128, 1.16 at 512x512, 1.23 at 1024x1024 and
~2.5 at 12 MP (3000x4000), which held 6.5 GB resident. Cut into tiles, every core takes its share of
them and memory is bounded by the tile size, not by the photograph's.

Why the result is the same: an output pixel depends only on the input pixels within the model's
receptive radius R (metadata `ae_export.receptive_field`, derived from the architecture at export).
Every tile's window reaches at least R beyond the part of the output that is kept from it (rounded up
to the model's size multiple, so that windows start on its stride grid and every downsampling sees the
same pixel groups as in the whole image), except where it meets the image's own border, which the whole
image has there too. So each kept pixel is computed from the same inputs by the same operations; the
tests compare tiled and whole runs.

`plan_tiles` picks the grid; `run_tiled` runs it through any batch function (an `OnnxModel.run`).
Numpy only; never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Tiles per axis that `plan_tiles` considers: 64 x 64 tiles of 0.5 MP cover 2 gigapixels, far past the
# default decompression-bomb guard (25 MP).
MAX_SPLITS = 64


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class AxisTiles:
    """Tiles along one axis: tile i's window is [starts[i], starts[i] + window), and its result fills
    [cores[i][0], cores[i][1]) of the image. Cores partition the axis; every window is as long."""

    window: int
    starts: tuple[int, ...]
    cores: tuple[tuple[int, int], ...]


def split_axis(length: int, count: int, halo: int, multiple: int) -> AxisTiles:
    """Cut an axis of `length` (a multiple of `multiple`) into at most `count` cores, each grown by
    `halo` (a multiple of `multiple`) on both sides where the axis allows.

    A window near the border is shifted inwards instead of shrunk, so all windows have one shape (one
    batch) and the core keeps at least `halo` of context on each side that is not the axis' end.
    """
    if length % multiple or halo % multiple or count < 1:
        raise ValueError(f"split_axis({length}, {count}, {halo}, {multiple}): needs multiples and count >= 1")
    core = _round_up(-(-length // count), multiple)
    window = min(core + 2 * halo, length)
    starts: list[int] = []
    cores: list[tuple[int, int]] = []
    for begin in range(0, length, core):
        starts.append(min(max(begin - halo, 0), length - window))
        cores.append((begin, min(begin + core, length)))
    return AxisTiles(window, tuple(starts), tuple(cores))


@dataclass(frozen=True)
class TilePlan:
    """A grid of equally shaped windows over (H, W) images: rows x cols tiles per image."""

    rows: AxisTiles
    cols: AxisTiles

    @property
    def count(self) -> int:
        """Tiles per image."""
        return len(self.rows.starts) * len(self.cols.starts)

    @property
    def window_pixels(self) -> int:
        return self.rows.window * self.cols.window


@lru_cache(maxsize=256)
def plan_tiles(
    height: int, width: int, images: int, radius: int, multiple: int, slots: int, max_tile_pixels: int
) -> TilePlan:
    """The grid for `images` (H, W) images (H, W multiples of `multiple`) that finishes first on `slots`
    parallel runners, with windows of at most `max_tile_pixels` where any grid allows it.

    Time is modelled as pixels computed: rounds of `slots` tiles at once, each as long as a window, so
    the halo's extra pixels are weighed against the idle cores a whole image leaves. Ties go to fewer
    pixels in all, then fewer tiles. One image that fits runs whole unless splitting it finishes sooner;
    a batch of at least `slots` small images runs whole (any split only adds halo).
    """
    halo = _round_up(radius, multiple)
    rows = [split_axis(height, k, halo, multiple) for k in range(1, min(MAX_SPLITS, height // multiple) + 1)]
    cols = [split_axis(width, k, halo, multiple) for k in range(1, min(MAX_SPLITS, width // multiple) + 1)]
    best: tuple[tuple[int, int, int, int], TilePlan] | None = None
    for row in rows:
        for col in cols:
            plan = TilePlan(row, col)
            tiles = images * plan.count
            pixels = plan.window_pixels
            key = (max(0, pixels - max_tile_pixels), -(-tiles // slots) * pixels, tiles * pixels, tiles)
            if best is None or key < best[0]:
                best = (key, plan)
    assert best is not None  # height, width >= multiple: at least the 1 x 1 grid
    return best[1]


def run_tiled(
    run: Callable[[np.ndarray], np.ndarray],
    batch: np.ndarray,
    plan: TilePlan,
    out_size: tuple[int, int],
    slots: int,
    max_run_pixels: int,
) -> np.ndarray:
    """(N, C, H, W) -> (N, C', h, w): `run` on the plan's windows, each core's result put in place.

    `batch` is already padded to the plan's (H, W); `out_size` (h, w) <= (H, W) crops the padding away.
    Windows go to `run` a few at a time, at most `max_run_pixels` per call (so memory stays bounded),
    in multiples of `slots` where that allows (so every runner gets as many).
    """
    rows, cols = plan.rows, plan.cols
    height, width = out_size
    grid = [(r, c) for r in range(len(rows.starts)) for c in range(len(cols.starts))]
    tiles = [(image, r, c) for image in range(batch.shape[0]) for r, c in grid]
    per_call = max(1, max_run_pixels // plan.window_pixels)
    if per_call > slots:
        per_call -= per_call % slots
    out: np.ndarray | None = None
    for first in range(0, len(tiles), per_call):
        chunk = tiles[first : first + per_call]
        windows = np.empty((len(chunk), batch.shape[1], rows.window, cols.window), dtype=batch.dtype)
        for j, (image, r, c) in enumerate(chunk):
            y, x = rows.starts[r], cols.starts[c]
            windows[j] = batch[image, :, y : y + rows.window, x : x + cols.window]
        results = run(windows)  # (T, C', window_h, window_w)
        if out is None:
            out = np.empty((batch.shape[0], results.shape[1], height, width), dtype=results.dtype)
        for j, (image, r, c) in enumerate(chunk):
            (top, bottom), (left, right) = rows.cores[r], cols.cores[c]
            bottom, right = min(bottom, height), min(right, width)
            y, x = rows.starts[r], cols.starts[c]
            out[image, :, top:bottom, left:right] = results[j, :, top - y : bottom - y, left - x : right - x]
    assert out is not None  # a batch of at least one image has at least one tile
    return out
