"""Portable vs fast graph, and intra-op threads vs per-core sessions, against the matmul peak.

Part of the inference section. Both graphs are exported in memory from the same checkpoint
(`ae_export.export.export_artifact` with graph="portable" and "fast"), so the rows compare the graph and
the threading, nothing else. Each configuration runs through the toolkit's `OnnxModel`:
* "1 thread": one single-threaded session (the batch-1 path of the default);
* "N intra-op threads": one session with N intra-op threads (`parallel="intra-op"`);
* "N per-core sessions": N single-threaded sessions on slices of the batch (`parallel="sessions"`, the
  default), plus the default `Denoiser` on the fast graph (validation and layout handling included), and
  PyTorch eager with the same threads, so ratios read within one run.
The configurations are measured round-robin for `variant_rounds` rounds, each keeping its best p50: a
shared machine's slow phases then hit every row alike. The ORT per-operator profile of the portable graph
is added so it can be read beside the section's profile of the exported (by default fast) graph.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ae_export.export import export_artifact, write_model
from ae_export.specs import SPECS
from bench.flops import profile_ort_ops
from bench.timing import Budget, latency_stats, time_calls
from runtimes.denoiser import Denoiser
from runtimes.onnx_model import OnnxModel
from train.checkpoint import Checkpoint

GRAPH_BATCHES = (1, 256)


def bench_graphs(
    checkpoint: Checkpoint,
    threads: int,
    budget: Budget,
    flops: dict[str, Any],
    peak_gflops: float,
    sample_shape: tuple[int, ...],
    batch_sizes: Sequence[int] = GRAPH_BATCHES,
    profile_batch: int = 256,
) -> dict[str, Any]:
    """Rows (graph x threading x batch) with p50, images/s, % of peak and speed-up vs portable 1 thread."""
    spec = SPECS["denoiser"]
    total = flops["total"]
    model = checkpoint.build_model().eval()
    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory(prefix="ae-bench-graphs-") as tmp:
        paths: dict[str, Path] = {}
        for graph in ("portable", "fast"):
            folder = Path(tmp) / graph
            folder.mkdir()
            paths[graph] = folder / spec.file_name
            write_model(export_artifact(checkpoint, spec, graph=graph).proto, paths[graph])
        inputs = {b: rng.random((b, *sample_shape), dtype=np.float32) for b in batch_sizes}
        configs: list[tuple[str, str, Callable[[np.ndarray], object]]] = []
        for graph, path in paths.items():
            one = OnnxModel(path, provider="cpu", threads=1, max_batch=max(batch_sizes))
            configs.append((graph, "1 thread", one.run))
            if threads > 1:
                intra = OnnxModel(
                    path, provider="cpu", threads=threads, parallel="intra-op", max_batch=max(batch_sizes)
                )
                split = OnnxModel(path, provider="cpu", threads=threads, max_batch=max(batch_sizes))
                configs.append((graph, f"{threads} intra-op threads", intra.run))
                configs.append((graph, f"{threads} per-core sessions", split.run))
        denoiser = Denoiser(paths["fast"].parent, provider="cpu", threads=threads)
        configs.append(("fast", "Denoiser defaults (denoise)", denoiser.denoise))
        torch.set_num_threads(threads)

        def eager(x: np.ndarray) -> object:
            with torch.inference_mode():
                return model(torch.from_numpy(x))

        configs.append(("pytorch", f"eager, {threads} threads", eager))
        best: dict[tuple[int, int], dict[str, float]] = {}
        for _ in range(budget.variant_rounds):
            for k, (_graph, _how, fn) in enumerate(configs):
                for batch, x in inputs.items():
                    stats = latency_stats(time_calls(lambda fn=fn, x=x: fn(x), budget), batch)
                    if (k, batch) not in best or stats["p50_ms"] < best[(k, batch)]["p50_ms"]:
                        best[(k, batch)] = stats
        profile = profile_ort_ops(
            paths["portable"], threads, profile_batch, budget.profile_runs, flops, sample_shape
        )
    rows = []
    for batch in batch_sizes:
        base = best[(0, batch)]["p50_ms"]  # portable, 1 thread
        eager_p50 = best[(len(configs) - 1, batch)]["p50_ms"]
        for k, (graph, how, _fn) in enumerate(configs):
            stats = best[(k, batch)]
            images_per_s = batch / (stats["p50_ms"] / 1e3)
            gflops = images_per_s * total / 1e9
            rows.append(
                {
                    "graph": graph,
                    "threading": how,
                    "batch": batch,
                    "p50_ms": stats["p50_ms"],
                    "p99_ms": stats["p99_ms"],
                    "images_per_s": images_per_s,
                    "gflops": gflops,
                    "peak_share": gflops / peak_gflops,
                    "vs_portable_1_thread": base / stats["p50_ms"],
                    "vs_pytorch_eager": eager_p50 / stats["p50_ms"],
                }
            )
    return {
        "rounds": budget.variant_rounds,
        "rows": rows,
        "portable_profile": {"batch": profile_batch, "runs": budget.profile_runs, "rows": profile},
    }
