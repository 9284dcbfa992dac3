"""The ORT CPU session ablation: each single option change against the toolkit's default session.

Why: `runtimes.sessions.session_options` picks graph optimization, spinning, threads and the memory
pattern; this measures what each of those choices buys on the user's machine, in the same run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.timing import Budget, latency_stats, time_calls
from runtimes.sessions import open_session, session_options

VARIANT_PAUSE_S = 0.05
OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class OrtVariant:
    """One change to the default ORT CPU session, measured against the default in the same run."""

    label: str
    opt_level: str = "all"
    spinning: bool = True
    threads: int | None = None  # None: the benchmark's thread count
    mem_pattern: bool = True
    io_binding: bool = False

    def options(self, threads: int) -> ort.SessionOptions:
        """The toolkit's own options (runtimes.sessions.session_options) with this variant's knob changed."""
        options = session_options(self.threads or threads, self.spinning)
        options.graph_optimization_level = OPT_LEVELS[self.opt_level]
        options.enable_mem_pattern = self.mem_pattern
        return options


ORT_VARIANTS = (
    OrtVariant("default: opt all, spin on, mem pattern on, session.run"),
    OrtVariant("graph optimization off", opt_level="disable"),
    OrtVariant("graph optimization basic", opt_level="basic"),
    OrtVariant("graph optimization extended", opt_level="extended"),
    OrtVariant("spinning off", spinning=False),
    OrtVariant("1 intra-op thread", threads=1),
    OrtVariant("memory pattern off", mem_pattern=False),
    OrtVariant("IO binding, pre-allocated output", io_binding=True),
)


def _variant_call(session: ort.InferenceSession, x: np.ndarray, io_binding: bool) -> Callable[[], None]:
    """One inference call on `x`: plain `session.run`, or IO binding into a pre-allocated output."""
    in_name = session.get_inputs()[0].name
    out_name = session.get_outputs()[0].name
    if io_binding:
        binding = session.io_binding()
        out = np.empty_like(x)  # the denoiser's output has the input's shape
        binding.bind_cpu_input(in_name, x)
        binding.bind_output(out_name, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)

        def bound(_buffer: np.ndarray = out) -> None:  # the default keeps the bound buffer alive
            session.run_with_iobinding(binding)

        return bound
    feed = {in_name: x}

    def plain() -> None:
        session.run([out_name], feed)

    return plain


def bench_ort_variants(
    onnx_path: Path, threads: int, budget: Budget, sample_shape: tuple[int, ...]
) -> list[dict[str, Any]]:
    """Measure each ORT CPU option change against the default, at the budget's ablation batch sizes.

    The differences are often 5-20%, smaller than the drift of a shared or busy machine, so the variants
    are measured round-robin for `variant_rounds` rounds and each keeps its best (lowest) p50: slow
    phases of the machine then hit every variant alike. A short pause before each measurement lets the
    previous session's spinning threads park. Bare `InferenceSession.run` here (no OnnxModel checks), so
    the default row against the inference table's ORT spin-on row also shows the toolkit wrapper's cost.
    """
    rng = np.random.default_rng(1)
    inputs = {b: rng.random((b, *sample_shape), dtype=np.float32) for b in budget.variant_batches}
    variants = [v for v in ORT_VARIANTS if v.threads is None or v.threads != threads]  # 1 thread = default
    sessions = [open_session(onnx_path, "cpu", options=v.options(threads))[0] for v in variants]
    best: list[dict[int, dict[str, float]]] = [{} for _ in variants]
    for _ in range(budget.variant_rounds):
        for k, (variant, session) in enumerate(zip(variants, sessions, strict=True)):
            for batch, x in inputs.items():
                time.sleep(VARIANT_PAUSE_S)
                stats = latency_stats(
                    time_calls(_variant_call(session, x, variant.io_binding), budget), batch
                )
                if batch not in best[k] or stats["p50_ms"] < best[k][batch]["p50_ms"]:
                    best[k][batch] = stats
    del sessions
    rows = []
    for variant, per_batch in zip(variants, best, strict=True):
        for batch, stats in per_batch.items():
            stats["speedup_vs_default"] = best[0][batch]["p50_ms"] / stats["p50_ms"]
        rows.append(
            {
                "variant": variant.label,
                "threads": variant.threads or threads,
                "rounds": budget.variant_rounds,
                "batches": {str(b): stats for b, stats in per_batch.items()},
            }
        )
    return rows
