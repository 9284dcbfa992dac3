"""Training the fully convolutional denoiser on photographs (`ae-train --dataset photos` / `--preset photo`).

Why a loop of its own: the lecture's loop walks epochs of an in-memory (N, 28, 28) split; photographs
come in any size, so every step draws a fresh batch of random crops (train.photos.CropSampler) with a
noise sigma per crop drawn uniformly from [sigma_min, sigma_max] (one model for many noise levels). The
budget is a number of optimizer steps (not seconds), so a run is reproducible on every machine; the
learning rate follows a cosine from `lr` to zero over those steps.

Validation: the whole validation photographs (any size; padded to the network's stride and cropped back;
large ones as halo tiles of EVAL_TILE_PIXELS, which give the whole image's result) with 8-bit clipped
noise of `eval_sigma` from a fixed seed; PSNR/SSIM are scikit-image's, averaged per image. The checkpoint
(same format as the lecture's) is written after every evaluation.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from runtimes.fileio import atomic_write_json
from runtimes.images import DEFAULT_MAX_PIXELS
from train.checkpoint import Checkpoint, run_folder, save_checkpoint
from train.data import TORCH_SEEDS
from train.fcn import FcnDenoiser, denoise_any_size
from train.loop import SAMPLES_NAME, TrainingInterrupted, on_disk
from train.metrics import psnr_per_image, ssim_per_image
from train.model import ModelConfig, build_model
from train.photos import CropSampler, PhotoSet, load_photos, noisy_8bit

CHECKPOINT_NAME = "checkpoint.pt"
PRECISIONS = ("auto", "fp32", "bf16")
METRICS_NAME = "metrics.json"
# Validation photographs larger than this run as halo tiles of at most this many pixels (the same result).
# Whole, the default model (width 32, fp32) took ~0.65 GB per megapixel (measured: 1.25 GB at 1.8 MP,
# 0.69 GB as tiles), so a 24 MP photograph of a --data-dir folder would need ~16 GB at every validation;
# as tiles a 12 MP one took 1.26 GB, most of it SSIM's float64 maps. The bundled ones (<= 0.5 MP) run whole.
EVAL_TILE_PIXELS = 1 << 20


@dataclass(frozen=True)
class PhotoTrainConfig:
    """Everything a photo run depends on; saved in the checkpoint (`train_config`) and metrics.json."""

    dataset: str = "photos"
    data_dir: str | None = None  # None: scikit-image's bundled photographs (train/photos.py)
    max_pixels: int = DEFAULT_MAX_PIXELS  # data_dir's files past this many pixels are skipped (bomb guard)
    steps: int = 12000  # ~7 min on a 2-core AMX Xeon in bf16 (~34 ms per step); see the README
    batch_size: int = 8
    crop: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    sigma_min: float = 5 / 255
    sigma_max: float = 55 / 255
    noise_factor: float = 25 / 255  # the validation sigma; exported as the model's reference noise std
    fcn_width: int = 32
    fcn_levels: int = 3
    fcn_depth: int = 1
    eval_every: int = 400
    threads: int | None = None  # torch CPU threads; None: torch's default (the machine's cores)
    precision: str = "auto"  # training arithmetic: "fp32", "bf16" (autocast) or "auto" (see step_precision)
    seed: int = 0
    eval_seed: int = 1234
    device: str = "cpu"
    out: str = "artifacts/photo"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "crop", "eval_every", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not 0.0 <= self.sigma_min <= self.sigma_max <= 1.0:
            raise ValueError(f"need 0 <= sigma_min <= sigma_max <= 1; got {self.sigma_min}, {self.sigma_max}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        stride = 2**self.fcn_levels
        if self.crop % stride:
            raise ValueError(f"crop {self.crop} must be a multiple of the network's stride {stride}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PhotoTrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            arch="fcn", fcn_width=self.fcn_width, fcn_levels=self.fcn_levels, fcn_depth=self.fcn_depth
        )


def native_bf16(device: torch.device) -> bool:
    """Whether `device` does bfloat16 matmuls in hardware (a CPU with AMX or AVX512-BF16, a CUDA GPU with
    bf16), so that autocast to bf16 is faster rather than emulated (it is slower on an AVX2-only CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own CPUID probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def step_precision(precision: str, device: torch.device) -> str:
    """The arithmetic of the training step: "auto" is bf16 where the hardware has it, fp32 elsewhere.

    Why bf16 is safe here: autocast runs the convolutions in bf16 but keeps the weights, the optimizer,
    the residual subtraction `x - noise` and the loss in fp32, and validation and export are fp32. The
    network predicts the noise (std 0.02-0.2), so bf16's 8-bit mantissa costs far less than the model's
    own error (~0.03 rms at sigma 25/255). Measured on a 2-core AVX-512/AMX Xeon, width 32: a step 2.8x
    faster (30 vs 84 ms), with channels_last; the validation PSNR of equal-length runs is in the README.
    """
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


@torch.no_grad()
def evaluate_photos(
    model: FcnDenoiser, photos: PhotoSet, sigma: float, seed: int, device: torch.device
) -> dict[str, float]:
    """Mean per-image PSNR/SSIM of the denoised (rounded to 8 bits) and of the noisy photographs."""
    model.eval()
    sums = dict.fromkeys(("psnr", "ssim", "noisy_psnr", "noisy_ssim"), 0.0)
    for index, image in enumerate(photos.images):
        clean = torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]  # (1, 1, H, W)
        noisy = torch.from_numpy(noisy_8bit(clean.numpy(), sigma, np.random.default_rng(seed + index)))
        denoised = denoise_any_size(model, noisy.to(device), EVAL_TILE_PIXELS).cpu()
        denoised = torch.round(denoised * 255.0) / 255.0  # what a saved 8-bit result holds
        sums["psnr"] += float(psnr_per_image(denoised, clean)[0])
        sums["ssim"] += float(ssim_per_image(denoised, clean)[0])
        sums["noisy_psnr"] += float(psnr_per_image(noisy, clean)[0])
        sums["noisy_ssim"] += float(ssim_per_image(noisy, clean)[0])
    return {key: value / len(photos.images) for key, value in sums.items()}


def train_photos(config: PhotoTrainConfig, log: Callable[[str], None] = print) -> Checkpoint:
    """Train the fcn denoiser for `config.steps` steps; writes checkpoint.pt and metrics.json to `out`.

    Ctrl-C (KeyboardInterrupt) comes out as TrainingInterrupted, whose message says what checkpoint.pt
    holds: the last step this run saved, or that it saved none (an earlier run's file untouched)."""
    saved: list[Checkpoint] = []  # the checkpoint checkpoint.pt holds for this run, once there is one
    try:
        return _train_photos(config, log, saved)
    except KeyboardInterrupt as err:
        ckpt_path = Path(config.out) / CHECKPOINT_NAME
        raise TrainingInterrupted(on_disk(ckpt_path, saved[-1] if saved else None, "step")) from err


def _train_photos(
    config: PhotoTrainConfig, log: Callable[[str], None], saved: list[Checkpoint]
) -> Checkpoint:
    """train_photos()'s body; `saved` is kept holding the checkpoint that checkpoint.pt holds for this run."""
    if config.data_dir is not None:  # recorded absolute: the export reads the folder again, from anywhere
        config = replace(config, data_dir=os.path.abspath(config.data_dir))
    out = run_folder(config.out)
    device = torch.device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    train_set, val_set = load_photos(config.data_dir, config.max_pixels)
    for line in train_set.skipped:
        log(f"skipped {line}")
    rng = np.random.default_rng(config.seed)
    sampler = CropSampler(train_set, config.crop, rng)
    torch.manual_seed(config.seed % TORCH_SEEDS)  # any seed >= 0 (numpy's generator takes any)
    model_config = config.model_config()
    model = build_model(model_config).to(device)
    # channels_last: oneDNN's convolutions run faster in NHWC (1.25x a step on a 2-core CPU, fp32); the
    # state dict is the same tensors, so checkpoint and export do not see it.
    model = model.to(memory_format=torch.channels_last)
    precision = step_precision(config.precision, device)
    log(f"training arithmetic: {precision} (--precision {config.precision}), channels_last")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    dataset_info = {
        "name": "photos",
        "source": train_set.source,
        "train": list(train_set.names),
        "val": list(val_set.names),
        "train_pixels": train_set.pixels(),
        "skipped_files": len(train_set.skipped),
    }
    history: list[dict[str, Any]] = []
    checkpoint: Checkpoint | None = None
    started = time.perf_counter()
    running = 0.0
    for step in range(1, config.steps + 1):
        model.train()
        lr = config.lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / config.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        clean = sampler.sample(config.batch_size)  # (B, 1, crop, crop)
        sigma = rng.uniform(config.sigma_min, config.sigma_max, size=config.batch_size)
        noisy = noisy_8bit(clean, sigma, rng)
        clean_t, noisy_t = torch.from_numpy(clean).to(device), torch.from_numpy(noisy).to(device)
        noisy_t = noisy_t.contiguous(memory_format=torch.channels_last)  # (B, 1, crop, crop)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            denoised = model(noisy_t)
        loss = F.mse_loss(denoised.float(), clean_t)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):  # stop at once; the diverged steps since the last save are not saved
            kept = on_disk(out / CHECKPOINT_NAME, checkpoint, "step")
            raise FloatingPointError(
                f"step {step}: training loss is {value}; try a lower --lr than {config.lr}; {kept}"
            )
        running += value
        if step % config.eval_every and step != config.steps:
            continue
        train_seconds = time.perf_counter() - started
        scores = evaluate_photos(model, val_set, config.noise_factor, config.eval_seed, device)
        row = {
            "step": step,
            "train_loss": running
            / (config.eval_every if step % config.eval_every == 0 else step % config.eval_every),
            **scores,
            "train_seconds": train_seconds,
            "ms_per_step": 1000.0 * train_seconds / step,
            "precision": precision,
        }
        running = 0.0
        history.append(row)
        checkpoint = Checkpoint(
            model_config=model_config,
            model_state={
                k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                for k, v in model.state_dict().items()
            },
            epoch=step,  # for photo runs the checkpoint's "epoch" counts optimizer steps
            train_config=asdict(config),
            optimizer_state=optimizer.state_dict(),
            metrics=history,
            dataset=dataset_info,
        )
        out.mkdir(parents=True, exist_ok=True)  # here, not up front: a refused run leaves no empty folder
        save_checkpoint(checkpoint, out / CHECKPOINT_NAME)
        if not saved:
            # A lecture run's sample sheet in the same --out described another model: the folder then held
            # files of two runs. Photo runs write none (the picture is `make photo-picture`'s).
            (out / SAMPLES_NAME).unlink(missing_ok=True)
        saved[:] = [checkpoint]
        summary = {"config": asdict(config), "dataset": dataset_info, "steps": history}
        atomic_write_json(out / METRICS_NAME, summary)
        log(
            f"STEP {step}/{config.steps} train loss {row['train_loss']:.5f} | val sigma "
            f"{config.noise_factor * 255:.0f}/255: psnr {row['psnr']:.2f} dB ssim {row['ssim']:.3f} "
            f"(noisy {row['noisy_psnr']:.2f} dB) | {train_seconds:.0f} s, {row['ms_per_step']:.0f} ms/step"
        )
        started_eval_excluded = time.perf_counter() - started - train_seconds
        started += started_eval_excluded  # training time excludes evaluation
    assert checkpoint is not None
    return checkpoint
