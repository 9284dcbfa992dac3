"""Halo tiles (`runtimes.tiling`): the grid's invariants, and the choice of grid.

The tiled results themselves are compared with whole-image runs of a real exported photo model in
tests/test_photo.py; here the geometry that makes them equal is checked on its own, for many shapes.
"""

from __future__ import annotations

import pytest

from runtimes.tiling import plan_tiles, split_axis


@pytest.mark.parametrize("multiple", [1, 8])
@pytest.mark.parametrize("count", [1, 2, 3, 9])
@pytest.mark.parametrize("halo_units", [0, 1, 4])
@pytest.mark.parametrize("length_units", [1, 7, 13, 64])
def test_split_axis_cores_partition_and_keep_their_halo(
    multiple: int, count: int, halo_units: int, length_units: int
) -> None:
    length, halo = length_units * multiple, halo_units * multiple
    axis = split_axis(length, count, halo, multiple)
    assert 1 <= len(axis.cores) <= count and len(axis.starts) == len(axis.cores)
    assert axis.window % multiple == 0 and axis.window <= length
    assert axis.cores[0][0] == 0 and axis.cores[-1][1] == length  # cores partition the axis...
    for (_, end), (begin, _) in zip(axis.cores, axis.cores[1:], strict=False):
        assert end == begin  # ...with no gap or overlap
    for start, (begin, end) in zip(axis.starts, axis.cores, strict=True):
        assert start % multiple == 0  # on the model's stride grid
        assert 0 <= start and start + axis.window <= length
        assert start <= begin and end <= start + axis.window  # the window holds its core...
        assert start == 0 or begin - start >= halo  # ...with the halo before it, unless at the border
        assert start + axis.window == length or start + axis.window - end >= halo  # and after it


def test_split_axis_refuses_lengths_off_the_grid() -> None:
    with pytest.raises(ValueError, match="multiples"):
        split_axis(30, 2, 8, 8)
    with pytest.raises(ValueError, match="multiples"):
        split_axis(32, 2, 6, 8)


def test_small_image_on_one_core_runs_whole() -> None:
    plan = plan_tiles(512, 512, 1, 30, 8, 1, 1 << 19)
    assert plan.count == 1 and plan.window_pixels == 512 * 512


def test_one_image_is_split_so_that_every_core_works() -> None:
    plan = plan_tiles(512, 512, 1, 30, 8, 2, 1 << 19)
    assert plan.count >= 2
    assert plan.window_pixels < 512 * 512 * 0.7  # each core computes well under the whole image


def test_enough_small_images_run_whole() -> None:
    assert plan_tiles(512, 512, 4, 30, 8, 2, 1 << 19).count == 1  # splitting would only add halo


@pytest.mark.parametrize("cap", [1 << 16, 1 << 18, 1 << 19])
def test_tiles_respect_the_pixel_cap(cap: int) -> None:
    plan = plan_tiles(3000, 4000, 1, 30, 8, 2, cap)
    assert plan.window_pixels <= cap
    if cap >= 1 << 18:  # tiles of 440x568 or more: the halo costs less than 40% more pixels
        assert plan.count * plan.window_pixels < 1.4 * 3000 * 4000


def test_image_smaller_than_the_halo_is_never_split() -> None:
    plan = plan_tiles(64, 64, 1, 30, 8, 2, 1 << 19)  # any split's window would be the whole image
    assert plan.count == 1
