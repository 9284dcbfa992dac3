"""Section "consumers": OpenVINO and OpenCV DNN throughput beside ONNX Runtime's, on the same file.

Why: `ae-export compat` proves the other consumers compute the same function; this says what each costs
on this machine. All three run the exported denoiser on the CPU with the benchmark's thread count, one
after the other on the same random inputs, timed through `bench.timing` like every other section; the
ratio is against ONNX Runtime (the toolkit's own session options) in the same run. OpenVINO runs twice:
with the f32 hint the compat matrix certifies, and with the CPU's default precision (bf16 on CPUs with
AMX or AVX512-BF16), whose output differs by ~1e-4..1e-3 (its max abs difference is in the table).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bench.section import BenchContext
from bench.tables import Column, Result, Table
from bench.timing import latency_stats, time_calls
from runtimes.manifest import portable_twin

NEEDS_DATA = False
# (extra, module): OpenVINO and OpenCV come with the `compat` extra. They are imported when this section
# runs, so every other section (the GPU check's inference rows, say) runs without them.
EXTRA = ("compat", "ae_export.compat")
BATCH_SIZES = (1, 256)
Runner = Callable[[np.ndarray], np.ndarray]


def _consumers(ctx: BenchContext, compat: ModuleType) -> list[tuple[str, Path, Callable[[], Runner]]]:
    """(row name, file, loader) per consumer; loaders run lazily, so one that cannot load becomes a note."""
    path, threads = ctx.first.denoiser_path, ctx.threads
    consumers = [
        ("onnxruntime", path, lambda: compat.load_onnxruntime(path, threads)),
        ("openvino (f32 hint)", path, lambda: compat.load_openvino(path, threads, "f32")),
        ("openvino (CPU default precision)", path, lambda: compat.load_openvino(path, threads, None)),
        ("opencv dnn", path, lambda: compat.load_opencv(path, threads)),
    ]
    # OpenCV has no Col2Im: beside a fast-graph export it runs the portable twin, the file it would ship.
    twin = portable_twin(path.parent, "denoiser")
    if twin is not None:
        consumers.append((f"opencv dnn ({twin.name})", twin, lambda: compat.load_opencv(twin, threads)))
    return consumers


def run(ctx: BenchContext) -> dict[str, Any]:
    compat = importlib.import_module(EXTRA[1])
    rng = np.random.default_rng(3)
    inputs = {b: rng.random((b, *ctx.sample_shape), dtype=np.float32) for b in BATCH_SIZES}
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    reference: dict[int, np.ndarray] = {}
    for name, path, load in _consumers(ctx, compat):
        try:
            runner = load()
        except compat.ConsumerError as err:
            reason = " / ".join(line.strip() for line in str(err).splitlines()[:2])  # OpenCV: op on line 2
            notes.append(f"{name} cannot load {path.name}: {reason}")
            continue
        for batch, x in inputs.items():
            out = runner(x)
            reference.setdefault(batch, out)  # onnxruntime runs first
            stats = latency_stats(time_calls(lambda r=runner, x=x: r(x), ctx.budget), batch)
            rows.append(
                {
                    "consumer": name,
                    "batch": batch,
                    **stats,
                    "max_abs_vs_ort": float(np.abs(out - reference[batch]).max()),
                }
            )
    base = {r["batch"]: r["images_per_s"] for r in rows if r["consumer"] == "onnxruntime"}
    for row in rows:
        row["vs_ort"] = row["images_per_s"] / base[row["batch"]] if row["batch"] in base else None
    return {
        "threads": ctx.threads,
        "openvino": compat.ov.__version__,
        "opencv": compat.cv2.__version__,
        "rows": rows,
        "notes": notes,
    }


def heading(result: Result) -> str:
    versions = f"OpenVINO {result['openvino'].split('-')[0]} and OpenCV {result['opencv']} DNN"
    return f"Other consumers: {versions} vs ONNX Runtime (denoiser, cpu, {result['threads']} threads)"


TABLES = (
    Table(
        columns=(
            Column("consumer", "consumer"),
            Column("batch", "batch"),
            Column("p50 ms", "p50_ms"),
            Column("p99 ms", "p99_ms"),
            Column("images/s", "images_per_s"),
            Column("vs ORT", "vs_ort"),
            Column("max abs diff vs ORT", "max_abs_vs_ort", lambda v: f"{v:.1e}"),
        ),
        notes=lambda result: result["notes"],
    ),
)
