"""What `ae-denoise` records in and reads back from the PNGs it writes, without decoding any pixel.

Why a source record: an output's name does not always say which input it came from. `a.jpg` is written
as `a.png`, but once an `a.png` joins it in the same folder, `a.jpg`'s result is renamed `a.jpg.png`; a
re-run that skipped every existing output would then keep the denoised `a.jpg` under `a.png`. Each
output therefore carries, in an iTXt chunk before its pixel data, the input's path relative to its input
root (`SOURCE_KEY`), and the pipeline checks it before skipping an existing output.

Why ICC handling lives here: a profile only describes pixels of its own colour space, so an RGB profile
must never be attached to a grayscale output (nor a CMYK profile to the RGB a CMYK JPEG is converted to).
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import PurePath

SOURCE_KEY = "ae-denoise source"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks before the first IDAT are read by header only and skipped by length; give up after this many
# bytes of them (an iCCP profile is the largest expected, a few hundred kB at most).
_SCAN_LIMIT = 1 << 22


def source_label(relative: str | PurePath) -> str:
    """The text recorded for an input at `relative` (its path under its input root, `/`-separated).

    File names that are not valid UTF-8 (possible on Linux) are recorded with their bad bytes as `\\xNN`
    escapes: iTXt holds UTF-8 text, and the same function names both sides of every comparison.
    """
    text = PurePath(relative).as_posix()
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def read_png_source(path: str | os.PathLike[str]) -> str | None:
    """The `SOURCE_KEY` text of the PNG at `path`, or None if it has none or is not a readable PNG.

    Reads chunk headers up to the first IDAT and seeks past everything else: no pixel is decoded, and
    Pillow's size limits do not apply (a re-run checks every existing output on one thread). Anything but
    a regular file gives None without being read: opening a FIFO would wait for a writer forever.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode) or handle.read(8) != _PNG_SIGNATURE:
                return None
            while handle.tell() < _SCAN_LIMIT:
                header = handle.read(8)
                if len(header) < 8:
                    return None
                length, kind = struct.unpack(">I4s", header)
                if kind in (b"IDAT", b"IEND"):
                    return None
                if kind != b"iTXt":
                    handle.seek(length + 4, os.SEEK_CUR)  # data and CRC
                    continue
                text = _itxt_text(handle.read(length), SOURCE_KEY)
                handle.seek(4, os.SEEK_CUR)
                if text is not None:
                    return text
    except OSError:
        return None  # unreadable (a dangling link, a folder): treated as carrying no record
    return None


def _itxt_text(data: bytes, key: str) -> str | None:
    """The text of an iTXt chunk's data if its keyword is `key`; None otherwise or if malformed."""
    keyword, sep, rest = data.partition(b"\0")
    if not sep or keyword != key.encode("latin-1") or len(rest) < 2:
        return None
    compressed, rest = rest[0], rest[2:]  # compression flag, compression method
    parts = rest.split(b"\0", 2)  # language tag, translated keyword, text
    if len(parts) != 3:
        return None
    try:
        raw = zlib.decompress(parts[2]) if compressed else parts[2]
        return raw.decode("utf-8")
    except (zlib.error, UnicodeDecodeError):
        return None


def icc_colour_space(profile: bytes) -> bytes:
    """The profile's data colour space signature (header bytes 16-20: b"RGB ", b"GRAY", b"CMYK", ...)."""
    return profile[16:20] if len(profile) >= 128 else b""


def profile_for(profile: bytes | None, channels: int) -> bytes | None:
    """`profile` if it describes pixels with `channels` channels (3: RGB, 1: gray), else None."""
    if not profile:
        return None
    return profile if icc_colour_space(profile) == (b"RGB " if channels == 3 else b"GRAY") else None
