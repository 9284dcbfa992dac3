"""How long each configuration is measured (`Budget`), per-call timing, and THE latency summary.

Every section times through `time_calls` and summarises through `latency_stats`, so "p99" and "images/s"
mean the same thing in every table of the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MODES = ("tiny", "quick", "full")


@dataclass(frozen=True)
class Budget:
    """How much each section measures.

    quick (the default) keeps the whole run to a few minutes on 2 cores; full repeats longer and tunes on
    a bigger slice; tiny runs every code path in seconds for the smoke test (its numbers mean nothing).
    """

    mode: str
    min_seconds: float  # per timed configuration
    min_calls: int
    max_calls: int
    warmup_calls: int
    peak_sizes: tuple[int, ...]  # square float32 matmul sizes for the peak
    peak_repeats: int
    variant_batches: tuple[int, ...]  # batch sizes of the ORT option ablation
    concurrency_requests: int
    cli_images: int
    train_steps: int  # batches per training loop
    quality_images: int  # evaluated: test[:quality_images]
    tune_images: int  # tuning slice: test[2000:2000+tune_images]
    bm3d_images: int  # BM3D (~190 ms/image) is evaluated on test[:bm3d_images] only
    grid_points: int | None  # None: every grid point; tiny: a few
    profile_runs: int  # ORT profiler runs
    variant_rounds: int  # round-robin rounds of the ORT ablation; each variant keeps its best p50


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(
        mode="tiny",
        min_seconds=0.005,
        min_calls=3,
        max_calls=200,
        warmup_calls=1,
        peak_sizes=(128,),
        peak_repeats=2,
        variant_batches=(1,),
        concurrency_requests=48,
        cli_images=32,
        train_steps=2,
        quality_images=24,
        tune_images=12,
        bm3d_images=2,
        grid_points=2,
        profile_runs=3,
        variant_rounds=1,
    ),
    "quick": Budget(
        mode="quick",
        min_seconds=0.4,
        min_calls=20,
        max_calls=20_000,
        warmup_calls=10,
        peak_sizes=(1024, 2048),
        peak_repeats=3,
        variant_batches=(1, 256),
        concurrency_requests=2000,
        cli_images=10_000,
        train_steps=40,
        quality_images=2000,
        tune_images=200,
        bm3d_images=100,
        grid_points=None,
        profile_runs=50,
        variant_rounds=3,
    ),
    "full": Budget(
        mode="full",
        min_seconds=2.0,
        min_calls=100,
        max_calls=200_000,
        warmup_calls=50,
        peak_sizes=(1024, 2048, 4096),
        peak_repeats=5,
        variant_batches=(1, 64, 256, 1024),
        concurrency_requests=10_000,
        cli_images=10_000,
        train_steps=235,
        quality_images=2000,
        tune_images=1000,
        bm3d_images=500,
        grid_points=None,
        profile_runs=200,
        variant_rounds=5,
    ),
}


def time_calls(fn: Callable[[], object], budget: Budget) -> np.ndarray:
    """Per-call wall times (ns) of `fn`: warm-up first, then until min_seconds AND min_calls are both met.

    Why per call: p99 needs the distribution, and a single total would hide stalls (thread wake-ups,
    allocator growth) that are exactly what separates the runtimes at small batches.
    """
    for _ in range(budget.warmup_calls):
        fn()
    clock = time.perf_counter_ns
    times: list[int] = []
    deadline = clock() + int(budget.min_seconds * 1e9)
    while len(times) < budget.min_calls or (len(times) < budget.max_calls and clock() < deadline):
        start = clock()
        fn()
        times.append(clock() - start)
    return np.asarray(times, dtype=np.int64)


def latency_stats(times_ns: np.ndarray, batch: int = 1, wall_s: float | None = None) -> dict[str, float]:
    """p50/p99/mean latency (ms) and images/s (batch / mean latency) from per-call timings.

    With `wall_s` (the wall time of calls that overlapped, e.g. concurrent callers) it adds `seconds` and
    `throughput_per_s` = calls * batch / wall_s, the rate the callers together achieved.
    """
    ms = np.asarray(times_ns).astype(np.float64) / 1e6
    mean = float(ms.mean())
    stats = {
        "calls": int(len(ms)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": mean,
        "images_per_s": batch / (mean / 1e3) if mean > 0 else 0.0,
    }
    if wall_s is not None:
        stats["seconds"] = wall_s
        stats["throughput_per_s"] = len(ms) * batch / wall_s if wall_s > 0 else 0.0
    return stats
