"""What `ae-denoise` records in and reads back from the PNGs it writes, without decoding any pixel.

Why a source record: an output's name does not always say which input it came from. `a.jpg` is written
as `a.png`, but once an `a.png` joins it in the same folder, `a.jpg`'s result is renamed `a.jpg.png`; a
re-run that skipped every existing output would then keep the denoised `a.jpg` under `a.png`. Each
output therefore carries, in an iTXt chunk before its pixel data, the input's path relative to its input
root (`SOURCE_KEY`), and the pipeline checks it before skipping an existing output. A path alone does not
name a file, though: `day1/IMG_0001.png` and `day2/IMG_0001.png`, each given as the input folder, share
the label `IMG_0001.png`, and a re-run into the same `-o` kept day1's result for day2 (exit 0). So the
input's SHA-256 is recorded beside it (`SOURCE_SHA256_KEY`): the same label with other bytes is another
file (or this one since edited), and the same bytes under another label are the same file reached from
another input root.

Why ICC handling lives here: a profile only describes pixels of its own colour space, so an RGB profile
must never be attached to a grayscale output (nor a CMYK profile to the RGB a CMYK JPEG is converted to).
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import PurePath

SOURCE_KEY = "ae-denoise source"
SOURCE_SHA256_KEY = "ae-denoise source sha256"
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


@dataclass(frozen=True)
class SourceRecord:
    """What an output says of its input: the label (`source_label`) and, from outputs written since it
    was added, the input file's SHA-256 (hex); None where the output does not say."""

    label: str | None = None
    sha256: str | None = None


def read_png_record(path: str | os.PathLike[str]) -> SourceRecord:
    """The source record of the PNG at `path`; empty if it has none or is not a readable PNG.

    Reads chunk headers up to the first IDAT and seeks past everything else: no pixel is decoded, and
    Pillow's size limits do not apply (a re-run checks every existing output on one thread). Anything but
    a regular file gives an empty record without being read: opening a FIFO would wait for a writer forever.
    """
    found: dict[str, str] = {}
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode) or handle.read(8) != _PNG_SIGNATURE:
                return None
            while handle.tell() < _SCAN_LIMIT:
                header = handle.read(8)
                if len(header) < 8:
                    break
                length, kind = struct.unpack(">I4s", header)
                if kind in (b"IDAT", b"IEND"):
                    break
                if kind != b"iTXt":
                    handle.seek(length + 4, os.SEEK_CUR)  # data and CRC
                    continue
                keyword, text = _itxt_text(handle.read(length), (SOURCE_KEY, SOURCE_SHA256_KEY))
                handle.seek(4, os.SEEK_CUR)
                if text is not None:
                    found.setdefault(keyword, text)
                if len(found) == 2:
                    break
    except OSError:
        return SourceRecord()  # unreadable (a dangling link, a folder): treated as carrying no record
    return SourceRecord(found.get(SOURCE_KEY), found.get(SOURCE_SHA256_KEY))


def _itxt_text(data: bytes, keys: tuple[str, ...]) -> tuple[str, str | None]:
    """(keyword, text) of an iTXt chunk's data; text None if the keyword is not one of `keys` (nothing
    else of it is decoded: an XMP packet may be large and compressed) or the chunk is malformed."""
    keyword, sep, rest = data.partition(b"\0")
    name = keyword.decode("latin-1")
    if not sep or name not in keys or len(rest) < 2:
        return name, None
    compressed, rest = rest[0], rest[2:]  # compression flag, compression method
    parts = rest.split(b"\0", 2)  # language tag, translated keyword, text
    if len(parts) != 3:
        return name, None
    try:
        raw = zlib.decompress(parts[2]) if compressed else parts[2]
        return name, raw.decode("utf-8")
    except (zlib.error, UnicodeDecodeError):
        return name, None


def icc_colour_space(profile: bytes) -> bytes:
    """The profile's data colour space signature (header bytes 16-20: b"RGB ", b"GRAY", b"CMYK", ...)."""
    return profile[16:20] if len(profile) >= 128 else b""


def profile_for(profile: bytes | None, channels: int) -> bytes | None:
    """`profile` if it describes pixels with `channels` channels (3: RGB, 1: gray), else None."""
    if not profile:
        return None
    return profile if icc_colour_space(profile) == (b"RGB " if channels == 3 else b"GRAY") else None
