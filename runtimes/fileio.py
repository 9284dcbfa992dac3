"""Atomic file writes shared by every stage (training, export, the runtime CLI).

A reader never sees a half-written file: data goes to a temporary file in the destination's folder, is
flushed and fsynced, and only then renamed over the destination (`os.replace` is atomic on POSIX). On any
failure (a full disk, an exception while writing) the temporary file is removed and the old destination,
if any, is left untouched.

The file gets the mode a plain `open()` would give it (0o666 less the umask), not mkstemp's private 0600.
Temporary names stay within NAME_MAX (255 bytes) whatever the destination's name (`_temp_key`). A writer
holds an exclusive flock on its temporary until it is renamed, so `remove_stale_temps` can tell a live
writer's file (another run writing the same folder) from one a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no locks, and an open file cannot be renamed
    fcntl = None  # type: ignore[assignment]

TEMP_SUFFIX = ".tmp"
# `.<key>.<mkstemp's 8 random characters>.tmp`: the temporary files `atomic_open` makes, where <key> is
# the destination's name, or for a name too long for that, its start and a hash of it (`_temp_key`).
_TEMP_NAME = re.compile(r"^\.(?P<dest>.+)\.[A-Za-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")
NAME_MAX = 255  # bytes in one file name: Linux (ext4, xfs, btrfs, tmpfs), macOS (APFS), Windows (NTFS)
_TEMP_EXTRA = len("..") + 8 + len(TEMP_SUFFIX)  # what the temporary name adds to its key
_KEY_HEAD = 200  # bytes of a long name kept readable in its key
_KEY_HASH = 16  # hex digits of sha256 after it: a key is at most 200 + 1 + 16 bytes


def _temp_key(name: str) -> str:
    """The <key> of `name`'s temporary files: `name` itself if the temporary name fits NAME_MAX, else its
    first _KEY_HEAD bytes, `~` and a hash of the whole name (a 249-byte output name is legal; its
    temporary `.<name>.XXXXXXXX.tmp`, 263 bytes, would not be)."""
    raw = os.fsencode(name)
    if len(raw) + _TEMP_EXTRA <= NAME_MAX:
        return name
    return f"{os.fsdecode(raw[:_KEY_HEAD])}~{hashlib.sha256(raw).hexdigest()[:_KEY_HASH]}"


def _read_umask() -> int:
    """The process's umask, without changing it where the OS can say (Linux: /proc/self/status).

    Why not per write with os.umask: reading it that way means setting it, and a file another thread
    creates in between would get the wrong mode. Read once at import; a process sets its umask at start.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            lines = [line for line in status if line.startswith("Umask:")]
    except OSError:
        lines = []  # not Linux
    if lines and len(lines[0].split()) == 2:
        return int(lines[0].split()[1], 8)
    mask = os.umask(0o022)  # no /proc, or a kernel before 4.7: set and restore it, once
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()  # what open() would create: outputs are as private as the user asked


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", fsync: bool = True) -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; rename it onto `path` only if the block succeeds."""
    if "w" not in mode:
        raise ValueError(f"atomic_open writes only; mode {mode!r} has no 'w'")
    dest = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{_temp_key(dest.name)}.", suffix=TEMP_SUFFIX, dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as handle:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: no one else holds it
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
            os.chmod(tmp, FILE_MODE)
            if fcntl is not None:  # renamed while locked: never an unlocked temporary of a live writer
                os.replace(tmp, dest)
        if fcntl is None:
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


def json_ready(value: Any) -> Any:
    """A copy of `value` that strict JSON can hold: numpy scalars as Python numbers, paths as text, tuples
    as lists, dict keys as text, and every float that is not a number (NaN, +-Inf) as None (null).

    Why: JSON has no NaN or Infinity. Python's `json.dumps` writes the bare tokens `NaN` and `Infinity`,
    which Python reads back but strict readers (JavaScript's JSON.parse, jq, serde_json, Go) refuse, so a
    report with one failed figure (a parity check whose outputs were NaN) became unreadable to them.
    """
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write_json(path: str | os.PathLike[str], value: Any) -> None:
    """`value` as indented, strictly valid JSON (`json_ready`: NaN and Inf as null), written atomically.
    Every JSON report of every stage goes through here."""
    atomic_write_text(path, json.dumps(json_ready(value), indent=2, allow_nan=False) + "\n")


def atomic_save(path: str | os.PathLike[str], save: Callable[[IO[bytes]], None], fsync: bool = True) -> None:
    """Run `save(handle)` against a temporary file, then rename it onto `path`."""
    with atomic_open(path, "wb", fsync=fsync) as handle:
        save(handle)


def blocking_file(folder: str | os.PathLike[str]) -> Path | None:
    """What stops `folder` from being a folder that files can be written into: the path itself or the
    ancestor nearest it that exists, if that is not a folder (a regular file, a dangling symbolic link);
    None if it is one, or may be made as one."""
    for path in (Path(folder), *Path(folder).parents):
        try:
            if path.exists() or path.is_symlink():
                return None if path.is_dir() else path
        except OSError:  # a name past NAME_MAX, no permission: the write names it, file by file
            return None
    return None


def unusable_folder(folder: str | os.PathLike[str]) -> str | None:
    """Why files cannot be written into `folder` (a command's --out), found before any work; None if they
    can. Creates nothing: the caller makes the folder when it writes its first file, so a refused run
    leaves no empty folder behind.

    `folder` may exist or be a new path; the path or its nearest existing ancestor must be a folder
    (`blocking_file`), and that folder must take a new file (not read-only, not full)."""
    folder = Path(folder)
    blocker = blocking_file(folder)
    if blocker is not None:
        return f"{folder} must be a folder (an existing one or a new path): {blocker} is not one"
    refusal = _refused_new_file(folder)
    return f"{folder}: {refusal}" if refusal else None


def unwritable_file(path: str | os.PathLike[str], flag: str, example: str) -> str | None:
    """Why a command cannot write its output file at `path` (given by `flag`), found before the minutes
    of work that produce it; None if it can. Creates nothing: the caller makes a missing folder as it writes.

    `path` may be a new file in an existing folder or under a new one; it may not be a folder (the
    message suggests the file `example` in it) or lie under a regular file, and the nearest folder that
    exists must take a new file (not read-only, not full)."""
    path = Path(path)
    if path.is_dir():
        return f"{flag} {path}: is a folder; give the file's path, e.g. {path / example}"
    blocker = blocking_file(path.parent)
    if blocker is not None:
        return f"{flag} {path}: {blocker} is not a folder"
    refusal = _refused_new_file(path.parent)
    return f"{flag} {path}: {refusal}" if refusal else None


def _refused_new_file(folder: Path) -> str | None:
    """'cannot write in F (reason)' when F, `folder` or its nearest existing ancestor, takes no new file
    (read-only, full), tried with a temporary file that is gone at once; None if it does, or if no
    ancestor can be looked at (a name past NAME_MAX: the write itself names that)."""
    try:
        nearest = next((p for p in (folder, *folder.parents) if p.exists()), None)
    except OSError:
        return None
    if nearest is None:
        return None
    try:
        with tempfile.TemporaryFile(dir=nearest):
            pass
    except OSError as err:
        return f"cannot write in {nearest} ({err.strerror or err})"
    return None


def remove_stale_temps(destinations: Iterable[str | os.PathLike[str]]) -> int:
    """Remove the temporary files a killed writer left beside these destinations; return how many.

    Why: `atomic_open` cleans up after every failure it sees, but a process killed with SIGKILL (or a
    power cut) leaves its `.<key>.XXXXXXXX.tmp` behind. Only files of exactly that pattern whose `<key>`
    is that of one of `destinations` (its name, or for a long name the hashed key of `_temp_key`), and
    that no live writer holds locked (`atomic_open`), are removed, so nothing else in the folder is ever
    touched, nor the file another run is writing there (before the locks, a second run started on the
    same output folder deleted the first one's, whose writes then failed). A folder that cannot be listed
    is passed over (its writes fail later, each named).
    """
    wanted: dict[Path, set[str]] = {}
    for dest in destinations:
        dest = Path(dest)
        wanted.setdefault(dest.parent, set()).add(_temp_key(dest.name))
    removed = 0
    for folder, names in wanted.items():
        try:
            with os.scandir(folder) as listing:
                entries = [e for e in listing if e.name.endswith(TEMP_SUFFIX) and e.name.startswith(".")]
        except OSError:
            # Missing, not a folder, not listable (a name too long, a symlink loop, no permission): it
            # holds no temporary this process can remove, and writing there fails, named, for each file.
            continue
        for entry in entries:
            match = _TEMP_NAME.match(entry.name)
            if match and match["dest"] in names and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):  # gone already, locked, or a folder that takes no change
                    if _unlocked(entry.path):
                        os.unlink(entry.path)
                        removed += 1
    return removed


def _unlocked(path: str) -> bool:
    """Whether no live `atomic_open` holds the temporary at `path` locked: a killed writer's lock is gone."""
    if fcntl is None:
        return True
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
