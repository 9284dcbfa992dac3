"""Section "inference": PyTorch eager vs ONNX Runtime per batch size, against the hardware's matmul peak.

Measurement rules, so the numbers can be trusted:
* PyTorch and ONNX Runtime get the same thread count and run one after the other, never concurrently,
  on the same random inputs;
* PyTorch eager runs in eval mode under `torch.inference_mode()`;
* ONNX Runtime runs through the toolkit's `OnnxModel` (what users call), with intra-op spinning off *and*
  on (two rows): spinning cuts the wake-up cost of the thread pool between calls but burns the cores while
  idle, so neither alone is the whole story;
* CUDA rows (PyTorch, and ORT with IO binding: the default file and its portable twin) where a GPU is
  present, TF32 off on both sides.
The ORT option ablation (`bench.ort_variants`) and ORT's per-operator profile (`bench.flops`) follow.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from bench.flops import count_flops, profile_notes, profile_ort_ops
from bench.graphs import bench_graphs
from bench.machine import matmul_peak
from bench.ort_variants import bench_ort_variants
from bench.section import BenchContext
from bench.tables import Column, Result, Table
from bench.timing import Budget, latency_stats, time_calls
from runtimes.manifest import portable_twin, resolve_model, variants_present
from runtimes.onnx_model import OnnxModel
from runtimes.sessions import ProviderUnavailableError, open_session
from train.model import DenoisingAutoencoder

NEEDS_DATA = False
BATCH_SIZES = (1, 8, 64, 256, 1024)
PROFILE_BATCH = 256


def _row(
    runtime: str, device: str, batch: int, times_ns: np.ndarray, flops: int, peak_gflops: float
) -> dict[str, Any]:
    stats = latency_stats(times_ns, batch)
    gflops = stats["images_per_s"] * flops / 1e9
    return {
        "runtime": runtime,
        "device": device,
        "batch": batch,
        **stats,
        "gflops": gflops,
        "peak_share": gflops / peak_gflops,
    }


def _cuda_files(onnx_path: Path) -> list[Path]:
    """The export's default denoiser, then, where the folder has them, its portable twin and fp16 file.

    Why these: ORT's CUDA provider has no Col2Im, so the fast graph runs its interleaves on the CPU (the
    row shows the cost); the twin is what `runtimes.Denoiser` opens on CUDA; fp16 (converted from the
    portable graph) is the GPU's precision, and whether it pays is measured, not assumed.
    """
    folder = onnx_path.parent
    twin = portable_twin(folder, "denoiser")
    half = resolve_model(folder, "denoiser", "fp16") if "fp16" in variants_present(folder) else None
    return [onnx_path, *(path for path in (twin, half) if path is not None)]


def _cuda_rows(
    model: DenoisingAutoencoder,
    onnx_path: Path,
    batch_sizes: Sequence[int],
    budget: Budget,
    flops: int,
    threads: int,
    sample_shape: tuple[int, ...],
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[str]]:
    """PyTorch CUDA and ORT CUDA (IO binding, inputs and outputs resident on the GPU) rows, if both exist.

    TF32 is off on both sides (ORT's through `runtimes.sessions`' CUDA options) so the GPU rows compute
    the same float32 math as the CPU rows.
    """
    if not torch.cuda.is_available():
        return [], None, ["CUDA rows skipped: torch sees no CUDA device"]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    peak = matmul_peak(threads, budget.peak_sizes, budget.peak_repeats, device="cuda")
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    gpu_model = copy.deepcopy(model).cuda().eval()
    with torch.inference_mode():
        for batch in batch_sizes:
            x = torch.from_numpy(rng.random((batch, *sample_shape), dtype=np.float32)).cuda()

            def call(x: torch.Tensor = x, m: nn.Module = gpu_model) -> None:
                m(x)
                torch.cuda.synchronize()

            rows.append(_row("pytorch eager", "cuda", batch, time_calls(call, budget), flops, peak["gflops"]))
    del gpu_model
    for path in _cuda_files(onnx_path):
        try:
            session, _ = open_session(path, "cuda", threads, spinning=False)
        except ProviderUnavailableError as err:
            return rows, peak, [f"ORT CUDA rows skipped: {err}"]
        in_name = session.get_inputs()[0].name
        out_name = session.get_outputs()[0].name
        for batch in batch_sizes:
            x_host = rng.random((batch, *sample_shape), dtype=np.float32)
            x_gpu = ort.OrtValue.ortvalue_from_numpy(x_host, "cuda", 0)
            y_gpu = ort.OrtValue.ortvalue_from_shape_and_type(list(x_host.shape), np.float32, "cuda", 0)
            binding = session.io_binding()
            binding.bind_ortvalue_input(in_name, x_gpu)
            binding.bind_ortvalue_output(out_name, y_gpu)

            def run(b: ort.IOBinding = binding, s: ort.InferenceSession = session) -> None:
                s.run_with_iobinding(b)
                b.synchronize_outputs()

            label = f"onnxruntime (IO binding, {path.name})"
            rows.append(_row(label, "cuda", batch, time_calls(run, budget), flops, peak["gflops"]))
    return rows, peak, []


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """ort_vs_pytorch: images/s of each row over PyTorch eager's at the same device and batch."""
    torch_rate = {
        (r["device"], r["batch"]): r["images_per_s"] for r in rows if r["runtime"] == "pytorch eager"
    }
    for row in rows:
        base = torch_rate.get((row["device"], row["batch"]))
        row["ort_vs_pytorch"] = row["images_per_s"] / base if base else 1.0


def _notes(rows: list[dict[str, Any]], flops: int, peak_gflops: float) -> list[str]:
    """A data-driven reading: per-call overhead at batch 1, and where throughput peaks."""
    notes = []
    cpu = [r for r in rows if r["device"] == "cpu"]
    compute_us = flops / (peak_gflops * 1e9) * 1e6
    for r in cpu:
        if r["batch"] == 1:
            notes.append(
                f"batch 1, {r['runtime']}: p50 {r['p50_ms'] * 1e3:.0f} us per call, of which the model's "
                f"{flops / 1e6:.2f} MFLOP would take {compute_us:.1f} us at the matmul peak: "
                f"{100 * (1 - compute_us / (r['p50_ms'] * 1e3)):.0f}% is per-call overhead"
            )
    best = max(cpu, key=lambda r: r["images_per_s"])
    notes.append(
        f"best CPU throughput: {best['runtime']} at batch {best['batch']}, "
        f"{best['images_per_s']:.0f} images/s = {best['gflops']:.1f} GFLOP/s, "
        f"{100 * best['peak_share']:.0f}% of the {peak_gflops:.0f} GFLOP/s peak"
    )
    return notes


def bench_inference(
    model: DenoisingAutoencoder,
    onnx_path: Path,
    threads: int,
    budget: Budget,
    sample_shape: tuple[int, ...],
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> dict[str, Any]:
    """All PyTorch rows, then ORT spin off, then ORT spin on; CUDA rows; the ablation and the profile.

    ORT's `OnnxModel` gets max_batch = the largest batch, so no row is chunked.
    """
    model = model.eval().cpu()
    flops = count_flops(model, sample_shape)
    total = flops["total"]
    peak = matmul_peak(threads, budget.peak_sizes, budget.peak_repeats)
    rng = np.random.default_rng(0)
    inputs = {b: rng.random((b, *sample_shape), dtype=np.float32) for b in batch_sizes}
    rows: list[dict[str, Any]] = []
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for batch, x_np in inputs.items():
            x = torch.from_numpy(x_np)
            times = time_calls(lambda x=x: model(x), budget)
            rows.append(_row("pytorch eager", "cpu", batch, times, total, peak["gflops"]))
    for spinning in (False, True):
        ort_model = OnnxModel(
            onnx_path, provider="cpu", threads=threads, max_batch=max(batch_sizes), spinning=spinning
        )
        label = f"onnxruntime (spin {'on' if spinning else 'off'})"
        for batch, x in inputs.items():
            times = time_calls(lambda x=x, m=ort_model: m.run(x), budget)
            rows.append(_row(label, "cpu", batch, times, total, peak["gflops"]))
        del ort_model
    cuda_rows, cuda_peak, notes = _cuda_rows(
        model, onnx_path, batch_sizes, budget, total, threads, sample_shape
    )
    rows.extend(cuda_rows)
    _add_ratios(rows)
    variants = bench_ort_variants(onnx_path, threads, budget, sample_shape)
    profile = profile_ort_ops(onnx_path, threads, PROFILE_BATCH, budget.profile_runs, flops, sample_shape)
    return {
        "threads": threads,
        "flops_per_image": flops,
        "peak": {"cpu": peak, **({"cuda": cuda_peak} if cuda_peak else {})},
        "rows": rows,
        "ort_variants": variants,
        "ort_profile": {"batch": PROFILE_BATCH, "runs": budget.profile_runs, "rows": profile},
        "notes": _notes(rows, total, peak["gflops"]) + profile_notes(profile, PROFILE_BATCH) + notes,
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    first = ctx.first
    result = bench_inference(
        first.checkpoint.build_model(), first.denoiser_path, ctx.threads, ctx.budget, ctx.sample_shape
    )
    result["graphs"] = bench_graphs(
        first.checkpoint,
        ctx.threads,
        ctx.budget,
        result["flops_per_image"],
        result["peak"]["cpu"]["gflops"],
        ctx.sample_shape,
    )
    return result


# ---------------------------------------------------------------------------------------------- tables


def heading(result: Result) -> str:
    return f"Inference ({result['threads']} threads)"


def _model_line(result: Result) -> str:
    flops = result["flops_per_image"]
    peak = result["peak"]["cpu"]
    line = (
        f"Model: {flops['total'] / 1e6:.3f} MFLOP/image (conv {flops['conv'] / 1e6:.3f}, linear "
        f"{flops['linear'] / 1e6:.3f}). Float32 matmul peak: {peak['gflops']:.1f} GFLOP/s ({peak['how']})."
    )
    if "cuda" in result["peak"]:
        line += f" CUDA matmul peak: {result['peak']['cuda']['gflops']:.0f} GFLOP/s."
    return line


def _variant_columns(result: Result) -> list[Column]:
    """One p50 and one speed-up column per batch size the ablation measured."""
    batches = list(result["ort_variants"][0]["batches"]) if result["ort_variants"] else []
    columns = [Column("ORT CPU session variant (bare session.run)", "variant"), Column("threads", "threads")]
    for b in batches:
        columns.append(Column(f"b={b} p50 ms", lambda r, b=b: r["batches"][b]["p50_ms"]))
        columns.append(Column(f"b={b} vs default", lambda r, b=b: r["batches"][b]["speedup_vs_default"]))
    return columns


def _profile_columns(result: Result) -> list[Column]:
    return [
        Column(f"ORT CPU kernel time at batch {result['ort_profile']['batch']} by operator kind", "kind"),
        Column("ops", lambda r: ", ".join(r["ops"]) or "-"),
        Column("ms/call", "ms_per_call"),
        Column("% of time", lambda r: 100 * r["time_share"]),
        Column("% of FLOPs", lambda r: 100 * r["flop_share"]),
        Column("GFLOP/s", "gflops"),
    ]


def _portable_profile_columns(result: Result) -> list[Column]:
    columns = _profile_columns(result)
    batch = result["graphs"]["portable_profile"]["batch"]
    columns[0] = Column(f"portable graph (ConvTranspose): ORT CPU kernel time at batch {batch}", "kind")
    return columns


TABLES = (
    Table(
        title=_model_line,
        columns=(
            Column("runtime", "runtime"),
            Column("device", "device"),
            Column("batch", "batch"),
            Column("p50 ms", "p50_ms"),
            Column("p99 ms", "p99_ms"),
            Column("images/s", "images_per_s"),
            Column("GFLOP/s", "gflops"),
            Column("% of peak", lambda r: 100 * r["peak_share"]),
            Column("ORT/PyTorch", "ort_vs_pytorch"),
        ),
    ),
    Table(columns=_variant_columns, rows=lambda result: result["ort_variants"]),
    Table(
        columns=_profile_columns,
        rows=lambda result: result["ort_profile"]["rows"],
        notes=lambda result: result["notes"],
    ),
    Table(
        columns=(
            Column("graph", "graph"),
            Column("threading (best p50 of round-robin rounds)", "threading"),
            Column("batch", "batch"),
            Column("p50 ms", "p50_ms"),
            Column("p99 ms", "p99_ms"),
            Column("images/s at p50", "images_per_s"),
            Column("% of peak", lambda r: 100 * r["peak_share"]),
            Column("vs portable 1 thread", "vs_portable_1_thread"),
            Column("vs PyTorch eager", "vs_pytorch_eager"),
        ),
        rows=lambda result: result["graphs"]["rows"],
    ),
    Table(
        columns=_portable_profile_columns, rows=lambda result: result["graphs"]["portable_profile"]["rows"]
    ),
)
