"""Section "cli": the `ae-denoise` pipeline's images/s on a folder of PNGs vs bare Pillow decode+encode.

Both write PNGs atomically with fsync, as the CLI does; the Pillow rate is one thread's decode+encode, the
I/O limit a perfect pipeline on one thread could not beat, so the ratio says how close the CLI runs to
image-I/O speed.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.section import NOISE_STD, BenchContext
from bench.tables import Column, Result, Table
from runtimes.denoiser import Denoiser
from runtimes.fileio import atomic_save
from runtimes.fitting import SizeMode
from runtimes.images import find_images
from runtimes.noise import add_noise
from runtimes.pipeline import run_pipeline
from runtimes.planning import plan_jobs

NEEDS_DATA = True
BATCH_SIZE = 256


def write_png_folder(folder: Path, images_u8: np.ndarray, count: int, seed: int = 0) -> float:
    """Write `count` noisy 8-bit PNGs made from `images_u8` (tiled if needed); returns the seconds taken."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for i in range(count):
        clean = images_u8[i % len(images_u8)].astype(np.float32) / 255.0  # (H, W)
        noisy = add_noise(clean, NOISE_STD, rng)
        Image.fromarray(np.rint(noisy * 255.0).astype(np.uint8)).save(folder / f"{i:05d}.png")
    return time.perf_counter() - start


def bench_pillow_io(folder: str | os.PathLike[str], fsync: bool = True) -> dict[str, float]:
    """Bare Pillow rate on one thread: open, convert to 8-bit gray, encode PNG, write atomically."""
    files = find_images(folder)
    with tempfile.TemporaryDirectory(prefix="ae-bench-io-") as out:
        start = time.perf_counter()
        for i, path in enumerate(files):
            with Image.open(path) as image:
                gray = image.convert("L")
            atomic_save(
                Path(out) / f"{i}.png", lambda handle, g=gray: g.save(handle, format="PNG"), fsync=fsync
            )
        seconds = time.perf_counter() - start
    return {
        "images": len(files),
        "seconds": seconds,
        "images_per_s": len(files) / seconds if seconds else 0.0,
    }


def bench_pipeline(
    denoiser: Denoiser,
    folder: str | os.PathLike[str],
    batch_size: int = BATCH_SIZE,
    size_mode: SizeMode = "resize",
    workers: int | None = None,
    fsync: bool = True,
) -> dict[str, Any]:
    """`ae-denoise`'s pipeline on `folder` (to a temporary output) vs bare Pillow decode+encode."""
    with tempfile.TemporaryDirectory(prefix="ae-bench-pipeline-") as out:
        plan = plan_jobs([folder], out)
        result = run_pipeline(
            denoiser, plan.jobs, size_mode=size_mode, batch_size=batch_size, workers=workers, fsync=fsync
        )
    io = bench_pillow_io(folder, fsync=fsync)
    return {
        "images": len(plan.jobs),
        "pipeline": {
            "done": result.done,
            "failed": result.failed,
            "seconds": result.seconds,
            "images_per_s": result.images_per_s,
        },
        "pillow_io": io,
        "ratio_to_io": result.images_per_s / io["images_per_s"] if io["images_per_s"] else 0.0,
        "size_mode": size_mode,
        "batch_size": batch_size,
        "fsync": fsync,
        "provider": denoiser.provider,
    }


def bench_cli(onnx_path: Path, threads: int, images_u8: np.ndarray, count: int) -> dict[str, Any]:
    """The pipeline with its Denoiser built as the CLI builds it, vs bare Pillow, on the same files."""
    with tempfile.TemporaryDirectory(prefix="ae-bench-cli-") as tmp:
        folder = Path(tmp) / "noisy"
        generate_s = write_png_folder(folder, images_u8, count)
        denoiser = Denoiser(onnx_path, provider="auto", threads=threads, max_batch=BATCH_SIZE, spinning=False)
        result = bench_pipeline(denoiser, folder, batch_size=BATCH_SIZE)
    pipeline, io = result["pipeline"], result["pillow_io"]
    row = {
        "images": result["images"],
        "pipeline_per_s": pipeline["images_per_s"],
        "pipeline_s": pipeline["seconds"],
        "failed": pipeline["failed"],
        "pillow_per_s": io["images_per_s"],
        "pillow_s": io["seconds"],
        "ratio_to_io": result["ratio_to_io"],
    }
    return {
        "provider": result["provider"],
        "threads": threads,
        "batch_size": result["batch_size"],
        "fsync": result["fsync"],
        "generate_seconds": generate_s,
        "rows": [row],
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    images_u8 = ctx.dataset().val.images.numpy()  # (N, H, W) uint8
    return bench_cli(ctx.first.denoiser_path, ctx.threads, images_u8, ctx.budget.cli_images)


def heading(result: Result) -> str:
    return (
        f"CLI: `ae-denoise` pipeline vs bare Pillow decode+encode ({result['provider']}, "
        f"batch {result['batch_size']}, fsync {'on' if result['fsync'] else 'off'})"
    )


TABLES = (
    Table(
        columns=(
            Column("PNG files", "images"),
            Column("ae-denoise images/s", "pipeline_per_s"),
            Column("seconds", "pipeline_s"),
            Column("failed", "failed"),
            Column("Pillow decode+encode images/s", "pillow_per_s"),
            Column("seconds", "pillow_s"),
            Column("ae-denoise / Pillow", "ratio_to_io"),
        ),
    ),
)
