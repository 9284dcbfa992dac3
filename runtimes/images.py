"""Image files <-> the model's grayscale input, without torch.

Loading turns whatever Pillow can read into one 8-bit grayscale array, the form the model was trained on:
16-bit images are scaled (not clipped), transparency is composited onto black (Fashion-MNIST's
background), EXIF orientation is applied, and a decompression-bomb guard runs on the header before any
pixel is decoded (Pillow's own, lower-by-default limit is lifted to it for our decode: `pillowlimit`).
`load_image8` keeps a colour image's colour instead, as 8-bit RGB (the photo model
denoises each channel as a grayscale image); a grayscale picture stored as RGB comes back grayscale.
Every failure for one file is a `BadImageError` carrying the path and a reason, so a batch job can report
it and carry on with the other files. `load_image` also returns the file's ICC profile when it describes
the returned pixels (an RGB profile for RGB, a gray one for grayscale), for `save_png` to carry over.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from runtimes.fileio import atomic_save
from runtimes.fitting import SizeMismatchError
from runtimes.layout import describe
from runtimes.manifest import sha256_stream
from runtimes.pillowlimit import pillow_limit_at_least
from runtimes.pngmeta import SOURCE_KEY, SOURCE_SHA256_KEY, profile_for
from runtimes.pngtrns import load_png

# Lower-case suffixes that `find_images` collects from folders.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm", ".pbm"}
)
# Formats whose extra frames are content (animation frames, pages): denoising frame 0 alone would drop the
# rest silently. Not MPO: a camera JPEG's second "frame" is a preview of the first, nor TIFF thumbnails.
_MULTI_FRAME_FORMATS = frozenset({"GIF", "PNG", "WEBP", "TIFF"})
# 25 megapixels: far beyond any sensible input for a 28x28 model, far below what exhausts an edge device's
# memory once tiled to float32 (and below Pillow's own 89 MP warning threshold, so no warning noise).
DEFAULT_MAX_PIXELS = 25_000_000
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Modes with one channel of values: `load_image8` gives them the grayscale path directly.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "F", *_SIXTEEN_BIT_MODES})
# Where Pillow's exif_transpose finds an orientation: EXIF blocks (JPEG, PNG eXIf/zTXt, WebP) and XMP.
_ORIENTATION_INFO_KEYS = frozenset({"exif", "Raw profile type exif", "xmp", "XML:com.adobe.xmp"})


class BadImageError(ValueError):
    """One input file cannot be used; `path` and `reason` say which and why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def find_images(
    root: str | os.PathLike[str],
    on_error: Callable[[OSError], None] | None = None,
    on_ignored: Callable[[Path], None] | None = None,
    on_folder_link: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Image files under `root`, recursively, sorted; `root` itself if it is not a folder (any suffix).

    Symlinked folders are not followed (no cycles) but handed to `on_folder_link`, so a caller can say so;
    symlinked files are listed, dangling ones too, so the loader can report them instead of them vanishing
    silently. Sockets, FIFOs and devices are left out. `on_error` receives folders that cannot be listed
    (default: raise); `on_ignored` the regular files left out for their suffix (hidden files aside).
    """
    root = Path(root)
    if not root.is_dir():
        return [root]
    found: list[Path] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as err:
            if on_error is None:
                raise
            on_error(err)
            continue
        subfolders = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(Path(entry.path))
            elif entry.is_symlink() and entry.is_dir():
                if on_folder_link is not None:
                    on_folder_link(Path(entry.path))
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                if entry.is_symlink() or entry.is_file(follow_symlinks=False):
                    found.append(Path(entry.path))
            elif on_ignored is not None and not entry.name.startswith("."):
                if entry.is_file(follow_symlinks=False):
                    on_ignored(Path(entry.path))
        pending.extend(reversed(subfolders))
    return sorted(found)


@dataclass(frozen=True)
class LoadedImage:
    """A decoded file: (H, W) or (H, W, 3) uint8 pixels, and the ICC profile that describes them."""

    pixels: np.ndarray
    icc_profile: bytes | None = None  # only a profile of the pixels' own colour space (RGB or gray)
    sha256: str | None = None  # the file's, hex (`load_image(..., digest=True)`)


def load_image(
    path: str | os.PathLike[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    color: bool = True,
    digest: bool = False,
    only_size: tuple[int, int] | None = None,
) -> LoadedImage:
    """`load_image8` (colour kept) or `load_gray8` (`color=False`), with the file's matching ICC profile.

    The profile is kept only if it describes the returned pixels: an RGB file's profile with RGB pixels,
    a grayscale file's with grayscale pixels; an RGB (or CMYK) profile is dropped once the pixels are
    gray (or converted from CMYK), since it would misdescribe them. `digest`: also the file's SHA-256,
    read from the handle that was decoded (hashing by path opened the file again: ae-denoise ran 0.90x
    on 5,000 small PNGs, its decode threads trading the GIL at every extra system call). `only_size`
    (height, width): the one size the caller can use (a fixed-size model in exact mode); a file whose
    header says otherwise, in either orientation, is refused before its pixels are decoded, with
    SizeMismatchError's message (a 12 MP photograph handed to the 28x28 model was decoded in full first).
    """
    convert = _to_image8 if color else _to_gray8
    pixels, profile, sha256 = _load(Path(path), max_pixels, convert, digest, only_size)
    return LoadedImage(pixels, profile_for(profile, 3 if pixels.ndim == 3 else 1), sha256)


def load_gray8(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one image file as (H, W) uint8 grayscale; raise BadImageError(path, reason) if it cannot be."""
    return _load(Path(path), max_pixels, _to_gray8, False)[0]


def load_image8(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one image file as (H, W, 3) uint8 RGB if it has colour, else as (H, W) uint8 grayscale.

    Same rules and errors as `load_gray8` (alpha composited onto black, EXIF orientation, bomb guard);
    an RGB file whose three channels are equal everywhere is grayscale and comes back as load_gray8's.
    """
    return _load(Path(path), max_pixels, _to_image8, False)[0]


Converter = Callable[[Image.Image, Path], np.ndarray]
EXIF_ORIENTATION = 0x0112  # the EXIF tag; values 5-8 swap width and height


def _load(
    path: Path, max_pixels: int, convert: Converter, digest: bool, only_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, bytes | None, str | None]:
    try:
        # O_NONBLOCK: a FIFO named like an image must not hang the run; it is refused below.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        if path.is_symlink():
            raise BadImageError(path, f"unreadable: dangling symbolic link to {os.readlink(path)}") from None
        raise BadImageError(path, "unreadable: file not found") from None
    except OSError as err:
        raise BadImageError(path, f"unreadable: {err.strerror or err}") from err
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # before fdopen, which refuses a folder's fd with "Is a directory: 3"
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise BadImageError(path, f"unreadable: {kind}")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size == 0:
            raise BadImageError(path, "empty file (0 bytes)")
        pixels, profile = _decode(handle, path, max_pixels, convert, only_size)
        if not digest:
            return pixels, profile, None
        handle.seek(0)
        return pixels, profile, sha256_stream(handle)


def _decode(
    handle: BinaryIO, path: Path, max_pixels: int, convert: Converter, only_size: tuple[int, int] | None
) -> tuple[np.ndarray, bytes | None]:
    try:
        with pillow_limit_at_least(max_pixels), Image.open(handle) as image:
            width, height = image.size
            # The header is parsed, no pixel decoded yet: refuse before decoding allocates W*H bytes.
            if width * height > max_pixels:
                raise BadImageError(
                    path,
                    f"decompression bomb guard: {width}x{height} = {width * height} pixels exceeds the limit "
                    f"of {max_pixels} (raise it with --max-pixels if the file is trusted)",
                )
            # Either orientation: EXIF may turn the stored size; the caller checks the decoded one exactly.
            if only_size is not None and sorted((height, width)) != sorted(only_size):
                raise BadImageError(path, str(SizeMismatchError(_shown_size(image), only_size)))
            if image.format in _MULTI_FRAME_FORMATS and (frames := _content_frames(image)) > 1:
                raise BadImageError(
                    path,
                    f"{image.format} file holds {frames} frames (animation or pages); only single "
                    "images are denoised, so nothing was written (save the frames as separate files)",
                )
            image = load_png(image, handle)  # decodes, with a PNG's tRNS on the decoded pixels' scale
            profile = image.info.get("icc_profile")
            if _may_have_orientation(image):
                ImageOps.exif_transpose(image, in_place=True)
            return convert(image, path), profile if isinstance(profile, bytes) else None
    except BadImageError:
        raise
    except Image.DecompressionBombError as err:  # Pillow's limit, left higher than ours by the app
        raise BadImageError(
            path,
            f"decompression bomb guard: {err} (this run's limit is {max_pixels} pixels; raise it with "
            "--max-pixels if the file is trusted)",
        ) from err
    except UnidentifiedImageError as err:
        raise BadImageError(path, "not an image (no image format recognises its contents)") from err
    except Exception as err:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise BadImageError(path, f"corrupt or truncated image data ({type(err).__name__}: {err})") from err


def _content_frames(image: Image.Image) -> int:
    """Frames that are images of their own: not a TIFF's later reduced-resolution ones (thumbnails)."""
    frames = int(getattr(image, "n_frames", 1))
    for index in range(1, frames if image.format == "TIFF" else 1):  # n_frames has read every frame
        image.seek(index)
        frames -= int(image.tag_v2.get(254, 0)) & 1  # NewSubfileType bit 0: a reduced-resolution version
    image.seek(0)
    return frames


def _shown_size(image: Image.Image) -> tuple[int, int]:
    """(height, width) as the image is shown: swapped where its EXIF orientation turns it (5-8). Read from
    the header only; a PNG whose EXIF chunk follows its pixels (Pillow would decode them to find it) and
    an orientation given only in XMP report the stored size."""
    width, height = image.size
    readable = image.format != "PNG" or "exif" in image.info
    if readable and _may_have_orientation(image) and image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
        return width, height
    return height, width


def _may_have_orientation(image: Image.Image) -> bool:
    """Whether EXIF/XMP orientation can be present: skips exif_transpose's parse for plain files (it costs
    about as much as decoding a 28x28 PNG)."""
    return hasattr(image, "tag_v2") or not _ORIENTATION_INFO_KEYS.isdisjoint(image.info)


def _onto_black(values: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint16 8-bit values composited onto black by their uint16 8-bit alpha, rounded, as uint8."""
    return ((values * alpha + 127) // 255).astype(np.uint8)


def _to_gray8(image: Image.Image, path: Path) -> np.ndarray:
    """Any Pillow mode -> (H, W) uint8, the way the model expects it (white object on black)."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # 16-bit (and 32-bit "I", which Pillow uses for 16-bit PNGs on some versions): scale 0..65535 to
        # 0..255 instead of Pillow's convert("L"), which clips everything above 255 to white. A TIFF of 32
        # bits per sample has no white level to scale from (0..65535 made it all white), nor has one of
        # signed 16-bit integers (its white 32767 came back half bright, negatives black): both refused.
        if mode == "I" and image.format == "TIFF":
            kind = _tiff_integer_kind(image)
            if kind:
                raise BadImageError(
                    path,
                    f"unsupported image mode 'I' (a TIFF of {kind}): its values have no defined white "
                    "level; save it with unsigned 8 or 16 bits per sample, or as floats in [0, 1]",
                )
        raw = np.asarray(image)  # (H, W)
        wide = np.clip(raw, 0, 65535).astype(np.uint32)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        transparent = image.info.get("transparency")
        if isinstance(transparent, int):  # a 16-bit tRNS value: those pixels are fully transparent
            gray[raw == transparent] = 0  # composited onto black, like 8-bit tRNS
        return gray
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():
            raise BadImageError(path, "float image holds NaN or Inf pixels")
        return _float_to_gray8(values, path)
    try:
        if mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")  # also resolves palette / tRNS transparency into an alpha channel
            gray = np.asarray(rgba.convert("L"), dtype=np.uint16)  # (H, W) luminance, alpha ignored
            alpha = np.asarray(rgba.getchannel("A"), dtype=np.uint16)  # (H, W)
            return _onto_black(gray, alpha)
        return np.asarray(image if mode == "L" else image.convert("L"), dtype=np.uint8)
    except ValueError as err:
        raise BadImageError(path, f"unsupported image mode {mode!r}: {err}") from err


def _tiff_integer_kind(image: Image.Image) -> str | None:
    """'32-bit integers' or 'signed 16-bit integers' for a TIFF whose integers have no white level Pillow's
    mode says (both open as mode 'I'), else None (unsigned 16-bit: white is 65535)."""
    bits, sample_format = image.tag_v2.get(258), image.tag_v2.get(339)  # BitsPerSample, SampleFormat
    if bits in ((32,), 32):
        return "32-bit integers"
    if sample_format in ((2,), 2):  # 2: two's complement signed integer
        return "signed 16-bit integers"
    return None


def _float_to_gray8(values: np.ndarray, path: Path) -> np.ndarray:
    """Float pixels -> uint8. Floats up to 1 (half an 8-bit step more allowed) are [0, 1] pixels, scaled by
    255 and clipped; whole numbers 0..255 are an 8-bit image stored as floats (Pillow's convert("F")) and
    kept; any other range has no known white level and is refused: reading it as 0..255 made a [0, 1]
    image with one pixel past 1 come back black."""
    high = float(values.max()) if values.size else 0.0
    if high <= 1 + 0.5 / 255:
        return np.rint(np.clip(values * 255.0, 0.0, 255.0)).astype(np.uint8)
    if values.min() >= 0 and high <= 255 and np.array_equal(values, np.rint(values)):
        return values.astype(np.uint8)
    raise BadImageError(
        path,
        f"unsupported image mode 'F' with values {float(values.min()):g}..{high:g}: float pixels are "
        "read in [0, 1] (or as whole numbers 0..255); scale it into [0, 1] or save it with 8 or 16 bits per "
        "sample",
    )


def _to_image8(image: Image.Image, path: Path) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB for colour pictures, (H, W) uint8 for grayscale ones."""
    if image.mode in _GRAY_MODES:
        return _to_gray8(image, path)
    try:
        if image.mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)  # (H, W, 4)
            rgb = _onto_black(rgba[..., :3], rgba[..., 3:])
        else:
            rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    except ValueError as err:
        raise BadImageError(path, f"unsupported image mode {image.mode!r}: {err}") from err
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(red, green) and np.array_equal(green, blue):
        return np.ascontiguousarray(red)  # grayscale stored as colour: one channel to denoise, not three
    return rgb


def save_png(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    fsync: bool = True,
    make_parents: bool = True,
    source: str | None = None,
    icc_profile: bytes | None = None,
    source_sha256: str | None = None,
) -> None:
    """Write (H, W) uint8 as an 8-bit grayscale PNG, or (H, W, 3) uint8 as RGB, atomically (temp file +
    rename).

    `make_parents=False` skips the mkdir for callers that created the folders once up front (a mkdir per
    file is a measurable syscall when writing thousands of small PNGs). `source` and `source_sha256` are
    recorded in iTXt chunks (`runtimes.pngmeta.SOURCE_KEY` and `SOURCE_SHA256_KEY`, read back by
    `read_png_record`): which input this output belongs to, by path and by content. `icc_profile` is
    embedded as is; the caller makes sure it describes the pixels (`LoadedImage.icc_profile` does).
    """
    if (
        not isinstance(pixels, np.ndarray)  # a list: named below, not an AttributeError traceback
        or pixels.dtype != np.uint8
        or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3))
    ):
        raise ValueError(f"save_png expects a (H, W) or (H, W, 3) uint8 array; got {describe(pixels)}")
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    options: dict[str, object] = {}
    if source is not None or source_sha256 is not None:
        info = PngImagePlugin.PngInfo()
        if source is not None:
            info.add_itxt(SOURCE_KEY, source)
        if source_sha256 is not None:
            info.add_itxt(SOURCE_SHA256_KEY, source_sha256)
        options["pnginfo"] = info
    if icc_profile:
        options["icc_profile"] = icc_profile
    atomic_save(path, lambda handle: image.save(handle, format="PNG", **options), fsync=fsync)
