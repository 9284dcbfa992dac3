"""Datasets held in memory as whole uint8 tensors, and the noise model.

Why in memory: Fashion-MNIST is 47 MB as uint8, and the lecture's per-sample PIL `ToTensor` pipeline spends
more time in Python than the 87k-parameter model spends computing. A split is one (N, 28, 28) uint8 tensor;
batches are index slices, converted to float on the fly, and noise is drawn per batch from a seeded
generator, so training is compute-bound and reproducible.

Sources:
- `fashion-mnist`: idx files (Debian's `dataset-fashion-mnist` under /usr/share/datasets/fashion-mnist, or
  `--data-dir`), else torchvision's downloader where the machine has internet.
- `mnist`: standard MNIST idx files (gzipped or not, flat or torchvision's `MNIST/raw/`) in `--data-dir`.
- `folder`: any tree of images, made 8-bit grayscale 28x28 and split deterministically.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtimes.fitting import fit_gray8
from runtimes.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, BadImageError, find_images, load_gray8
from runtimes.noise import apply_noise

IMAGE_SIZE = 28
DATASETS = ("fashion-mnist", "mnist", "folder")
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# idx type codes (http://yann.lecun.com/exdb/mnist/): we read unsigned bytes only, as MNIST-style files use.
_IDX_UBYTE = 0x08


class DataError(ValueError):
    """A dataset that cannot be used: missing, corrupt or empty. The message names the file and fault."""


@dataclass(frozen=True)
class Split:
    """One split held in memory. images: (N, 28, 28) uint8; labels: (N,) int64 or None."""

    images: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def head(self, limit: int | None) -> Split:
        if limit is None or limit >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:limit]
        return Split(self.images[:limit], labels)


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str  # where it was read from, absolute: the export and --resume read it again from anywhere
    train: Split
    val: Split
    skipped_files: tuple[str, ...] = ()  # folder datasets: unreadable files, with reasons


# ---------------------------------------------------------------------------------------------- idx files


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) of unsigned bytes; raise DataError naming the file and fault."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot read ({err})") from err
    if len(raw) < 4:
        raise DataError(f"{path}: truncated: {len(raw)} bytes, no idx header")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _IDX_UBYTE or not 1 <= ndim <= 4:
        raise DataError(
            f"{path}: bad magic number 0x{raw[:4].hex()} (expected 0x000008NN: unsigned-byte idx, 1-4 dims)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header: {len(raw)} bytes, {header} needed for {ndim} dims")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(raw) - header
    if got != expected:
        kind = "truncated" if got < expected else "trailing bytes"
        raise DataError(f"{path}: {kind}: header says {dims} = {expected} bytes of data, file has {got}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write a uint8 array as an idx file (gzipped when the name ends in .gz). Used for tests and exports."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = struct.pack(">HBB", 0, _IDX_UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6)
    path.write_bytes(data)


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "raw", root / "MNIST" / "raw", root / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_idx_dataset(root: Path, name: str) -> Dataset:
    """MNIST-format idx files (either of the two naming layouts) from `root`."""
    splits: dict[str, Split] = {}
    for split, (image_stem, label_stem) in IDX_NAMES.items():
        image_path = _find_idx(root, image_stem)
        if image_path is None:
            raise DataError(f"{root}: no {image_stem}[.gz] (looked in {root}, raw/, MNIST/raw/)")
        images = read_idx(image_path)
        if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(f"{image_path}: images have shape {images.shape}, expected (N, 28, 28)")
        if images.shape[0] == 0:  # a valid idx file of 0 images: no batch to train on, no image to score
            raise DataError(
                f"{image_path}: holds no images (its header says 0); the {split} split needs some"
            )
        labels = None
        label_path = _find_idx(root, label_stem)
        if label_path is not None:
            label_array = read_idx(label_path)
            if label_array.shape != (images.shape[0],):
                raise DataError(
                    f"{label_path}: count mismatch: {label_array.shape[0] if label_array.ndim else 0} "
                    f"labels for {images.shape[0]} images in {image_path.name}"
                )
            labels = torch.from_numpy(label_array.astype(np.int64))
        splits[split] = Split(torch.from_numpy(images.copy()), labels)
    return Dataset(name=name, source=os.path.abspath(root), train=splits["train"], val=splits["test"])


# -------------------------------------------------------------------------------------------------- folder


def load_folder_dataset(
    root: Path, val_fraction: float = 0.1, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Dataset:
    """Every image under `root`, 8-bit grayscale 28x28; split by a hash of the relative path.

    A file of more than `max_pixels` pixels is skipped by the decoder's decompression-bomb guard
    (`ae-train --max-pixels`).

    Hashing the path (not shuffling with a seed) keeps each file in the same split when files are added
    or removed. Unreadable files are counted and reported, not fatal.
    """
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    files = find_images(root)
    images: list[np.ndarray] = []
    in_val: list[bool] = []
    skipped: list[str] = []
    for path in files:
        try:
            # The runtime's own decoder and resize: a file trains as the model input it is served as.
            images.append(fit_gray8(load_gray8(path, max_pixels), (IMAGE_SIZE, IMAGE_SIZE)))
        except BadImageError as err:
            skipped.append(f"{path}: {err.reason}")
            continue
        digest = hashlib.sha1(str(path.relative_to(root)).encode()).digest()
        in_val.append(int.from_bytes(digest[:4], "big") / 2**32 < val_fraction)
    if not images:
        raise DataError(
            f"{root}: no readable images (found {len(files)} candidate files, {len(skipped)} unreadable; "
            f"suffixes looked for: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    stack = torch.from_numpy(np.stack(images))
    mask = torch.tensor(in_val)
    if mask.all() or not mask.any():  # tiny folders: keep at least one image on each side
        mask = torch.zeros(len(images), dtype=torch.bool)
        mask[-1] = len(images) > 1
    train = Split(stack[~mask]) if (~mask).any() else Split(stack)
    val = Split(stack[mask]) if mask.any() else Split(stack)
    return Dataset(
        name="folder", source=os.path.abspath(root), train=train, val=val, skipped_files=tuple(skipped)
    )


# ------------------------------------------------------------------------------------------------- dispatch


def _torchvision_fashion(root: Path) -> Dataset:
    """Where the machine has internet: torchvision's downloader fills root/FashionMNIST/raw."""
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(str(root), train=train, download=True)
    return load_idx_dataset(root / "FashionMNIST" / "raw", "fashion-mnist")


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Dataset:
    """Load a dataset by name; errors say where we looked and how to get the data.

    `max_pixels` is the largest image 'folder' reads (the idx datasets are 28x28 by format)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    root = Path(data_dir) if data_dir is not None else None
    if name == "folder":
        if root is None:
            raise DataError("dataset 'folder' needs --data-dir pointing at a folder of images")
        return load_folder_dataset(root, max_pixels=max_pixels)
    if name == "mnist":
        if root is None:
            raise DataError("dataset 'mnist' needs --data-dir with the MNIST idx files (gzipped or not)")
        return load_idx_dataset(root, "mnist")
    if root is not None and not root.is_dir():
        # Before, the download below made root/FashionMNIST/raw there (wherever a typo pointed) and then
        # failed offline with a four-line error.
        raise DataError(
            f"--data-dir {root} is not a folder: give the folder holding the Fashion-MNIST idx files (or an "
            f"existing folder to download them into). On Debian: `sudo apt-get install {DEBIAN_PACKAGE}` "
            f"(files land in {DEBIAN_FASHION_DIR})"
        )
    candidates = [root] if root is not None else [DEBIAN_FASHION_DIR]
    for candidate in candidates:
        if candidate.is_dir() and _find_idx(candidate, IDX_NAMES["train"][0]) is not None:
            return load_idx_dataset(candidate, "fashion-mnist")
    if download:
        target = root if root is not None else Path("data")
        try:
            return _torchvision_fashion(target)
        except (OSError, RuntimeError) as err:  # urllib's URLError is an OSError
            reason = f"download failed ({err})"
    else:
        reason = "download disabled"
    raise DataError(
        f"Fashion-MNIST not found in {', '.join(map(str, candidates))} and {reason}. On Debian: "
        f"`sudo apt-get install {DEBIAN_PACKAGE}` (files land in {DEBIAN_FASHION_DIR}); or pass --data-dir "
        "with the idx files"
    )


# ---------------------------------------------------------------------------------------------------- noise


def to_float(images: torch.Tensor) -> torch.Tensor:
    """(B, 28, 28) uint8 -> (B, 1, 28, 28) float32 in [0, 1], the model's input contract."""
    return images.unsqueeze(1).to(torch.float32).div_(255.0)


def add_noise(x: torch.Tensor, factor: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The model's noise (`runtimes.noise.apply_noise`: clip(x + factor * N(0, 1), 0, 1)), drawn by torch.

    torch draws the normal samples (a seeded torch generator keeps training reproducible); the formula is
    the runtime's, so training and serving add the same noise.
    """
    # Drawn on the CPU (where the seeded generator lives) so CPU and CUDA runs see the same noise.
    normal = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return apply_noise(x, factor, normal)


# torch generators keep seeds modulo 2**64 and refuse ints outside [-2**63, 2**64): a seed reduced by this
# first gives the same stream wherever it fitted, and fits whatever its size.
TORCH_SEEDS = 1 << 64


def fixed_noisy(images: torch.Tensor, factor: float, seed: int) -> torch.Tensor:
    """Noisy float copies of uint8 images with a fixed seed: the same evaluation set every epoch and run."""
    generator = torch.Generator().manual_seed(seed)
    return add_noise(to_float(images), factor, generator)


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None) -> Sequence[torch.Tensor]:
    """Shuffled (generator given) or ordered index batches covering 0..n-1."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return order.split(batch_size)
