"""The training loop: the lecture's recipe, trained noisy -> clean by default.

Why clean targets: the lecture's slide computes the loss between the output and the *noisy* input, which
teaches the network to reproduce the noise it was shown; a denoiser must map noisy -> clean. `target="noisy"`
keeps the lecture's exact recipe so its numbers (train loss 0.051, val loss 0.040 at latent 4) stay
reproducible.

Reproducibility: the model is initialised from `seed`; each epoch's shuffle and noise come from a
generator seeded by (seed, epoch), so a run resumed after epoch k continues exactly as an uninterrupted run
would. Evaluation noise uses its own fixed seed, so every epoch and every run is scored on the same noisy set.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from runtimes.fileio import atomic_save, atomic_write_json
from runtimes.images import DEFAULT_MAX_PIXELS
from train.checkpoint import Checkpoint, CheckpointError, load_checkpoint, run_folder, save_checkpoint
from train.data import (
    TORCH_SEEDS,
    DataError,
    Dataset,
    Split,
    add_noise,
    batch_indices,
    fixed_noisy,
    load_dataset,
    to_float,
)
from train.metrics import mse_per_image, psnr_per_image, ssim_per_image
from train.model import ARCHS, DenoisingAutoencoder, ModelConfig

LOSSES = ("mse", "bce")
SCHEDULES = ("constant", "cosine")
WARMUP_FRACTION = 0.05  # cosine: linear warm-up over the first 5% of steps, then cosine decay to 0
TARGETS = ("clean", "noisy")
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINT_NAME = "checkpoint.pt"
# What a resumed run may change; the rest is the checkpoint's. --data-dir says where the same data now
# lives (a relative path from another folder, moved files): its split sizes must match the checkpoint's.
RESUMABLE = ("epochs", "out", "device", "data_dir")
METRICS_NAME = "metrics.json"
SAMPLES_NAME = "samples.png"


# What each annotation of TrainConfig admits (`TrainConfig._check_types`).
_FIELD_KINDS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; saved in the checkpoint and in metrics.json."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 256
    preset: str = "lecture"  # the preset the run started from (explicit flags may have overridden it)
    arch: str = "lecture"
    latent_dim: int = 4
    hidden_dim: int = 128
    width: int = 8
    blocks: int = 0
    lr: float = 1e-3
    schedule: str = "constant"
    weight_decay: float = 1e-5
    noise_factor: float = 0.3
    loss: str = "mse"
    target: str = "clean"
    seed: int = 0
    eval_seed: int = 1234
    device: str = "auto"
    out: str = "artifacts"
    limit: int | None = None
    compile: bool = False  # torch.compile + channels_last for the training step (see `compiled_step_model`)
    max_pixels: int = DEFAULT_MAX_PIXELS  # 'folder': files past this many pixels are skipped (bomb guard)

    def __post_init__(self) -> None:
        self._check_types()
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0; got {self.weight_decay}")
        for name, choices in (
            ("loss", LOSSES),
            ("target", TARGETS),
            ("device", DEVICES),
            ("schedule", SCHEDULES),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {', '.join(choices)}")
        if self.epochs < 1 or self.batch_size < 1 or self.latent_dim < 1:
            raise ValueError("epochs, batch_size and latent_dim must be >= 1")
        if not 0.0 <= self.noise_factor <= 10.0:
            raise ValueError(f"noise_factor {self.noise_factor} outside [0, 10]")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1; got {self.max_pixels}")
        self.model_config()  # a bad combination of model knobs fails here, naming the knob

    def _check_types(self) -> None:
        """Each field holds what its annotation says (a float field takes an int too, and must be finite).

        Why: a checkpoint's train_config comes back as whatever it holds. A batch_size of 64.5 or an lr
        of "abc" there made `ae-train --resume` end in a TypeError traceback from deep in torch; as a
        ValueError here it is one line naming the field (a CheckpointError naming the file on resume).
        """
        for f in fields(self):
            value = getattr(self, f.name)
            allowed = [part.strip() for part in str(f.type).split("|")]
            if value is None and "None" in allowed:
                continue
            kinds = tuple(kind for part in allowed if part != "None" for kind in _FIELD_KINDS[part])
            fits = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
            if fits and "float" in allowed and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number; got {value!r}")
            if not fits:
                raise ValueError(f"{f.name} must be {f.type}; got {type(value).__name__} {value!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def model_config(self) -> ModelConfig:
        """The model this recipe trains; ModelConfig validates the combination of knobs."""
        return ModelConfig(
            arch=self.arch,
            latent_dim=self.latent_dim,
            hidden_dim=self.hidden_dim,
            width=self.width,
            blocks=self.blocks,
        )


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate at optimizer step `step` (0-based) of `total_steps`.

    A pure function of the step, so a resumed run follows exactly the schedule of an uninterrupted one
    without any scheduler state in the checkpoint. `constant` is the lecture's recipe (never touched).
    """
    if config.schedule == "constant":
        return config.lr
    warmup = max(1, int(total_steps * WARMUP_FRACTION))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device; valid choices: auto, cpu, cuda")
    return torch.device(name)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # torch takes seeds in [-2**63, 2**64) and reduces them modulo 2**64 itself: reducing first gives every
    # seed that fitted the same stream, and lets any seed fit (a 14-digit one overflowed: 'Overflow when
    # unpacking long long').
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % TORCH_SEEDS)


def _loss_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return F.mse_loss if name == "mse" else F.binary_cross_entropy


@torch.no_grad()
def evaluate(
    model: DenoisingAutoencoder,
    split: Split,
    noise_factor: float,
    eval_seed: int,
    device: torch.device,
    batch_size: int = 1000,
) -> dict[str, float]:
    """The lecture's val loss (clean in, MSE of the reconstruction) and the denoising measures.

    Denoising: the fixed-seed noisy image in, the clean image as target: MSE, PSNR, SSIM; plus the noisy
    input's own PSNR/SSIM as the baseline a denoiser must beat.
    """
    model.eval()
    sums = dict.fromkeys(("val_loss", "mse", "psnr", "ssim", "noisy_psnr", "noisy_ssim"), 0.0)
    n = len(split)
    noisy_all = fixed_noisy(split.images, noise_factor, eval_seed)  # (N, 1, 28, 28), same every epoch
    for start in range(0, n, batch_size):
        clean = to_float(split.images[start : start + batch_size]).to(device)  # (B, 1, 28, 28)
        noisy = noisy_all[start : start + batch_size].to(device)
        recon = model(clean)
        denoised = model(noisy)
        sums["val_loss"] += float(mse_per_image(recon, clean).sum())
        sums["mse"] += float(mse_per_image(denoised, clean).sum())
        sums["psnr"] += float(psnr_per_image(denoised, clean).sum())
        sums["ssim"] += float(ssim_per_image(denoised, clean).sum())
        sums["noisy_psnr"] += float(psnr_per_image(noisy, clean).sum())
        sums["noisy_ssim"] += float(ssim_per_image(noisy, clean).sum())
    return {key: value / n for key, value in sums.items()}


def compiled_step_model(model: DenoisingAutoencoder) -> torch.nn.Module:
    """`model` in channels_last, wrapped by torch.compile, for the training forward/backward only.

    The returned module shares `model`'s parameters, so the optimizer, evaluation, samples and the
    checkpoint keep using the plain module (its state dict has no "_orig_mod." prefixes). Measured at
    batch 256 on a 2-core CPU: a step 1.39x faster than eager (channels_last alone 1.1-1.2x,
    torch.compile alone 0.86x), after 8-46 s of compilation; see the README for the end-to-end run.
    """
    model.to(memory_format=torch.channels_last)
    return torch.compile(model)


def train_epoch(
    model: DenoisingAutoencoder | torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    split: Split,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
    progress: bool,
) -> float:
    """One pass over the training split; returns the mean batch loss (the lecture's 'train loss')."""
    model.train()
    generator = _epoch_generator(config.seed, epoch)
    batches = batch_indices(len(split), config.batch_size, generator)
    total_steps = config.epochs * len(batches)
    first_step = (epoch - 1) * len(batches)
    loss_fn = _loss_fn(config.loss)
    images = split.images.to(device)
    total = 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(batches), desc=f"epoch {epoch}", leave=False, unit="batch")
    for i, idx in enumerate(batches):
        if config.schedule != "constant":
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, first_step + i, total_steps)
        clean = to_float(images[idx.to(device)])  # (B, 1, 28, 28)
        noisy = add_noise(clean, config.noise_factor, generator)
        output = model(noisy)
        # A diverged model's NaN output makes BCE raise "all elements of input should be between 0 and 1",
        # which names no cause: check the output first (one reduction per step, beside .item()'s sync).
        if config.loss == "bce" and not bool(torch.isfinite(output).all()):
            raise FloatingPointError(f"epoch {epoch}, step {i + 1}: the model's output is not finite")
        loss = loss_fn(output, clean if config.target == "clean" else noisy)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.detach().item()
        if not math.isfinite(value):  # stop at once: every later step of a diverged run is wasted
            raise FloatingPointError(f"epoch {epoch}, step {i + 1}: training loss is {value}")
        total += value
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
    if bar is not None:
        bar.close()
    return total / len(batches)


def save_samples(
    model: DenoisingAutoencoder, split: Split, config: TrainConfig, path: Path, device: torch.device
) -> None:
    """The lecture's figure: rows original / noisy / reconstructed, one column per class where labeled."""
    from PIL import Image, ImageDraw

    if split.labels is not None:
        picks = [int(torch.nonzero(split.labels == c)[0]) for c in range(10) if (split.labels == c).any()]
    else:
        picks = list(range(min(10, len(split))))
    clean = to_float(split.images[picks])  # (K, 1, 28, 28)
    noisy = fixed_noisy(split.images[picks], config.noise_factor, config.eval_seed)
    model.eval()
    with torch.no_grad():
        denoised = model(noisy.to(device)).cpu()
    rows = [("original", clean), ("noisy", noisy), ("denoised", denoised)]
    scale, gap, label_w = 3, 4, 70
    cell = 28 * scale
    width = label_w + len(picks) * (cell + gap)
    height = len(rows) * (cell + gap) + gap
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    for r, (label, batch) in enumerate(rows):
        y = gap + r * (cell + gap)
        draw.text((4, y + cell // 2 - 5), label, fill=0)
        for c in range(len(picks)):
            pixels = (batch[c, 0].numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
            tile = Image.fromarray(pixels).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_w + c * (cell + gap), y))
    atomic_save(path, lambda handle: canvas.save(handle, format="PNG"))


def format_epoch(row: dict[str, Any], epochs: int) -> str:
    return (
        f"EPOCH {row['epoch']}/{epochs} train loss {row['train_loss']:.4f} val loss {row['val_loss']:.4f} "
        f"val psnr {row['psnr']:.1f} dB | denoise mse {row['mse']:.4f} ssim {row['ssim']:.3f} "
        f"(noisy input {row['noisy_psnr']:.1f} dB) | {row['seconds']:.1f} s"
    )


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; its message says what checkpoint.pt holds (`on_disk`)."""


def on_disk(ckpt_path: Path, saved: Checkpoint | None, unit: str = "epoch") -> str:
    """What `ckpt_path` holds when a run stops early: the last epoch (photo runs: `unit="step"`) saved, or
    that this run saved none."""
    if saved is not None:
        return f"{ckpt_path} holds {unit} {saved.epoch}"
    earlier = f" ({ckpt_path} is an earlier run's, untouched)" if ckpt_path.exists() else ""
    return "this run wrote nothing" + earlier


def train(
    config: TrainConfig,
    resume: bool = False,
    quiet: bool = False,
    dataset: Dataset | None = None,
    log: Callable[[str], None] = print,
    explicit: frozenset[str] = frozenset(),
) -> Checkpoint:
    """Train (or resume) and write checkpoint.pt, metrics.json and samples.png to `config.out`.

    `explicit`: the config fields the caller set on purpose (ae-train's typed flags). A resumed run keeps
    the checkpoint's recipe, so one of them that differs from it is a ValueError, not silently dropped.
    Ctrl-C (KeyboardInterrupt) comes out as TrainingInterrupted, whose message says what is on disk.
    """
    on_disk_now: list[Checkpoint] = []  # the checkpoint checkpoint.pt holds for this run, once there is one
    try:
        return _train(config, resume, quiet, dataset, log, explicit, on_disk_now)
    except KeyboardInterrupt as err:
        ckpt_path = Path(config.out) / CHECKPOINT_NAME
        raise TrainingInterrupted(on_disk(ckpt_path, on_disk_now[-1] if on_disk_now else None)) from err


def _train(
    config: TrainConfig,
    resume: bool,
    quiet: bool,
    dataset: Dataset | None,
    log: Callable[[str], None],
    explicit: frozenset[str],
    on_disk_now: list[Checkpoint],
) -> Checkpoint:
    """train()'s body; `on_disk_now` is kept holding the checkpoint that checkpoint.pt holds for this run."""
    if config.data_dir is not None:  # recorded absolute: the export and --resume read it from anywhere
        config = replace(config, data_dir=os.path.abspath(config.data_dir))
    out = run_folder(config.out)
    ckpt_path = out / CHECKPOINT_NAME
    device = resolve_device(config.device)
    progress = not quiet and sys.stderr.isatty()

    previous: Checkpoint | None = None
    moved = False  # resumed with its data in another --data-dir
    if resume:
        previous = load_checkpoint(ckpt_path)
        on_disk_now[:] = [previous]
        if previous.model_config.arch not in ARCHS:  # the photo model: a step budget, not this loop's
            raise CheckpointError(
                f"{ckpt_path}: a photo model's checkpoint (arch {previous.model_config.arch}, step "
                f"{previous.epoch}); --resume continues runs of this loop only ({', '.join(ARCHS)}): a "
                "photo run is a step budget, train it afresh with --preset photo --steps N"
            )
        try:
            kept = TrainConfig.from_dict(previous.train_config)
        except (TypeError, ValueError) as err:  # a checkpoint fault: name the file
            raise CheckpointError(f"{ckpt_path}: bad train_config: {err}") from err
        differ = [
            f"--{name.replace('_', '-')} {asked!r} (the checkpoint has {had!r})"
            for name in sorted(explicit - set(RESUMABLE))
            if (asked := getattr(config, name)) != (had := getattr(kept, name))
        ]
        if differ:
            raise ValueError(
                f"{ckpt_path}: --resume continues the checkpoint's recipe; only --epochs, --out, --device "
                f"and --data-dir may change, not {'; '.join(differ)}. Drop them, or train afresh into "
                "another --out"
            )
        # The recipe is the checkpoint's; only the epoch budget, output, device and the data's location may
        # change on resume (a scheduled run resumed with more epochs stretches its schedule: say so below).
        moved = "data_dir" in explicit and config.data_dir != kept.data_dir
        config = TrainConfig(
            **{
                **asdict(kept),
                "epochs": config.epochs,
                "out": config.out,
                "device": config.device,
                "data_dir": config.data_dir if moved else kept.data_dir,
            }
        )
        if previous.epoch >= config.epochs:
            log(f"{ckpt_path}: already trained {previous.epoch} epochs (>= --epochs {config.epochs})")
            return previous
        if config.schedule != "constant" and config.epochs != kept.epochs:
            log(
                f"{ckpt_path}: its {config.schedule} learning-rate schedule was planned over {kept.epochs} "
                f"epochs; from epoch {previous.epoch + 1} it follows the {config.epochs}-epoch schedule, so "
                f"the weights will differ from an uninterrupted {config.epochs}-epoch run"
            )

    data = (
        dataset
        if dataset is not None
        else load_dataset(config.dataset, config.data_dir, max_pixels=config.max_pixels)
    )
    for line in data.skipped_files:
        log(f"skipped unreadable file {line}")
    train_split = data.train.head(config.limit)
    val_split = data.val.head(config.limit)
    if moved:  # the same data elsewhere: at least the same number of images
        had = (previous.dataset.get("train_size"), previous.dataset.get("val_size"))
        if had != (len(train_split), len(val_split)) and None not in had:
            raise DataError(
                f"--data-dir {config.data_dir}: {len(train_split)} training and {len(val_split)} test "
                f"images, but {ckpt_path} trained on {had[0]} and {had[1]}: resume on the data it trained on"
            )

    torch.manual_seed(config.seed % TORCH_SEEDS)
    model_config = config.model_config()
    model = DenoisingAutoencoder(model_config).to(device)
    step_model: torch.nn.Module = model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch = 1
    if previous is not None:
        if previous.model_config != model_config:
            raise ValueError(f"checkpoint model {previous.model_config} differs from {model_config}")
        model.load_state_dict(previous.model_state)
        if previous.optimizer_state is not None:
            optimizer.load_state_dict(previous.optimizer_state)
        history = list(previous.metrics)
        start_epoch = previous.epoch + 1
        log(f"resuming from {ckpt_path} after epoch {previous.epoch}")
    if config.compile:
        step_model = compiled_step_model(model)

    dataset_info = {
        "name": data.name,
        "source": data.source,
        "train_size": len(train_split),
        "val_size": len(val_split),
        "skipped_files": len(data.skipped_files),
    }
    checkpoint = previous  # the last epoch on disk: set only once its file is written
    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        try:
            train_loss = train_epoch(step_model, optimizer, train_split, config, epoch, device, progress)
        except FloatingPointError as err:
            # A diverged epoch is never saved (the files are written after a whole epoch, atomically), so
            # checkpoint.pt, metrics.json and samples.png still hold the last finite epoch: say which.
            kept = on_disk(ckpt_path, checkpoint)
            raise FloatingPointError(f"{err}; try a lower --lr than {config.lr}; {kept}") from err
        train_seconds = time.perf_counter() - started
        scores = evaluate(model, val_split, config.noise_factor, config.eval_seed, device)
        row = {"epoch": epoch, "train_loss": train_loss, **scores}
        row["train_seconds"] = train_seconds
        row["threads"] = torch.get_num_threads()  # s/epoch means little without it
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        saving = Checkpoint(
            model_config=model_config,
            model_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            epoch=epoch,
            train_config=asdict(config),
            optimizer_state=optimizer.state_dict(),
            metrics=history,
            dataset=dataset_info,
        )
        out.mkdir(parents=True, exist_ok=True)  # here, not up front: a refused run leaves no empty folder
        save_checkpoint(saving, ckpt_path)
        checkpoint = saving
        on_disk_now[:] = [saving]
        summary = {"config": asdict(config), "dataset": dataset_info, "epochs": history}
        atomic_write_json(out / METRICS_NAME, summary)
        save_samples(model, data.val, config, out / SAMPLES_NAME, device)
        log(format_epoch(row, config.epochs))
    assert checkpoint is not None
    return checkpoint
