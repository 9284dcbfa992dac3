"""Section "frontier": what each step up in quality costs, one row per model (normally the presets).

Per model: parameters, MFLOP per image (`bench.flops.count_flops`, the inference section's count),
training seconds per epoch (as recorded in its checkpoint while it trained), PSNR/SSIM on the standard
test (Fashion-MNIST test[:2000], noise 0.3, the evaluation seed training reports on; the denoiser file run
by ONNX Runtime, as users run it), ONNX Runtime images/s at batch 1 and 256 on this CPU, and the file size
of the denoiser file. Ratios are against the lecture preset's row when one is given, else the first row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.flops import count_flops
from bench.section import DENOISER_FILE, NOISE_STD, BenchContext, ModelUnderTest
from bench.tables import Column, Result, Table
from bench.timing import Budget, latency_stats, time_calls
from runtimes.onnx_model import OnnxModel
from train.data import fixed_noisy, to_float
from train.loop import TrainConfig
from train.metrics import psnr_per_image, ssim_per_image

NEEDS_DATA = True
TEST_IMAGES = 2000  # the standard test: test[:2000]
EVAL_SEED = TrainConfig().eval_seed
SPEED_BATCHES = (1, 256)
BASELINE_PRESET = "lecture"


def standard_test(images_u8: torch.Tensor, count: int = TEST_IMAGES) -> tuple[np.ndarray, torch.Tensor]:
    """(noisy float32 (N, 1, H, W) as numpy, clean (N, 1, H, W) tensor) of the standard test[:count]."""
    images = images_u8[: min(count, TEST_IMAGES)]
    noisy = fixed_noisy(images, NOISE_STD, EVAL_SEED)
    return np.ascontiguousarray(noisy.numpy()), to_float(images)


def preset_of(entry: ModelUnderTest) -> str:
    """The preset a checkpoint was trained from; checkpoints older than presets were the lecture's."""
    return str(entry.checkpoint.train_config.get("preset", BASELINE_PRESET))


def frontier_row(
    entry: ModelUnderTest, noisy: np.ndarray, clean: torch.Tensor, threads: int, budget: Budget
) -> dict[str, Any]:
    """One model's costs and quality; the model is run through its exported denoiser file."""
    checkpoint = entry.checkpoint
    model = checkpoint.build_model()
    config = checkpoint.model_config
    epochs = [m for m in checkpoint.metrics if "train_seconds" in m]
    train_seconds = [float(m["train_seconds"]) for m in epochs]
    ort_model = OnnxModel(
        entry.denoiser_path, provider="cpu", threads=threads, max_batch=max(SPEED_BATCHES), spinning=False
    )
    denoised = torch.from_numpy(ort_model.run(noisy))  # (N, 1, H, W)
    speed = {}
    for batch in SPEED_BATCHES:
        x = np.ascontiguousarray(noisy[:batch])
        times = time_calls(lambda x=x, m=ort_model: m.run(x), budget)
        speed[batch] = latency_stats(times, batch)["images_per_s"]
    return {
        "model": entry.label,
        "preset": preset_of(entry),
        "arch": config.arch,
        "latent_dim": config.latent_dim,
        "width": config.width,
        "model_config": config.to_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "mflop": count_flops(model)["total"] / 1e6,
        "epochs": checkpoint.epoch,
        "epochs_planned": int(checkpoint.train_config.get("epochs", checkpoint.epoch)),
        "train_s_per_epoch": float(np.mean(train_seconds)) if train_seconds else None,
        "train_s_total": float(np.sum(train_seconds)) if train_seconds else None,
        "train_threads": epochs[-1].get("threads") if epochs else None,
        "psnr_db": float(psnr_per_image(denoised, clean).mean()),
        "ssim": float(ssim_per_image(denoised, clean).mean()),
        "images_per_s": {str(b): v for b, v in speed.items()},
        "denoiser_bytes": entry.denoiser_path.stat().st_size,
    }


def bench_frontier(
    models: list[ModelUnderTest], images_u8: torch.Tensor, threads: int, budget: Budget
) -> dict[str, Any]:
    noisy, clean = standard_test(images_u8, budget.quality_images)
    rows = [frontier_row(entry, noisy, clean, threads, budget) for entry in models]
    base = next((r for r in rows if r["preset"] == BASELINE_PRESET), rows[0])
    for row in rows:
        row["flops_vs_baseline"] = row["mflop"] / base["mflop"]
        row["psnr_gain_db"] = row["psnr_db"] - base["psnr_db"]
    return {
        "evaluated_on": f"test[:{len(noisy)}]",
        "noise_std": NOISE_STD,
        "noise_seed": EVAL_SEED,
        "threads": threads,
        "baseline": base["preset"],
        "rows": rows,
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    return bench_frontier(list(ctx.models), ctx.dataset().val.images, ctx.threads, ctx.budget)


# ---------------------------------------------------------------------------------------------- tables


def heading(result: Result) -> str:
    return (
        f"Frontier: cost and quality per preset, standard test {result['evaluated_on']} "
        f"(noise {result['noise_std']}, seed {result['noise_seed']})"
    )


def _shape(row: dict[str, Any]) -> str:
    if row["arch"] == "lecture":
        return f"lecture, latent {row['latent_dim']}"
    return f"{row['arch']}, width {row['width']}, latent {row['latent_dim']}"


def _threads(row: dict[str, Any]) -> str:
    return "-" if row.get("train_threads") is None else str(row["train_threads"])


TABLES = (
    Table(
        columns=(
            Column("preset", "preset"),
            Column("shape", _shape),
            Column("params", "params", lambda v: f"{v:,}"),
            Column("MFLOP/image", "mflop", lambda v: f"{v:.2f}"),
            Column("x lecture FLOPs", "flops_vs_baseline", lambda v: f"{v:.1f}"),
            Column("PSNR dB", "psnr_db", lambda v: f"{v:.2f}"),
            Column("SSIM", "ssim", lambda v: f"{v:.3f}"),
            Column("epochs", lambda r: f"{r['epochs']}/{r['epochs_planned']}"),
            Column("train s/epoch", "train_s_per_epoch", lambda v: "-" if v is None else f"{v:.0f}"),
            Column("train threads", _threads),
            Column("ORT img/s b=1", lambda r: r["images_per_s"]["1"], lambda v: f"{v:,.0f}"),
            Column("ORT img/s b=256", lambda r: r["images_per_s"]["256"], lambda v: f"{v:,.0f}"),
            Column(f"{DENOISER_FILE} KiB", "denoiser_bytes", lambda v: f"{v / 1024:,.0f}"),
        ),
        notes=lambda result: [
            f"PSNR/SSIM: mean per image over {result['evaluated_on']}, {DENOISER_FILE} through ONNX Runtime "
            "(CPU). MFLOP: multiply-adds x 2 of the conv/linear layers (the inference section's count).",
            f"img/s: ONNX Runtime CPU, {result['threads']} threads, spinning off, same inputs per model. "
            "train s/epoch: recorded in each checkpoint while it trained (machine load at that time "
            "included); compare rows trained on the same machine under the same load only.",
        ],
    ),
)
