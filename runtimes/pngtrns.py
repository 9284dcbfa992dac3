"""A PNG's tRNS colour applied on the scale of the pixels Pillow decodes, without torch.

A grayscale or RGB PNG may name one fully transparent colour (its tRNS chunk), written in the file's own
bit depth. Pillow decodes 2- and 4-bit grayscale to 0..255 and 16-bit RGB to 8 bits per channel, yet keeps
the tRNS value as written, so it matched the wrong pixels or none: a 4-bit file's transparent white stayed
white, and a 16-bit RGB file's transparent colour stayed visible while every pixel whose 8-bit value
equalled the 16-bit tRNS numbers (e.g. white for (255, 255, 255), a near-black) became transparent.
`load_png` decodes such a file with its transparency on the decoded pixels' scale; 16-bit grayscale keeps
its 16-bit pixels and value (`runtimes.images` compares them directly).
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile

_LOW_BIT_SCALE = {"L;2": 85, "L;4": 17}  # 2- and 4-bit grayscale: Pillow's sample scale to 0..255
_RGB16 = "RGB;16B"  # 16-bit RGB PNG samples, of which Pillow keeps the high byte
_RGB16_LOW_BYTES = "RGB;16L"  # the same 48-bit pixels read as little-endian: each sample's low byte


def load_png(image: ImageFile.ImageFile, handle: BinaryIO) -> Image.Image:
    """Decode `image` (opened from `handle`, not yet loaded) with any tRNS colour on its pixels' scale.

    Returns `image` itself, loaded, except for a 16-bit RGB PNG with a tRNS colour: its transparent pixels
    are those equal to that colour in all 16 bits, so the file is decoded a second time for each sample's
    low byte, and an RGBA image (alpha 0 there, 255 elsewhere; `image.info` without the tRNS) comes back.
    """
    tile = image.tile[0] if image.format == "PNG" and image.tile else None
    transparent = image.info.get("transparency")
    if tile is not None and isinstance(transparent, int):
        image.info["transparency"] = transparent * _LOW_BIT_SCALE.get(tile.args, 1)
    image.load()  # decode now, so truncation and corruption surface as errors here
    if tile is None or tile.args != _RGB16 or not isinstance(transparent, tuple):
        return image
    handle.seek(0)
    with Image.open(handle) as twin:
        twin.tile = [part._replace(args=_RGB16_LOW_BYTES) for part in twin.tile]
        twin.load()
        low = np.asarray(twin, dtype=np.uint16)  # (H, W, 3)
    wide = (np.asarray(image, dtype=np.uint16) << 8) | low  # (H, W, 3): the file's 16-bit samples
    opaque = ~np.all(wide == np.asarray(transparent, dtype=np.uint16), axis=-1)  # (H, W)
    info = {key: value for key, value in image.info.items() if key != "transparency"}
    image.info = info  # convert() below must not match the 16-bit tRNS against 8-bit pixels
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray(opaque.astype(np.uint8) * np.uint8(255)))
    rgba.info = dict(info)
    return rgba
