"""Photographs for the fully convolutional denoiser: full-resolution grayscale images, random crops.

Why photographs: the lecture's data are 28x28 centred objects; a denoiser for people's own pictures must
learn from natural images at their own resolution. Offline by default: the photographs that scikit-image
ships inside its wheel (no download), split once and for all by name:

* validation (never trained on): camera, coins, astronaut, clock (`clock_motion.png`), chelsea;
* training: every other natural photograph in the wheel (`TRAIN_PHOTOS`). scikit-image's `cat()` is the
  same file as `chelsea`, so it is not in the training list; synthetic images (checkerboards, colour wheel,
  logo, phantom, binary masks) are left out because they teach nothing about photographic noise.

Or any folder (`--data-dir`): every image under it, any size, made grayscale, split by a hash of the
relative path (as the 28x28 folder dataset does). Every file goes through `runtimes.images.load_gray8`,
the one decoder `ae-denoise` uses, so a file is the same array in training and in serving. An image
narrower or lower than validation's SSIM window (7 pixels: an icon, a 1-pixel strip) is skipped with
that reason, as an unreadable file is: SSIM cannot be measured on it.

Noise: `runtimes.noise.apply_noise` (clip(x + sigma * N(0, 1), 0, 1)) then rounded to 8 bits, as a noisy
photograph on disk is; sigma is drawn per crop from a range, so one model serves many noise levels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtimes.images import DEFAULT_MAX_PIXELS, BadImageError, find_images, load_gray8
from runtimes.noise import apply_noise

# File names inside scikit-image's data folder (skimage/data/), all shipped in the wheel.
VALIDATION_PHOTOS = {
    "camera": "camera.png",
    "coins": "coins.png",
    "astronaut": "astronaut.png",
    "clock": "clock_motion.png",
    "chelsea": "chelsea.png",
}
TRAIN_PHOTOS = {
    "brick": "brick.png",
    "cell": "cell.png",
    "coffee": "coffee.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "microaneurysms": "microaneurysms.png",
    "moon": "moon.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "page": "page.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
    "text": "text.png",
}


class PhotoDataError(ValueError):
    """Photographs that cannot be used: missing folder, no readable image, images smaller than a crop."""


@dataclass(frozen=True)
class PhotoSet:
    """Named (H, W) uint8 grayscale photographs of any sizes, plus the files that could not be read."""

    source: str
    names: tuple[str, ...]
    images: tuple[np.ndarray, ...]
    skipped: tuple[str, ...] = ()

    def pixels(self) -> int:
        return int(sum(image.size for image in self.images))


def skimage_data_dir() -> Path:
    """scikit-image's bundled data folder (a training dependency; the runtime never needs it)."""
    import skimage

    return Path(skimage.__file__).parent / "data"


def bundled_photos(split: str) -> PhotoSet:
    """The fixed split of scikit-image's bundled photographs: 'train' or 'val'."""
    if split not in ("train", "val"):
        raise ValueError(f"split {split!r}; valid: train, val")
    table = TRAIN_PHOTOS if split == "train" else VALIDATION_PHOTOS
    root = skimage_data_dir()
    images = []
    for name, file in table.items():
        try:
            images.append(load_gray8(root / file))
        except BadImageError as err:
            raise PhotoDataError(f"bundled photograph {name!r}: {err}") from err
    return PhotoSet(source=str(root), names=tuple(table), images=tuple(images))


def folder_photos(
    root: str | Path, val_fraction: float = 0.2, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[PhotoSet, PhotoSet]:
    """(train, val) from every image under `root`, split by a hash of the relative path; a file of more
    than `max_pixels` pixels is skipped by the decoder's decompression-bomb guard (`ae-train
    --max-pixels`)."""
    from train.metrics import SSIM_WIN  # here: torch-free callers import this module (bench.photo_tiles)

    root = Path(root)
    if not root.is_dir():
        raise PhotoDataError(f"{root}: not a folder")
    parts: dict[bool, tuple[list[str], list[np.ndarray]]] = {False: ([], []), True: ([], [])}
    skipped: list[str] = []
    files = find_images(root)
    for path in files:
        try:
            image = load_gray8(path, max_pixels)
        except BadImageError as err:
            skipped.append(str(err))
            continue
        if min(image.shape) < SSIM_WIN:
            height, width = image.shape
            skipped.append(
                f"{path}: {width}x{height} pixels, smaller than the {SSIM_WIN}x{SSIM_WIN} window in which "
                "validation measures SSIM"
            )
            continue
        relative = str(Path(path).relative_to(root))
        digest = hashlib.sha1(relative.encode()).digest()
        in_val = int.from_bytes(digest[:4], "big") / 2**32 < val_fraction
        parts[in_val][0].append(relative)
        parts[in_val][1].append(image)
    if not parts[False][1] and not parts[True][1]:
        raise PhotoDataError(f"{root}: no usable images ({len(files)} found, {len(skipped)} skipped)")
    if not parts[False][1] or not parts[True][1]:  # tiny folders: the same images on both sides
        names = parts[False][0] + parts[True][0]
        images = parts[False][1] + parts[True][1]
        parts = {False: (names, images), True: (names, images)}
    train, val = (
        PhotoSet(str(root), tuple(parts[side][0]), tuple(parts[side][1]), tuple(skipped))
        for side in (False, True)
    )
    return train, val


def load_photos(
    data_dir: str | Path | None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[PhotoSet, PhotoSet]:
    """(train, val): scikit-image's bundled split, or a folder's hash split when `data_dir` is given
    (`max_pixels`: the largest image of it that is read)."""
    if data_dir is None:
        return bundled_photos("train"), bundled_photos("val")
    return folder_photos(data_dir, max_pixels=max_pixels)


class CropSampler:
    """Random square crops of the training photographs with flips and 90-degree rotations.

    A photograph is picked with probability proportional to its pixel count (every pixel equally likely),
    then a crop position uniformly; one of the 8 dihedral transforms is applied. Images smaller than the
    crop are reflect-padded up to it.
    """

    def __init__(self, photos: PhotoSet, crop: int, rng: np.random.Generator) -> None:
        if not photos.images:
            raise PhotoDataError("no training photographs")
        self.crop = crop
        self.rng = rng
        self.images = [_at_least(image, crop) for image in photos.images]
        # The photographs' own pixels, not the padded ones: a thumbnail is not made likelier by its padding.
        sizes = np.array([image.size for image in photos.images], dtype=np.float64)
        self.weights = sizes / sizes.sum()

    def sample(self, batch: int) -> np.ndarray:
        """(batch, 1, crop, crop) float32 clean crops in [0, 1]."""
        out = np.empty((batch, 1, self.crop, self.crop), dtype=np.float32)
        picks = self.rng.choice(len(self.images), size=batch, p=self.weights)
        for i, pick in enumerate(picks):
            image = self.images[pick]
            top = int(self.rng.integers(0, image.shape[0] - self.crop + 1))
            left = int(self.rng.integers(0, image.shape[1] - self.crop + 1))
            tile = image[top : top + self.crop, left : left + self.crop]
            tile = np.rot90(tile, k=int(self.rng.integers(0, 4)))
            if self.rng.integers(0, 2):
                tile = tile[:, ::-1]
            out[i, 0] = tile
        out *= np.float32(1.0 / 255.0)
        return out


def _at_least(image: np.ndarray, size: int) -> np.ndarray:
    pad_h, pad_w = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w)), mode="reflect" if min(image.shape) > 1 else "edge")
    return image


def noisy_8bit(clean: np.ndarray, sigma: np.ndarray | float, rng: np.random.Generator) -> np.ndarray:
    """clip(clean + sigma * N(0, 1), 0, 1) rounded to 8 bits, float32; sigma per image or one for all.

    `sigma` of shape (B,) is broadcast over (B, 1, H, W) crops.
    """
    sigma = np.asarray(sigma, dtype=np.float32)
    if sigma.ndim == 1:
        sigma = sigma.reshape(-1, *([1] * (clean.ndim - 1)))
    normal = rng.standard_normal(clean.shape, dtype=np.float32)
    noisy = apply_noise(clean.astype(np.float32, copy=False), sigma, normal)
    return (np.rint(noisy * 255.0) / 255.0).astype(np.float32)
