"""Measurements for `ae-bench`: plain functions that return plain dicts (no asserts, no printing).

* `bench_microbatcher`: C concurrent callers sending single images, once through a `MicroBatcher` and once
  as one direct `Denoiser` call per request; throughput and p50/p99 latency of each.
* `bench_pipeline`: the `ae-denoise` pipeline's images/s on a folder of image files against the bare
  Pillow decode + PNG encode rate of the same files, i.e. how close the CLI runs to image-I/O speed.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from runtimes.batching import MicroBatcher
from runtimes.denoiser import Denoiser
from runtimes.fileio import atomic_save
from runtimes.images import SizeMode, find_images
from runtimes.pipeline import run_pipeline
from runtimes.planning import plan_jobs


def _latency_stats(latencies_s: list[float], seconds: float) -> dict[str, float]:
    lat_ms = np.asarray(latencies_s) * 1e3
    return {
        "requests": len(latencies_s),
        "seconds": seconds,
        "throughput_per_s": len(latencies_s) / seconds if seconds > 0 else 0.0,
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "mean_ms": float(lat_ms.mean()),
    }


def _drive(
    call: Callable[[np.ndarray], np.ndarray], images: np.ndarray, concurrency: int
) -> dict[str, float]:
    """Run len(images) requests from `concurrency` threads (image i from thread i % C); time each."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)

    def client(k: int) -> None:
        mine = images[k::concurrency]
        barrier.wait()
        for image in mine:
            t0 = time.perf_counter()
            call(image)
            latencies[k].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    return _latency_stats([t for per in latencies for t in per], seconds)


def bench_microbatcher(
    denoiser: Denoiser,
    concurrency: int = 16,
    requests: int = 4000,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 0,
    seed: int = 0,
) -> dict[str, object]:
    """Micro-batched vs direct single-image calls from `concurrency` threads on random float32 images."""
    h, w = denoiser.image_shape
    images = np.random.default_rng(seed).random((requests, h, w), dtype=np.float32)  # (R, H, W)
    for image in images[:8]:
        denoiser.denoise(image)  # warm caches for both runs alike
    direct = _drive(denoiser.denoise, images, concurrency)
    with MicroBatcher(denoiser, max_batch_size, max_queue_delay_us) as batcher:
        batched = _drive(batcher, images, concurrency)
        batched["mean_batch_size"] = batcher.items / max(1, batcher.batches)
        batched["largest_batch"] = batcher.largest_batch
    return {
        "concurrency": concurrency,
        "max_batch_size": max_batch_size,
        "max_queue_delay_us": max_queue_delay_us,
        "provider": denoiser.provider,
        "threads": denoiser.model.threads,
        "direct": direct,
        "batched": batched,
        "speedup": batched["throughput_per_s"] / direct["throughput_per_s"]
        if direct["throughput_per_s"]
        else 0.0,
    }


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
    batch_size: int = 256,
    size_mode: SizeMode = "resize",
    workers: int | None = None,
    fsync: bool = True,
) -> dict[str, object]:
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
