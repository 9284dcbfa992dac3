"""Section "training": seconds per epoch of our training loop vs the lecture's torchvision loop.

Both train noisy -> clean with MSE and Adam(1e-3, weight decay 1e-5) on batches of 256 from the same
initial weights for the same number of steps; s/epoch is scaled to 60,000 images. A third row, the same
steps on one pre-made batch, is the compute floor: what the model costs with no data loading at all.
"""

from __future__ import annotations

import copy
import gzip
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.section import NOISE_STD, BenchContext
from bench.tables import Column, Result, Table
from bench.timing import Budget
from train.data import DataError, Dataset, add_noise
from train.loop import TrainConfig, train_epoch
from train.model import DenoisingAutoencoder, ModelConfig

NEEDS_DATA = True
TRAIN_BATCH = 256
FASHION_TRAIN_SIZE = 60_000
TORCHVISION_RAW = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def torchvision_root(source: Path, root: Path) -> Path:
    """Lay out root/FashionMNIST/raw/<idx files> (decompressed), as torchvision expects without download.

    torchvision's FashionMNIST checks for the four unzipped idx files in `<root>/FashionMNIST/raw`; the
    Debian package ships them gzipped, so they are decompressed into a temporary root.
    """
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem in TORCHVISION_RAW:
        found = _raw_file(source, stem)
        if found.suffix == ".gz":
            with gzip.open(found, "rb") as src, open(raw / stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copyfile(found, raw / stem)
    return root


def _raw_file(source: Path, stem: str) -> Path:
    """Where the idx file `stem` (or `stem`.gz) is beside the dataset; DataError naming it if nowhere."""
    for folder in (source, source / "raw", source / "FashionMNIST" / "raw"):
        for name in (stem, f"{stem}.gz"):
            if (folder / name).is_file():
                return folder / name
    raise DataError(f"{source}: no {stem}[.gz] for the lecture-style torchvision loop")


def _check_train_size(data: Dataset, steps: int) -> None:
    """`steps` batches of TRAIN_BATCH, the last one possibly short (full mode's 235 steps are one epoch of
    60,000 images, its last batch 96)."""
    needed = (steps - 1) * TRAIN_BATCH + 1
    if len(data.train) < needed:
        raise DataError(
            f"training benchmark needs {needed} training images for {steps} batches of {TRAIN_BATCH}; "
            f"the dataset has {len(data.train)}"
        )


def check_data(data: Dataset, budget: Budget) -> None:
    """The training split must hold the timed steps, and the idx files must be there for the lecture-style
    loop (`bench.report` checks this before any section runs)."""
    _check_train_size(data, budget.train_steps)
    for stem in TORCHVISION_RAW:
        _raw_file(Path(data.source), stem)


def _lecture_style_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, root: Path, steps: int, seed: int
) -> tuple[float, float]:
    """The lecture's loop: torchvision FashionMNIST + ToTensor + DataLoader(256, shuffle), noise per batch.

    Returns (seconds for `steps` batches, mean loss); the dataset's construction is not timed.
    """
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    dataset = datasets.FashionMNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(
        dataset, batch_size=TRAIN_BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    model.train()
    total = 0.0
    done = 0
    start = time.perf_counter()
    for images, _labels in loader:
        noisy = add_noise(images, NOISE_STD)
        loss = F.mse_loss(model(noisy), images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        done += 1
        if done == steps:
            break
    return time.perf_counter() - start, total / max(1, done)


def _compute_floor(
    model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, sample_shape: tuple[int, ...]
) -> float:
    """Seconds for `steps` optimizer steps on one pre-made batch: the model's own cost, no data at all."""
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand((TRAIN_BATCH, *sample_shape), generator=generator)
    noisy = add_noise(clean, NOISE_STD, generator)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.mse_loss(model(noisy), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
    return time.perf_counter() - start


def bench_training(
    data: Dataset,
    threads: int,
    steps: int,
    sample_shape: tuple[int, ...],
    model_config: ModelConfig | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """train.loop.train_epoch vs the lecture-style loop vs the compute floor: same init, optimizer, steps."""
    torch.set_num_threads(threads)
    config = model_config or ModelConfig()
    torch.manual_seed(seed)
    initial = copy.deepcopy(DenoisingAutoencoder(config).state_dict())

    def fresh() -> tuple[DenoisingAutoencoder, torch.optim.Optimizer]:
        model = DenoisingAutoencoder(config)
        model.load_state_dict(initial)
        return model, torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)

    warm_model, warm_opt = fresh()
    _compute_floor(warm_model, warm_opt, 2, sample_shape)  # warm-up: oneDNN primitives, allocator, autograd
    _check_train_size(data, steps)
    images = min(steps * TRAIN_BATCH, len(data.train))
    train_config = TrainConfig(batch_size=TRAIN_BATCH, noise_factor=NOISE_STD, seed=seed, device="cpu")
    model, optimizer = fresh()
    start = time.perf_counter()
    ours_loss = train_epoch(
        model, optimizer, data.train.head(images), train_config, 1, torch.device("cpu"), False
    )
    ours_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="ae-bench-torchvision-") as tmp:
        root = torchvision_root(Path(data.source), Path(tmp))
        model, optimizer = fresh()
        lecture_s, lecture_loss = _lecture_style_epoch(model, optimizer, root, steps, seed)
    model, optimizer = fresh()
    floor_s = _compute_floor(model, optimizer, steps, sample_shape)

    def row(loop: str, seconds: float, loss: float | None) -> dict[str, Any]:
        return {
            "loop": loop,
            "steps": steps,
            "images": images,
            "seconds": seconds,
            "s_per_step": seconds / steps,
            "s_per_epoch": seconds / images * FASHION_TRAIN_SIZE,
            "images_per_s": images / seconds,
            "vs_ours": seconds / ours_s,
            **({"mean_loss": loss} if loss is not None else {}),
        }

    return {
        "threads": threads,
        "batch_size": TRAIN_BATCH,
        "rows": [
            row("ours: in-memory uint8 split (train.loop.train_epoch)", ours_s, ours_loss),
            row("lecture-style: torchvision ToTensor + DataLoader", lecture_s, lecture_loss),
            row("compute floor: same steps, one pre-made batch", floor_s, None),
        ],
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    config = ctx.first.checkpoint.model_config
    return bench_training(ctx.dataset(), ctx.threads, ctx.budget.train_steps, ctx.sample_shape, config)


def heading(result: Result) -> str:
    return f"Training ({result['threads']} threads, batches of {result['batch_size']})"


TABLES = (
    Table(
        columns=(
            Column("loop", "loop"),
            Column("steps", "steps"),
            Column("seconds", "seconds"),
            Column("ms/step", lambda r: 1e3 * r["s_per_step"]),
            Column("s/epoch (60k)", "s_per_epoch"),
            Column("images/s", "images_per_s"),
            Column("time vs ours", "vs_ours"),
        ),
    ),
)
