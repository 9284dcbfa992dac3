"""The image layouts callers hand the runtime, validated and viewed as a model batch, and given back.

People have images as (N, 1, H, W), (N, H, W) or one (H, W); float32 in [0, 1] or uint8 0-255. These
functions turn any of them into the model's float32 (N, 1, H, W) batch in one cheap pass, and turn the
model's output back into the caller's own layout and kind. For a model of any height and width (the
photo model), colour images are accepted channels-last too, one (H, W, 3) or (N, H, W, 3): each channel
is a sample, denoised as the grayscale image it is (as `ae-denoise` does with colour files). One (H, W, 1),
(H, W, 2) or (H, W, 4) image (a gray plane channels-last, gray + alpha, RGBA) is refused, naming the
slice to pass: read as a batch of H images 1, 2 or 4 pixels wide, it came back denoised row by row.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

ImageForm = Literal["nchw", "nhw", "hw", "nhwc", "hwc"]
COLOUR_FORMS = ("nhwc", "hwc")  # channels-last RGB: any-size models only
ImageKind = Literal["float32", "uint8"]


class ImageLayout(NamedTuple):
    """How the caller's images were laid out, so results come back in the same layout and kind.

    A NamedTuple rather than a frozen dataclass: it is built on every call, and at batch 1 the frozen
    dataclass's __init__ (0.5 us) was a fifth of the wrapper's whole cost."""

    form: ImageForm  # "nchw": (N, 1, H, W); "nhw": (N, H, W); "hw": one (H, W); "nhwc"/"hwc": RGB
    kind: ImageKind  # "float32" in [0, 1] or "uint8" 0-255
    count: int  # model samples: images, times 3 for colour forms


def describe(images: object) -> str:
    if isinstance(images, np.ndarray):
        return f"{images.dtype} array of shape {images.shape}"
    return type(images).__name__


# float32 bit patterns as unsigned ints: +0.0 .. 1.0 are exactly 0 .. ONE_BITS, and everything else
# (negatives, > 1, Inf, NaN) is larger, so one integer max checks range, NaN and Inf in one pass.
# -0.0 (0x80000000) is larger too but valid: it only sends the batch to the exact (slower) check.
ONE_BITS = np.uint32(0x3F800000)
FLOAT32 = np.dtype(np.float32)  # numpy's native float32 dtype is a singleton: `is` is the cheap test


def _expected(image_shape: tuple[int, int] | None) -> str:
    """What a model of this image shape takes (None: any height and width, colour forms included)."""
    h, w = image_shape if image_shape is not None else ("H", "W")
    colour = " (or colour (N, H, W, 3), (H, W, 3))" if image_shape is None else ""
    any_size = " with height and width >= 1" if image_shape is None else ""
    return (
        f"images as (N, 1, {h}, {w}), (N, {h}, {w}) or one ({h}, {w}) array{colour}{any_size}, float32 in "
        "[0, 1] or uint8 0-255"
    )


# Channels-last images of other channel counts than 3, which an any-size model would otherwise read as a
# batch of (N, H, W) images a few pixels wide (each row of the image one image): the fix for each.
_OTHER_CHANNELS = {
    1: "one gray plane: pass image[..., 0]",
    2: "gray and alpha: pass image[..., 0]; the alpha is not denoised",
    4: "RGBA: pass image[..., :3]; the alpha is not denoised",
}


def _conversion_hint(dtype: np.dtype) -> str:
    """How to convert images of an unaccepted dtype: dividing float images already in [0, 1] by 255,
    which the one hint for every dtype said, made them near-black and passed the range check."""
    if dtype.kind == "f":
        return "floats in [0, 1]: convert with .astype(np.float32); 0-255 floats: .astype(np.float32) / 255"
    if dtype.kind == "u" and dtype.itemsize == 2:
        return "16-bit images: .astype(np.float32) / 65535; 0-255 values: .astype(np.uint8)"
    return "convert with .astype(np.float32) for values in [0, 1], or .astype(np.uint8) for 0-255"


def _check_range(batch: np.ndarray) -> None:
    """The exact float32 [0, 1] check with the error message; only run when the bit test failed."""
    lo, hi = batch.min(), batch.max()  # NaN propagates, so one test covers NaN, Inf and range
    if lo >= 0.0 and hi <= 1.0:
        return  # -0.0 somewhere: valid
    n_nan = int(np.isnan(batch).sum())
    n_inf = int(np.isinf(batch).sum())
    if n_nan or n_inf:
        raise ValueError(
            f"expected finite float32 values in [0, 1]; got {n_nan} NaN and {n_inf} Inf value(s)"
        )
    # 9 significant digits tell every float32 apart: 1.00000012 is not shown as 1.
    raise ValueError(f"expected float32 values in [0, 1]; got values in [{lo:.9g}, {hi:.9g}]")


def prepare_images(images: np.ndarray, image_shape: tuple[int, int] | None) -> tuple[np.ndarray, ImageLayout]:
    """Validate images and view them as a float32 model batch (N, 1, H, W) in [0, 1].

    `image_shape` None: the model takes any height and width (a fully convolutional model); the images'
    own last two axes are taken as (H, W).

    float32 input that is already C-contiguous is passed through as a view (no copy); uint8 is scaled by
    1/255 in one pass. Raises ValueError naming what was expected and what was got.

    Cost matters at batch 1 (the model itself takes ~50 us there): the float32 range/NaN/Inf check is
    one integer max over the bit patterns (~1 us for a 28x28 image, vs ~8 us for min + max), and the
    error text is only built on the error path.
    """
    if not isinstance(images, np.ndarray):
        raise ValueError(f"expected {_expected(image_shape)}; got {describe(images)}")
    dtype = images.dtype
    if dtype is FLOAT32 or dtype == np.float32:  # identity first: numpy's native float32 is a singleton
        kind: ImageKind = "float32"
    elif dtype == np.uint8:
        kind = "uint8"
    else:
        raise ValueError(
            f"expected dtype float32 (values in [0, 1]) or uint8 (0-255); got {images.dtype} "
            f"({_conversion_hint(dtype)})"
        )
    shape = images.shape
    ndim = len(shape)
    if image_shape is None and shape[-1:] == (3,) and (ndim == 3 or (ndim == 4 and shape[1] != 1)):
        return _prepare_colour(images, kind)  # (H, W, 3) or (N, H, W, 3): a 3-pixel-wide batch is not meant
    expected = image_shape  # what the error message describes: None for an any-size model
    if image_shape is None:  # any size: (H, W) are the last two axes, if there are two
        if ndim < 2 or min(shape[-2:]) < 1:
            raise ValueError(f"expected {_expected(None)}; got shape {shape}")
        if ndim == 3 and shape[-1] in _OTHER_CHANNELS:
            raise ValueError(
                f"expected {_expected(None)}; got shape {shape}, an image channels-last with "
                f"{shape[-1]} channel(s) ({_OTHER_CHANNELS[shape[-1]]}), not {shape[0]} images "
                f"{shape[-1]} pixel(s) wide"
            )
        image_shape = (int(shape[-2]), int(shape[-1]))
    h, w = image_shape
    form: ImageForm
    if ndim == 4 and shape[1:] == (1, h, w):
        form = "nchw"
    elif ndim == 3 and shape[1:] == (h, w):
        form = "nhw"
    elif ndim == 2 and shape == (h, w):
        form = "hw"
    else:
        raise ValueError(f"expected {_expected(expected)}; got shape {shape}")
    batch = images if form == "nchw" else images.reshape(-1, 1, h, w)  # (N, 1, H, W); a view if contiguous
    if kind == "uint8":
        scaled = np.divide(batch, np.float32(255.0), dtype=np.float32)  # one pass, same as astype()/255
        return scaled, ImageLayout(form, kind, batch.shape[0])
    check_unit_range(batch)
    if not batch.flags.c_contiguous:
        batch = np.ascontiguousarray(batch)
    return batch, ImageLayout(form, kind, batch.shape[0])


def _prepare_colour(images: np.ndarray, kind: ImageKind) -> tuple[np.ndarray, ImageLayout]:
    """(H, W, 3) or (N, H, W, 3) -> (N * 3, 1, H, W) float32, channel by channel (a copy: the channels
    are interleaved in the caller's array)."""
    form: ImageForm = "hwc" if images.ndim == 3 else "nhwc"
    height, width = images.shape[-3:-1]
    if min(height, width) < 1:
        raise ValueError(f"expected colour images with height and width >= 1; got shape {images.shape}")
    planes = np.moveaxis(images.reshape(-1, height, width, 3), 3, 1)  # (N, 3, H, W) view
    batch = np.empty((planes.shape[0] * 3, 1, height, width), dtype=np.float32)
    if kind == "uint8":
        np.divide(planes, np.float32(255.0), out=batch.reshape(-1, 3, height, width), dtype=np.float32)
    else:
        batch.reshape(-1, 3, height, width)[...] = planes
        check_unit_range(batch)
    return batch, ImageLayout(form, kind, batch.shape[0])


def check_unit_range(batch: np.ndarray) -> None:
    """Raise ValueError unless every value of the float32 `batch` is in [0, 1] (no NaN, no Inf).

    One integer argmax over the bit patterns (~1 us for a 28x28 image, vs ~8 us for min + max); the exact
    check, which builds the message, only runs when that fails (or on -0.0, which it then accepts).
    Why argmax and not max: a ufunc reduction (`np.maximum.reduce`, `ndarray.max`) made the ONNX Runtime
    call right after it slower by ~6 us at batch 1 (the whole check + run: 47.6 us with max, 44.7 us with
    argmax, 41.2 us for the run alone; 2-core AVX2 EPYC, rounds in shuffled order); at batch 256 the two
    cost the same (17-19 us on a 1.9 ms call).
    """
    bits = batch.view(np.uint32)
    if batch.size and bits.flat[bits.argmax()] > ONE_BITS:
        _check_range(batch)


def restore_images(output: np.ndarray, layout: ImageLayout) -> np.ndarray:
    """Model output (N, 1, H, W) float32 -> the caller's layout and kind (uint8 rounded to nearest)."""
    n, _, h, w = output.shape
    if layout.kind == "uint8":
        scaled = output * np.float32(255.0)  # a new array: the session's output may be reused
        np.rint(scaled, out=scaled)
        np.clip(scaled, 0.0, 255.0, out=scaled)
        output = scaled.astype(np.uint8)
    if layout.form == "nchw":
        return output
    if layout.form == "nhw":
        return output.reshape(n, h, w)
    if layout.form in COLOUR_FORMS:
        rgb = np.ascontiguousarray(np.moveaxis(output.reshape(n // 3, 3, h, w), 1, 3))  # (N, H, W, 3)
        return rgb[0] if layout.form == "hwc" else rgb
    return output.reshape(h, w)


def pad_to_multiple(batch: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad (N, 1, H, W) at the bottom and right so H and W are multiples of `multiple`.

    Fully convolutional models halve the resolution `log2(multiple)` times and need whole halvings; the
    caller crops the output back to (H, W). Reflection (mirror without repeating the edge row) keeps the
    padded border looking like the image; an image thinner than its padding is edge-replicated instead.
    The same rule as train.fcn.pad_to_stride, so the runtime and the PyTorch reference see the same pixels.
    """
    height, width = batch.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not (pad_h or pad_w):
        return batch
    mode = "reflect" if height > pad_h and width > pad_w else "edge"
    return np.pad(batch, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode=mode)
