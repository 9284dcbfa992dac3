"""Section "concurrency": the micro-batcher vs one ORT call per request, with 1, 8 and 32 callers.

C threads each send single images; once every request is a direct `Denoiser` call, once it goes through a
`MicroBatcher` that merges concurrent requests into one model call. Throughput and p50/p99 latency of each.
The requests run in ROUNDS parts, direct and batched alternating, and each mode's figures pool its parts:
a shared machine's slow phase then hits both modes alike (one direct run then one batched run of a few
seconds each turned 1.3-1.5x into 1.06x, with a worse batched p99, in one run of five on a noisy VM).
The Denoiser runs with spinning off: the caller threads and the batcher's worker need the cores between
model calls, which spinning intra-op threads would take.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.section import BenchContext
from bench.tables import Column, Result, Table
from bench.timing import Budget, latency_stats
from runtimes.batching import MicroBatcher
from runtimes.denoiser import Denoiser

NEEDS_DATA = False
CALLERS = (1, 8, 32)
ROUNDS = 4


def _drive(
    call: Callable[[np.ndarray], np.ndarray], images: np.ndarray, concurrency: int
) -> tuple[np.ndarray, float]:
    """Run len(images) requests from `concurrency` threads (image i from thread i % C): each request's
    latency in ns, and the wall seconds of the whole."""
    latencies: list[list[int]] = [[] for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    clock = time.perf_counter_ns

    def client(k: int) -> None:
        mine = images[k::concurrency]
        barrier.wait()
        for image in mine:
            t0 = clock()
            call(image)
            latencies[k].append(clock() - t0)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    return np.asarray([t for per in latencies for t in per]), seconds


def bench_microbatcher(
    denoiser: Denoiser,
    concurrency: int = 16,
    requests: int = 4000,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 0,
    seed: int = 0,
    rounds: int = ROUNDS,
) -> dict[str, Any]:
    """Micro-batched vs direct single-image calls from `concurrency` threads on random float32 images,
    in `rounds` alternating parts (see the module doc)."""
    h, w = denoiser.image_shape
    images = np.random.default_rng(seed).random((requests, h, w), dtype=np.float32)  # (R, H, W)
    for image in images[:8]:
        denoiser.denoise(image)  # warm caches for both runs alike
    parts = [part for part in np.array_split(images, max(1, rounds)) if len(part)]
    runs: dict[str, list[tuple[np.ndarray, float]]] = {"direct": [], "batched": []}
    with MicroBatcher(denoiser, max_batch_size, max_queue_delay_us) as batcher:
        for part in parts:  # an idle batcher's worker waits on a lock: the direct parts run alone
            runs["direct"].append(_drive(denoiser.denoise, part, concurrency))
            runs["batched"].append(_drive(batcher, part, concurrency))
        mean_batch, largest = batcher.items / max(1, batcher.batches), batcher.largest_batch
    direct, batched = (
        latency_stats(
            np.concatenate([lat for lat, _ in runs[mode]]), batch=1, wall_s=sum(s for _, s in runs[mode])
        )
        for mode in ("direct", "batched")
    )
    batched["mean_batch_size"] = mean_batch
    batched["largest_batch"] = largest
    return {
        "concurrency": concurrency,
        "max_batch_size": max_batch_size,
        "max_queue_delay_us": max_queue_delay_us,
        "rounds": len(parts),
        "provider": denoiser.provider,
        "threads": denoiser.model.threads,
        "direct": direct,
        "batched": batched,
        "speedup": batched["throughput_per_s"] / direct["throughput_per_s"]
        if direct["throughput_per_s"]
        else 0.0,
    }


def bench_concurrency(
    onnx_path: Path, threads: int, budget: Budget, callers: Sequence[int] = CALLERS
) -> dict[str, Any]:
    denoiser = Denoiser(onnx_path, provider="auto", threads=threads, spinning=False)
    rows = []
    for count in callers:
        result = bench_microbatcher(denoiser, concurrency=count, requests=budget.concurrency_requests)
        direct, batched = result["direct"], result["batched"]
        rows.append(
            {
                "callers": count,
                "requests": direct["calls"],
                "direct_per_s": direct["throughput_per_s"],
                "direct_p50_ms": direct["p50_ms"],
                "direct_p99_ms": direct["p99_ms"],
                "batched_per_s": batched["throughput_per_s"],
                "batched_p50_ms": batched["p50_ms"],
                "batched_p99_ms": batched["p99_ms"],
                "mean_batch": batched["mean_batch_size"],
                "largest_batch": batched["largest_batch"],
                "speedup": result["speedup"],
                "max_batch_size": result["max_batch_size"],
                "max_queue_delay_us": result["max_queue_delay_us"],
                "rounds": result["rounds"],
            }
        )
    return {"provider": denoiser.provider, "threads": threads, "spinning": False, "rows": rows}


def run(ctx: BenchContext) -> dict[str, Any]:
    return bench_concurrency(ctx.first.denoiser_path, ctx.threads, ctx.budget)


def heading(result: Result) -> str:
    first = result["rows"][0]
    return (
        f"Concurrency: micro-batcher vs one ORT call per request ({result['provider']}, "
        f"{result['threads']} threads, spinning off; batcher max batch {first['max_batch_size']}, "
        f"max queue delay {first['max_queue_delay_us']} us; {first['rounds']} alternating rounds, pooled)"
    )


TABLES = (
    Table(
        columns=(
            Column("callers", "callers"),
            Column("requests", "requests"),
            Column("direct req/s", "direct_per_s"),
            Column("direct p99 ms", "direct_p99_ms"),
            Column("batched req/s", "batched_per_s"),
            Column("batched p99 ms", "batched_p99_ms"),
            Column("mean batch", "mean_batch"),
            Column("speedup", "speedup"),
        ),
    ),
)
