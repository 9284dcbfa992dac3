"""Atomic file writes shared by every stage (training, export, the runtime CLI).

A reader never sees a half-written file: data goes to a temporary file in the destination's folder, is
flushed and fsynced, and only then renamed over the destination (`os.replace` is atomic on POSIX). On any
failure (a full disk, an exception while writing) the temporary file is removed and the old destination,
if any, is left untouched.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

TEMP_SUFFIX = ".tmp"
# `.<destination name>.<mkstemp's 8 random characters>.tmp`: the temporary files `atomic_open` makes.
_TEMP_NAME = re.compile(r"^\.(?P<dest>.+)\.[A-Za-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", fsync: bool = True) -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; rename it onto `path` only if the block succeeds."""
    if "w" not in mode:
        raise ValueError(f"atomic_open writes only; mode {mode!r} has no 'w'")
    dest = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TEMP_SUFFIX, dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, fsync: bool = True) -> None:
    with atomic_open(path, "wb", fsync=fsync) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(path: str | os.PathLike[str], save: Callable[[IO[bytes]], None], fsync: bool = True) -> None:
    """Run `save(handle)` against a temporary file, then rename it onto `path`."""
    with atomic_open(path, "wb", fsync=fsync) as handle:
        save(handle)


def remove_stale_temps(destinations: Iterable[str | os.PathLike[str]]) -> int:
    """Remove the temporary files a killed writer left beside these destinations; return how many.

    Why: `atomic_open` cleans up after every failure it sees, but a process killed with SIGKILL (or a
    power cut) leaves its `.<name>.XXXXXXXX.tmp` behind. Only files of exactly that pattern whose
    `<name>` is one of `destinations` are removed, so nothing else in the folder is ever touched. Do not
    run it while another process writes the same destinations.
    """
    wanted: dict[Path, set[str]] = {}
    for dest in destinations:
        dest = Path(dest)
        wanted.setdefault(dest.parent, set()).add(dest.name)
    removed = 0
    for folder, names in wanted.items():
        try:
            with os.scandir(folder) as listing:
                entries = [e for e in listing if e.name.endswith(TEMP_SUFFIX) and e.name.startswith(".")]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            match = _TEMP_NAME.match(entry.name)
            if match and match["dest"] in names and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed
