"""Pillow's process-wide decompression-bomb limit, raised while a decode that allows more runs.

`runtimes.images` checks each file's pixel count against its own `max_pixels` before decoding; Pillow's
limit must then not refuse, or warn about, what that check allowed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from PIL import Image

# Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) is one process-wide value, checked when a
# file is opened: a warning past it and an error past twice it, whose message knows nothing of
# --max-pixels. Our own header check (in `runtimes.images`) is the guard, so while a decode with a larger
# `max_pixels` runs, Pillow's limit is raised to the largest such value (never removed: other threads of an
# embedding app keep a limit no looser than what a caller explicitly allowed), and the last of those
# decodes puts the app's own value back. With the default (25 MP, below Pillow's 89 MP) nothing changes.
_PILLOW_LIMIT_LOCK = threading.Lock()
_raised_for: list[int] = []  # max_pixels of the decodes now running with Pillow's limit raised
_app_limit: list[int | None] = [None]  # Pillow's limit before the first of them


@contextlib.contextmanager
def pillow_limit_at_least(max_pixels: int) -> Iterator[None]:
    """Let Pillow open and decode images of up to `max_pixels` pixels without its own warning or error."""
    with _PILLOW_LIMIT_LOCK:
        base = _app_limit[0] if _raised_for else Image.MAX_IMAGE_PIXELS
        raise_it = base is not None and base < max_pixels
        if raise_it:
            if not _raised_for:
                _app_limit[0] = base
            _raised_for.append(max_pixels)
            Image.MAX_IMAGE_PIXELS = max(_raised_for)
    try:
        yield
    finally:
        if raise_it:
            with _PILLOW_LIMIT_LOCK:
                _raised_for.remove(max_pixels)
                Image.MAX_IMAGE_PIXELS = max(_raised_for) if _raised_for else _app_limit[0]
