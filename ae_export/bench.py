"""`ae-bench`: what ONNX Runtime buys over PyTorch, how close it runs to the hardware, and how good the
denoising is against what a user would use instead; every ratio is against a baseline measured in the
same run, on the user's machine.

One function per section, each returning a plain JSON-ready dict whose "rows" list is what the tables
show; `bench_cli` only parses options, prints the tables and writes bench.json.

    bench_inference    PyTorch eager vs ONNX Runtime per batch size, FLOPs/image, matmul peak, ORT ablation
    bench_concurrency  the micro-batcher with 1/8/32 callers vs one ORT call per request
    bench_cli          the `ae-denoise` pipeline vs bare Pillow decode+encode of the same PNGs
    bench_training     our in-memory loop vs the seed's torchvision + ToTensor + DataLoader loop
    bench_quality      PSNR/SSIM/ms of classical denoisers (tuned on a separate slice) and our models

Measurement rules, so the numbers can be trusted:
* warm-up calls first; then per-call timings (`time.perf_counter_ns`) until both a minimum time and a
  minimum count are reached; p50/p99 come from those per-call timings, images/s from their mean;
* PyTorch and ONNX Runtime get the same thread count and run one after the other, never concurrently;
* PyTorch eager runs in eval mode under `torch.inference_mode()`;
* ONNX Runtime is measured with intra-op spinning off *and* on (two rows): spinning cuts the wake-up cost
  of the thread pool between calls but burns the cores while idle, so neither alone is the whole story.
"""

from __future__ import annotations

import copy
import datetime as dt
import gzip
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from runtimes.benchmarks import bench_microbatcher, bench_pipeline
from runtimes.denoiser import Denoiser
from runtimes.onnx_model import OnnxModel
from runtimes.sessions import physical_cores, session_options
from train.checkpoint import Checkpoint
from train.data import DataError, Dataset, Split, fixed_noisy, to_float
from train.metrics import psnr_per_image, ssim_per_image
from train.model import DenoisingAutoencoder, ModelConfig

SECTIONS = ("inference", "concurrency", "cli", "training", "quality")
MODES = ("tiny", "quick", "full")
BATCH_SIZES = (1, 8, 64, 256, 1024)
CALLERS = (1, 8, 32)
IMAGE_SHAPE = (1, 28, 28)
NOISE_STD = 0.3
EVAL_SEED = 1234  # train.loop.TrainConfig.eval_seed: the noisy evaluation set training reports on
TUNE_SEED = 4321  # the tuning slice gets its own noise
TUNE_START = 2000  # classical parameters are tuned on test[2000:2000+n], never on the evaluated test[:2000]
TRAIN_BATCH = 256
VARIANT_PAUSE_S = 0.05
BM3D_TUNE_IMAGES = 100  # BM3D costs ~0.2-0.4 s/image: its grid (full mode only) is tried on 100 images
PROFILE_BATCH = 256
FASHION_TRAIN_SIZE = 60_000
# The reference PSNRs (dB) on the first 2,000 test images at noise 0.3, and the seed model's.
REFERENCE_PSNR = {"noisy": 12.8, "gaussian": 16.1, "median": 16.3, "tv": 16.5, "nl-means": 16.8, "bm3d": 17.2}
SEED_MODEL_PSNR = {4: 17.5, 16: 19.0, 64: 19.3}
BACKENDS = {"noisy": "-", "bm3d": "bm3d"}
FLOP_KINDS = ("conv", "conv_transpose", "linear")
# ORT operator types (after graph optimization: BN folded, Conv+ReLU and Gemm+ReLU fused) -> FLOP kind.
ORT_OP_KIND = {
    "Conv": "conv",
    "FusedConv": "conv",
    "ConvTranspose": "conv_transpose",
    "Gemm": "linear",
    "FusedGemm": "linear",
    "MatMul": "linear",
}
TORCHVISION_RAW = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


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
    train_steps: int  # batches of TRAIN_BATCH per training loop
    quality_images: int  # evaluated: test[:quality_images]
    tune_images: int  # tuning slice: test[2000:2000+tune_images]
    bm3d_images: int  # BM3D (~190 ms/image) is evaluated on test[:bm3d_images] only
    grid_points: int | None  # None: every grid point; tiny: a few
    profile_runs: int  # ORT profiler runs at PROFILE_BATCH
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


# ------------------------------------------------------------------------------------------ timing helpers


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


def latency_stats(times_ns: np.ndarray, batch: int) -> dict[str, float]:
    """p50/p99/mean latency (ms) and images/s (batch / mean latency) from per-call timings."""
    ms = times_ns.astype(np.float64) / 1e6
    mean = float(ms.mean())
    return {
        "calls": int(len(ms)),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": mean,
        "images_per_s": batch / (mean / 1e3),
    }


# ------------------------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""  # not Linux: platform.processor() below is the portable (if terser) answer
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads used, library versions, date."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "physical_cores": physical_cores(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "ort_providers": ort.get_available_providers(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import skimage

        info["scikit_image"] = skimage.__version__
    except ImportError:
        info["scikit_image"] = None
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        info["torchvision"] = None
    return info


# ------------------------------------------------------------------------------------------ 1. inference


def count_flops(model: nn.Module, image_shape: tuple[int, ...] = IMAGE_SHAPE) -> dict[str, Any]:
    """FLOPs per image of every Conv2d, ConvTranspose2d and Linear layer, counted from the layer shapes.

    One multiply-add is 2 FLOPs, the convention of GEMM peaks and of torch's FlopCounterMode, so achieved
    GFLOP/s can be set against the matmul peak:
      conv:           2 * Cin/groups * kh * kw * Cout * Hout * Wout
      conv-transpose: 2 * Cin * kh * kw * Cout/groups * Hin * Win  (every input pixel meets the whole kernel)
      linear:         2 * in * out  (per row; one row per image here)
    Bias, BatchNorm, ReLU and sigmoid are elementwise (a few percent more) and deliberately left out: they
    are memory-bound work, not what a matmul peak measures. The spatial sizes are read by hooks during one
    forward pass on a single image (eval mode, no grad); the counting itself is the formulas above.
    """
    layers: dict[str, int] = {}
    kinds: dict[str, str] = {}
    handles = []

    def hook_for(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0]
            if isinstance(module, nn.ConvTranspose2d):
                kh, kw = module.kernel_size
                flops = 2 * module.in_channels * kh * kw * (module.out_channels // module.groups)
                flops *= x.shape[-2] * x.shape[-1]
            elif isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                flops = 2 * (module.in_channels // module.groups) * kh * kw * module.out_channels
                flops *= output.shape[-2] * output.shape[-1]
            else:
                assert isinstance(module, nn.Linear)
                rows = output.numel() // module.out_features  # rows of the one-image batch
                flops = 2 * module.in_features * module.out_features * rows
            layers[name] = int(flops)
            kinds[name] = (
                "conv_transpose"
                if isinstance(module, nn.ConvTranspose2d)
                else "conv"
                if isinstance(module, nn.Conv2d)
                else "linear"
            )

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            handles.append(module.register_forward_hook(hook_for(name)))
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros((1, *image_shape), device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    by_kind = {kind: sum(v for k, v in layers.items() if kinds[k] == kind) for kind in FLOP_KINDS}
    return {
        "total": sum(layers.values()),
        "conv": by_kind["conv"] + by_kind["conv_transpose"],
        "linear": by_kind["linear"],
        "by_kind": by_kind,
        "layers": layers,
    }


def profile_ort_ops(
    onnx_path: Path, threads: int, batch: int, runs: int, flops: dict[str, Any]
) -> list[dict[str, Any]]:
    """Where ONNX Runtime's time goes, per kind of operator, against where the FLOPs are.

    Why: the share of the matmul peak says *that* throughput is lost, not *where*. ORT's own profiler
    (kernel time of every node over `runs` calls at `batch`) grouped by operator kind, next to the FLOP
    share of that kind, shows which layers run far below the peak. The profile file is deleted after.
    """
    options = session_options(threads, spinning=True)
    with tempfile.TemporaryDirectory(prefix="ae-bench-profile-") as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(2).random((batch, *IMAGE_SHAPE), dtype=np.float32)
        feed = {session.get_inputs()[0].name: x}
        for _ in range(3):  # warm-up runs are profiled too; they are dropped below by count
            session.run(None, feed)
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, list[float]] = {}
    op_of: dict[str, str] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            per_node.setdefault(name, []).append(float(event["dur"]))
            op_of[name] = str(event.get("args", {}).get("op_name", "?"))
    kind_us: dict[str, float] = {}
    for name, durations in per_node.items():
        kind = ORT_OP_KIND.get(op_of[name], "elementwise/other")
        kind_us[kind] = kind_us.get(kind, 0.0) + sum(durations[-runs:]) / runs  # us per call
    total_us = sum(kind_us.values())
    rows = []
    for kind in (*FLOP_KINDS, "elementwise/other"):
        us = kind_us.get(kind, 0.0)
        kind_flops = flops["by_kind"].get(kind, 0) * batch
        rows.append(
            {
                "kind": kind,
                "ops": sorted(
                    {op for n, op in op_of.items() if ORT_OP_KIND.get(op, "elementwise/other") == kind}
                ),
                "ms_per_call": us / 1e3,
                "time_share": us / total_us if total_us else 0.0,
                "flop_share": kind_flops / (flops["total"] * batch),
                "gflops": kind_flops / (us * 1e3) if us else 0.0,
            }
        )
    return rows


def matmul_peak(threads: int, sizes: Sequence[int], repeats: int, device: str = "cpu") -> dict[str, Any]:
    """Float32 square `torch.mm`, best of `repeats` per size, in GFLOP/s (2 n^3 / seconds).

    Why this is "the hardware": a large GEMM is the most efficient float32 work a BLAS (MKL/oneDNN on the
    CPU, cuBLAS on CUDA) gets out of these cores at this thread count, so it is the practical ceiling for
    a conv net; the model's share of it says how much is lost to small layers and per-call overhead.
    """
    torch.set_num_threads(threads)
    by_size: dict[str, float] = {}
    for n in sizes:
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        torch.mm(a, b)  # warm-up: BLAS thread pool, packing buffers, cuBLAS handle
        best = float("inf")
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            torch.mm(a, b)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        by_size[str(n)] = 2 * n**3 / best / 1e9
    return {
        "device": device,
        "gflops": max(by_size.values()),
        "by_size": by_size,
        "threads": threads,
        "how": f"torch.mm float32 {'/'.join(map(str, sizes))}^2, best of {repeats}",
    }


def _inference_row(
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


def _ort_options(
    threads: int, spinning: bool, opt_level: str = "all", mem_pattern: bool = True
) -> ort.SessionOptions:
    """The toolkit's own options (runtimes.sessions.session_options) with one knob changed."""
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options = session_options(threads, spinning)
    options.graph_optimization_level = levels[opt_level]
    options.enable_mem_pattern = mem_pattern
    return options


@dataclass(frozen=True)
class OrtVariant:
    """One change to the default ORT CPU session, measured against the default in the same run."""

    label: str
    opt_level: str = "all"
    spinning: bool = True
    threads: int | None = None  # None: the benchmark's thread count
    mem_pattern: bool = True
    io_binding: bool = False


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


def bench_ort_variants(onnx_path: Path, threads: int, budget: Budget) -> list[dict[str, Any]]:
    """Measure each ORT CPU option change against the default, at the budget's ablation batch sizes.

    The differences are often 5-20%, smaller than the drift of a shared or busy machine, so the variants
    are measured round-robin for `variant_rounds` rounds and each keeps its best (lowest) p50: slow
    phases of the machine then hit every variant alike. A short pause before each measurement lets the
    previous session's spinning threads park. Bare `InferenceSession.run` here (no OnnxModel checks), so
    the default row against the inference table's ORT spin-on row also shows the toolkit wrapper's cost.
    """
    rng = np.random.default_rng(1)
    inputs = {b: rng.random((b, *IMAGE_SHAPE), dtype=np.float32) for b in budget.variant_batches}
    variants = [v for v in ORT_VARIANTS if v.threads is None or v.threads != threads]  # 1 thread = default
    sessions = []
    for variant in variants:
        options = _ort_options(
            variant.threads or threads, variant.spinning, variant.opt_level, variant.mem_pattern
        )
        sessions.append(ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"]))
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


def _cuda_rows(
    model: DenoisingAutoencoder,
    onnx_path: Path,
    batch_sizes: Sequence[int],
    budget: Budget,
    flops: int,
    threads: int,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[str]]:
    """PyTorch CUDA and ORT CUDA (IO binding, inputs and outputs resident on the GPU) rows, if both exist.

    TF32 is off on both sides so the GPU rows compute the same float32 math as the CPU rows.
    """
    notes: list[str] = []
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
            x = torch.from_numpy(rng.random((batch, *IMAGE_SHAPE), dtype=np.float32)).cuda()

            def call(x: torch.Tensor = x, m: nn.Module = gpu_model) -> None:
                m(x)
                torch.cuda.synchronize()

            rows.append(
                _inference_row(
                    "pytorch eager", "cuda", batch, time_calls(call, budget), flops, peak["gflops"]
                )
            )
    del gpu_model
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        notes.append(
            "ORT CUDA rows skipped: this onnxruntime build has no CUDAExecutionProvider "
            "(install onnxruntime-gpu: `make setup-gpu`)"
        )
        return rows, peak, notes
    session = ort.InferenceSession(
        str(onnx_path),
        session_options(threads, spinning=False),
        providers=[("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"],
    )
    if session.get_providers()[0] != "CUDAExecutionProvider":
        notes.append(
            f"ORT CUDA rows skipped: CUDAExecutionProvider did not start ({session.get_providers()})"
        )
        return rows, peak, notes
    in_name = session.get_inputs()[0].name
    out_name = session.get_outputs()[0].name
    for batch in batch_sizes:
        x_host = rng.random((batch, *IMAGE_SHAPE), dtype=np.float32)
        x_gpu = ort.OrtValue.ortvalue_from_numpy(x_host, "cuda", 0)
        y_gpu = ort.OrtValue.ortvalue_from_shape_and_type(list(x_host.shape), np.float32, "cuda", 0)
        binding = session.io_binding()
        binding.bind_ortvalue_input(in_name, x_gpu)
        binding.bind_ortvalue_output(out_name, y_gpu)

        def call(b: ort.IOBinding = binding, s: ort.InferenceSession = session) -> None:
            s.run_with_iobinding(b)
            b.synchronize_outputs()

        rows.append(
            _inference_row(
                "onnxruntime (IO binding)", "cuda", batch, time_calls(call, budget), flops, peak["gflops"]
            )
        )
    return rows, peak, notes


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """ort_vs_pytorch: images/s of each row over PyTorch eager's at the same device and batch."""
    torch_rate = {
        (r["device"], r["batch"]): r["images_per_s"] for r in rows if r["runtime"] == "pytorch eager"
    }
    for row in rows:
        base = torch_rate.get((row["device"], row["batch"]))
        row["ort_vs_pytorch"] = row["images_per_s"] / base if base else 1.0


def _inference_notes(rows: list[dict[str, Any]], flops: int, peak_gflops: float) -> list[str]:
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
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> dict[str, Any]:
    """PyTorch eager vs ONNX Runtime CPU (spinning off and on) per batch size; CUDA rows where present.

    Phases run strictly one after the other (all PyTorch, then ORT spin off, then ORT spin on) on the same
    random inputs and thread count. ORT runs through the toolkit's `OnnxModel` (what users call) with
    max_batch = the largest batch, so no row is chunked.
    """
    model = model.eval().cpu()
    flops = count_flops(model)
    total = flops["total"]
    peak = matmul_peak(threads, budget.peak_sizes, budget.peak_repeats)
    rng = np.random.default_rng(0)
    inputs = {b: rng.random((b, *IMAGE_SHAPE), dtype=np.float32) for b in batch_sizes}
    rows: list[dict[str, Any]] = []
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for batch, x_np in inputs.items():
            x = torch.from_numpy(x_np)
            rows.append(
                _inference_row(
                    "pytorch eager",
                    "cpu",
                    batch,
                    time_calls(lambda x=x: model(x), budget),
                    total,
                    peak["gflops"],
                )
            )
    for spinning in (False, True):
        ort_model = OnnxModel(
            onnx_path, provider="cpu", threads=threads, max_batch=max(batch_sizes), spinning=spinning
        )
        label = f"onnxruntime (spin {'on' if spinning else 'off'})"
        for batch, x in inputs.items():
            rows.append(
                _inference_row(
                    label,
                    "cpu",
                    batch,
                    time_calls(lambda x=x, m=ort_model: m.run(x), budget),
                    total,
                    peak["gflops"],
                )
            )
        del ort_model
    cuda_rows, cuda_peak, notes = _cuda_rows(model, onnx_path, batch_sizes, budget, total, threads)
    rows.extend(cuda_rows)
    _add_ratios(rows)
    variants = bench_ort_variants(onnx_path, threads, budget)
    profile = profile_ort_ops(onnx_path, threads, PROFILE_BATCH, budget.profile_runs, flops)
    return {
        "threads": threads,
        "flops_per_image": flops,
        "peak": {"cpu": peak, **({"cuda": cuda_peak} if cuda_peak else {})},
        "rows": rows,
        "ort_variants": variants,
        "ort_profile": {"batch": PROFILE_BATCH, "runs": budget.profile_runs, "rows": profile},
        "notes": _inference_notes(rows, total, peak["gflops"]) + _profile_notes(profile) + notes,
    }


def _profile_notes(profile: list[dict[str, Any]]) -> list[str]:
    """The operator kind that takes the most time relative to its FLOPs: where the peak is lost."""
    worst = max(profile, key=lambda r: r["time_share"] - r["flop_share"])
    return [
        f"ORT at batch {PROFILE_BATCH}: {worst['kind']} ({', '.join(worst['ops']) or '-'}) takes "
        f"{100 * worst['time_share']:.0f}% of the kernel time for {100 * worst['flop_share']:.0f}% of "
        f"the FLOPs ({worst['gflops']:.1f} GFLOP/s)"
    ]


# ---------------------------------------------------------------------------------------- 2. concurrency


def bench_concurrency(
    onnx_path: Path, threads: int, budget: Budget, callers: Sequence[int] = CALLERS
) -> dict[str, Any]:
    """The micro-batcher vs one ORT call per request, with 1, 8 and 32 concurrent single-image callers.

    The Denoiser runs with spinning off: the caller threads and the batcher's worker need the cores
    between model calls, which spinning intra-op threads would take.
    """
    denoiser = Denoiser(onnx_path, provider="auto", threads=threads, spinning=False)
    rows = []
    for count in callers:
        result = bench_microbatcher(denoiser, concurrency=count, requests=budget.concurrency_requests)
        direct, batched = result["direct"], result["batched"]
        rows.append(
            {
                "callers": count,
                "requests": direct["requests"],
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
            }
        )
    return {"provider": denoiser.provider, "threads": threads, "spinning": False, "rows": rows}


# ------------------------------------------------------------------------------------------------ 3. cli


def write_png_folder(folder: Path, images_u8: np.ndarray, count: int, seed: int = 0) -> float:
    """Write `count` noisy 8-bit PNGs made from `images_u8` (tiled if needed); returns the seconds taken."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for i in range(count):
        clean = images_u8[i % len(images_u8)].astype(np.float32) / 255.0
        noisy = np.clip(clean + NOISE_STD * rng.standard_normal(clean.shape), 0.0, 1.0)
        Image.fromarray(np.rint(noisy * 255.0).astype(np.uint8)).save(folder / f"{i:05d}.png")
    return time.perf_counter() - start


def bench_cli(onnx_path: Path, threads: int, images_u8: np.ndarray, count: int) -> dict[str, Any]:
    """`ae-denoise`'s pipeline (its Denoiser built as the CLI builds it) vs bare Pillow, same files.

    Both write PNGs atomically with fsync, as the CLI does; the Pillow rate is one thread's decode+encode,
    the I/O limit a perfect pipeline on one thread could not beat.
    """
    with tempfile.TemporaryDirectory(prefix="ae-bench-cli-") as tmp:
        folder = Path(tmp) / "noisy"
        generate_s = write_png_folder(folder, images_u8, count)
        denoiser = Denoiser(onnx_path, provider="auto", threads=threads, max_batch=256, spinning=False)
        result = bench_pipeline(denoiser, folder, batch_size=256)
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


# ------------------------------------------------------------------------------------------- 4. training


def torchvision_root(source: Path, root: Path) -> Path:
    """Lay out root/FashionMNIST/raw/<idx files> (decompressed), as torchvision 0.29 expects without download.

    torchvision's FashionMNIST checks for the four unzipped idx files in `<root>/FashionMNIST/raw`; the
    Debian package ships them gzipped, so they are decompressed into a temporary root.
    """
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem in TORCHVISION_RAW:
        for folder in (source, source / "raw", source / "FashionMNIST" / "raw"):
            if (folder / stem).is_file():
                shutil.copyfile(folder / stem, raw / stem)
                break
            if (folder / f"{stem}.gz").is_file():
                with gzip.open(folder / f"{stem}.gz", "rb") as src, open(raw / stem, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                break
        else:
            raise DataError(f"{source}: no {stem}[.gz] for the seed-style torchvision loop")
    return root


def _seed_style_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, root: Path, steps: int, seed: int
) -> tuple[float, float]:
    """The seed's loop: torchvision FashionMNIST + ToTensor + DataLoader(256, shuffle), noise per batch.

    Returns (seconds for `steps` batches, mean loss); the dataset's construction is not timed.
    """
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    dataset = datasets.FashionMNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(
        dataset, batch_size=TRAIN_BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    model.train()
    total = 0.0
    done = 0
    start = time.perf_counter()
    for images, _labels in loader:
        noisy = torch.clamp(images + NOISE_STD * torch.randn_like(images), 0.0, 1.0)
        loss = F.mse_loss(model(noisy), images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        done += 1
        if done == steps:
            break
    return time.perf_counter() - start, total / max(1, done)


def _compute_floor(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> float:
    """Seconds for `steps` optimizer steps on one pre-made batch: the model's own cost, no data at all."""
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand((TRAIN_BATCH, *IMAGE_SHAPE), generator=generator)
    noisy = (clean + NOISE_STD * torch.randn(clean.shape, generator=generator)).clamp_(0.0, 1.0)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.mse_loss(model(noisy), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()
    return time.perf_counter() - start


def bench_training(
    data: Dataset, threads: int, steps: int, model_config: ModelConfig | None = None, seed: int = 0
) -> dict[str, Any]:
    """Seconds per epoch of train.loop.train_epoch vs the seed-style loop: same init, optimizer and steps.

    Both train noisy -> clean with MSE and Adam(1e-3, weight decay 1e-5) on batches of 256 for `steps`
    batches; s/epoch is scaled to 60,000 images. A third row, the same steps on one pre-made batch, is the
    compute floor: what the model costs with no data loading at all.
    """
    from train.loop import TrainConfig, train_epoch

    torch.set_num_threads(threads)
    config = model_config or ModelConfig()
    torch.manual_seed(seed)
    initial = copy.deepcopy(DenoisingAutoencoder(config).state_dict())

    def fresh() -> tuple[DenoisingAutoencoder, torch.optim.Optimizer]:
        model = DenoisingAutoencoder(config)
        model.load_state_dict(initial)
        return model, torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)

    warm_model, warm_opt = fresh()
    _compute_floor(warm_model, warm_opt, 2)  # warm-up: oneDNN primitives, allocator, autograd
    images = steps * TRAIN_BATCH
    if len(data.train) < images:
        raise DataError(
            f"training benchmark needs {images} training images; the dataset has {len(data.train)}"
        )
    train_config = TrainConfig(batch_size=TRAIN_BATCH, noise_factor=NOISE_STD, seed=seed, device="cpu")
    model, optimizer = fresh()
    start = time.perf_counter()
    ours_loss = train_epoch(
        model, optimizer, data.train.head(images), train_config, 1, torch.device("cpu"), False
    )
    ours_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="ae-bench-torchvision-") as tmp:
        root = torchvision_root(Path(data.source), Path(tmp))
        model, optimizer = fresh()
        seed_s, seed_loss = _seed_style_epoch(model, optimizer, root, steps, seed)
    model, optimizer = fresh()
    floor_s = _compute_floor(model, optimizer, steps)

    def row(loop: str, seconds: float, loss: float | None) -> dict[str, Any]:
        return {
            "loop": loop,
            "steps": steps,
            "images": images,
            "seconds": seconds,
            "s_per_step": seconds / steps,
            "s_per_epoch": seconds / images * FASHION_TRAIN_SIZE,
            "images_per_s": images / seconds,
            "vs_ours": seconds / ours_s,
            **({"mean_loss": loss} if loss is not None else {}),
        }

    return {
        "threads": threads,
        "batch_size": TRAIN_BATCH,
        "rows": [
            row("ours: in-memory uint8 split (train.loop.train_epoch)", ours_s, ours_loss),
            row("seed-style: torchvision ToTensor + DataLoader", seed_s, seed_loss),
            row("compute floor: same steps, one pre-made batch", floor_s, None),
        ],
    }


# -------------------------------------------------------------------------------------------- 5. quality


@dataclass(frozen=True)
class Classical:
    """A classical denoiser: `apply(noisy_hw, param) -> denoised_hw`, its tuned parameter and grid."""

    name: str
    label: str
    param: str  # the tuned parameter's name; "" when nothing is tuned
    grid: tuple[float, ...]
    apply: Callable[[np.ndarray, float], np.ndarray]


def classical_methods() -> list[Classical]:
    """The scikit-image baselines (and BM3D when installed), each with its main parameter's grid.

    NL-means runs without the `sigma` argument: with sigma=0.3 scikit-image subtracts 2*sigma^2 from the
    patch distances, which over-corrects this clipped noise (PSNR falls with every h tried); h alone tuned
    on the tuning slice does better. Patch 5x5 within 13x13 suits 28x28 images.
    """
    from skimage.filters import gaussian, median
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

    footprint = np.ones((3, 3), dtype=bool)
    methods = [
        Classical("noisy", "noisy input", "", (0.0,), lambda x, _p: x),
        Classical(
            "gaussian",
            "Gaussian blur",
            "sigma",
            (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2),
            lambda x, p: gaussian(x, sigma=p),
        ),
        Classical("median", "median 3x3", "", (0.0,), lambda x, _p: median(x, footprint=footprint)),
        Classical(
            "tv",
            "total variation (Chambolle)",
            "weight",
            (0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.25),
            lambda x, p: denoise_tv_chambolle(x, weight=p),
        ),
        Classical(
            "nl-means",
            "non-local means (5x5 patches, distance 6)",
            "h",
            (0.12, 0.14, 0.16, 0.18, 0.2, 0.22, 0.25),
            lambda x, p: denoise_nl_means(x, h=p, patch_size=5, patch_distance=6, fast_mode=True),
        ),
    ]
    return methods


def bm3d_method(full: bool) -> Classical | None:
    """BM3D from the optional `bm3d` package (not a dependency); None when it is not installed."""
    try:
        import bm3d
    except ImportError:
        return None
    grid = (0.2, 0.25, 0.3, 0.35) if full else (0.3,)  # quick: the true noise std, untuned (190 ms/image)
    return Classical("bm3d", "BM3D", "sigma_psd", grid, lambda x, p: bm3d.bm3d(x, sigma_psd=p))


def _apply(method: Classical, noisy: np.ndarray, param: float) -> tuple[np.ndarray, float]:
    """(N, H, W) noisy -> (N, 1, H, W) denoised clipped to [0, 1], and the seconds, one image at a time."""
    out = np.empty_like(noisy)
    start = time.perf_counter()
    for i, image in enumerate(noisy):
        out[i] = method.apply(image, param)
    seconds = time.perf_counter() - start
    return np.clip(out, 0.0, 1.0)[:, None], seconds


def _scores(denoised: np.ndarray | torch.Tensor, clean: torch.Tensor) -> tuple[float, float]:
    """Mean per-image PSNR (dB) and SSIM, scikit-image's definitions with data_range 1 (train.metrics)."""
    out = torch.as_tensor(denoised, dtype=torch.float32)
    return float(psnr_per_image(out, clean).mean()), float(ssim_per_image(out, clean).mean())


def _grid(grid: tuple[float, ...], points: int | None) -> tuple[float, ...]:
    if points is None or len(grid) <= points:
        return grid
    picks = np.linspace(0, len(grid) - 1, points).round().astype(int)
    return tuple(grid[i] for i in sorted(set(picks)))


@dataclass(frozen=True)
class ModelUnderTest:
    """A checkpoint and the ONNX export folder that matches it."""

    label: str
    checkpoint: Checkpoint
    onnx_dir: Path
    note: str = ""


def _model_rows(
    entry: ModelUnderTest, noisy: torch.Tensor, clean: torch.Tensor, threads: int
) -> list[dict[str, Any]]:
    """Our model through ONNX Runtime (denoiser.onnx) and through PyTorch: PSNR/SSIM and ms/image.

    ms/image is batched throughput (batches of 256, `threads` threads), the way a model is used on a set.
    """
    latent = entry.checkpoint.model_config.latent_dim
    reference = SEED_MODEL_PSNR.get(latent)
    rows = []
    denoiser = Denoiser(entry.onnx_dir, provider="auto", threads=threads, max_batch=256)
    x = np.ascontiguousarray(noisy.numpy())
    denoiser.run_batch(x[:256])  # warm-up at the batch size used
    start = time.perf_counter()
    out = denoiser.run_batch(x)
    seconds = time.perf_counter() - start
    psnr, ssim = _scores(out, clean)
    rows.append(
        {
            "method": f"ours, latent {latent} ({entry.label})",
            "backend": f"onnxruntime {denoiser.provider}",
            "params": f"epoch {entry.checkpoint.epoch}",
            "images": len(x),
            "psnr_db": psnr,
            "ssim": ssim,
            "ms_per_image": seconds / len(x) * 1e3,
            "reference_psnr_db": reference,
        }
    )
    model = entry.checkpoint.build_model()
    torch.set_num_threads(threads)
    with torch.inference_mode():
        model(noisy[:256])
        start = time.perf_counter()
        out_t = torch.cat([model(chunk) for chunk in noisy.split(256)])
        seconds = time.perf_counter() - start
    psnr, ssim = _scores(out_t, clean)
    rows.append(
        {
            "method": f"ours, latent {latent} ({entry.label})",
            "backend": "pytorch eager cpu",
            "params": f"epoch {entry.checkpoint.epoch}",
            "images": len(x),
            "psnr_db": psnr,
            "ssim": ssim,
            "ms_per_image": seconds / len(x) * 1e3,
            "reference_psnr_db": reference,
        }
    )
    return rows


def bench_quality(
    data: Dataset, models: Sequence[ModelUnderTest], threads: int, budget: Budget, full: bool = False
) -> dict[str, Any]:
    """PSNR, SSIM and ms/image on test[:N] at noise 0.3 (fixed seed) for every method, same noisy images.

    Classical parameters are tuned by grid search for PSNR on test[2000:2000+tune] (its own noise seed),
    never on the evaluated images. Classical methods run one image at a time on one thread (as a user
    would call scikit-image); models run batched. BM3D, when installed, is evaluated on fewer images.
    """
    test: Split = data.val
    n_eval = min(budget.quality_images, TUNE_START)
    if len(test) < TUNE_START + budget.tune_images:
        raise DataError(
            f"quality benchmark needs {TUNE_START + budget.tune_images} test images; "
            f"the dataset has {len(test)}"
        )
    clean = to_float(test.images[:n_eval])  # (N, 1, 28, 28)
    noisy = fixed_noisy(test.images[:n_eval], NOISE_STD, EVAL_SEED)
    tune_images = test.images[TUNE_START : TUNE_START + budget.tune_images]
    tune_clean = to_float(tune_images)
    tune_noisy = fixed_noisy(tune_images, NOISE_STD, TUNE_SEED)[:, 0].numpy()
    noisy_hw = noisy[:, 0].numpy()
    tuned_on = f"test[{TUNE_START}:{TUNE_START + budget.tune_images}]"

    methods = classical_methods()
    bm3d = bm3d_method(full)
    rows: list[dict[str, Any]] = []
    for method in [*methods, *([bm3d] if bm3d else [])]:
        grid = _grid(method.grid, budget.grid_points)
        tuning: dict[str, float] = {}
        limit = min(budget.bm3d_images, BM3D_TUNE_IMAGES) if method.name == "bm3d" else len(tune_noisy)
        for param in grid if method.param else ():
            out, _ = _apply(method, tune_noisy[:limit], param)
            tuning[str(param)] = _scores(out, tune_clean[:limit])[0]
        best = max(grid, key=lambda p: tuning[str(p)]) if method.param else grid[0]
        count = min(n_eval, budget.bm3d_images) if method.name == "bm3d" else n_eval
        out, seconds = _apply(method, noisy_hw[:count], best)
        psnr, ssim = _scores(out, clean[:count])
        rows.append(
            {
                "method": method.label,
                "backend": BACKENDS.get(method.name, "scikit-image"),
                "params": f"{method.param}={best:g}" if method.param else "-",
                "images": count,
                "psnr_db": psnr,
                "ssim": ssim,
                "ms_per_image": seconds / count * 1e3,
                "reference_psnr_db": REFERENCE_PSNR.get(method.name),
                "tuning_psnr_db": tuning,
            }
        )
    if bm3d is None:
        rows.append(
            {
                "method": "BM3D",
                "backend": "bm3d",
                "status": "not installed (pip install bm3d)",
                "reference_psnr_db": REFERENCE_PSNR["bm3d"],
            }
        )
    for entry in models:
        rows.extend(_model_rows(entry, noisy, clean, threads))
    return {
        "noise_std": NOISE_STD,
        "noise_seed": EVAL_SEED,
        "evaluated_on": f"test[:{n_eval}]",
        "tuned_on": tuned_on,
        "threads_models": threads,
        "rows": rows,
    }


# ----------------------------------------------------------------------------------------------- rendering


def _fmt(value: Any) -> str:
    """Numbers for people: thousands grouped, 2 decimals, 3 significant digits below 1."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if 0 < abs(value) < 1:
            return f"{value:.3g}"
        return f"{value:.2f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; numbers right-aligned."""
    cells = [[_fmt(c) if not isinstance(c, str) else c for c in row] for row in rows]
    numeric = [all(not isinstance(row[i], str) or row[i] == "-" for row in rows) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if num else "---" for num in numeric) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def render_inference(result: dict[str, Any]) -> str:
    flops = result["flops_per_image"]
    peak = result["peak"]["cpu"]
    head = (
        f"### 1. Inference ({result['threads']} threads)\n\n"
        f"Model: {flops['total'] / 1e6:.3f} MFLOP/image (conv {flops['conv'] / 1e6:.3f}, linear "
        f"{flops['linear'] / 1e6:.3f}). Float32 matmul peak: {peak['gflops']:.1f} GFLOP/s ({peak['how']})."
    )
    if "cuda" in result["peak"]:
        head += f" CUDA matmul peak: {result['peak']['cuda']['gflops']:.0f} GFLOP/s."
    table = markdown_table(
        ["runtime", "device", "batch", "p50 ms", "p99 ms", "images/s", "GFLOP/s", "% of peak", "ORT/PyTorch"],
        [
            [
                r["runtime"],
                r["device"],
                r["batch"],
                r["p50_ms"],
                r["p99_ms"],
                r["images_per_s"],
                r["gflops"],
                100 * r["peak_share"],
                r["ort_vs_pytorch"],
            ]
            for r in result["rows"]
        ],
    )
    batches = list(result["ort_variants"][0]["batches"]) if result["ort_variants"] else []
    variants = markdown_table(
        ["ORT CPU session variant (bare session.run)", "threads"]
        + [h for b in batches for h in (f"b={b} p50 ms", f"b={b} vs default")],
        [
            [v["variant"], v["threads"]]
            + [x for b in batches for x in (v["batches"][b]["p50_ms"], v["batches"][b]["speedup_vs_default"])]
            for v in result["ort_variants"]
        ],
    )
    prof = result["ort_profile"]
    profile = markdown_table(
        [
            f"ORT CPU kernel time at batch {prof['batch']} by operator kind",
            "ops",
            "ms/call",
            "% of time",
            "% of FLOPs",
            "GFLOP/s",
        ],
        [
            [
                r["kind"],
                ", ".join(r["ops"]) or "-",
                r["ms_per_call"],
                100 * r["time_share"],
                100 * r["flop_share"],
                r["gflops"],
            ]
            for r in prof["rows"]
        ],
    )
    notes = "\n".join(f"- {n}" for n in result["notes"])
    return f"{head}\n\n{table}\n\n{variants}\n\n{profile}\n\n{notes}"


def render_concurrency(result: dict[str, Any]) -> str:
    first = result["rows"][0]
    head = (
        f"### 2. Concurrency: micro-batcher vs one ORT call per request ({result['provider']}, "
        f"{result['threads']} threads, spinning off; batcher max batch {first['max_batch_size']}, "
        f"max queue delay {first['max_queue_delay_us']} us)"
    )
    table = markdown_table(
        [
            "callers",
            "requests",
            "direct req/s",
            "direct p99 ms",
            "batched req/s",
            "batched p99 ms",
            "mean batch",
            "speedup",
        ],
        [
            [
                r["callers"],
                r["requests"],
                r["direct_per_s"],
                r["direct_p99_ms"],
                r["batched_per_s"],
                r["batched_p99_ms"],
                r["mean_batch"],
                r["speedup"],
            ]
            for r in result["rows"]
        ],
    )
    return f"{head}\n\n{table}"


def render_cli(result: dict[str, Any]) -> str:
    head = (
        f"### 3. CLI: `ae-denoise` pipeline vs bare Pillow decode+encode ({result['provider']}, "
        f"batch {result['batch_size']}, fsync {'on' if result['fsync'] else 'off'})"
    )
    table = markdown_table(
        [
            "PNG files",
            "ae-denoise images/s",
            "seconds",
            "failed",
            "Pillow decode+encode images/s",
            "seconds",
            "ae-denoise / Pillow",
        ],
        [
            [
                r["images"],
                r["pipeline_per_s"],
                r["pipeline_s"],
                r["failed"],
                r["pillow_per_s"],
                r["pillow_s"],
                r["ratio_to_io"],
            ]
            for r in result["rows"]
        ],
    )
    return f"{head}\n\n{table}"


def render_training(result: dict[str, Any]) -> str:
    head = f"### 4. Training ({result['threads']} threads, batches of {result['batch_size']})"
    table = markdown_table(
        ["loop", "steps", "seconds", "ms/step", "s/epoch (60k)", "images/s", "time vs ours"],
        [
            [
                r["loop"],
                r["steps"],
                r["seconds"],
                1e3 * r["s_per_step"],
                r["s_per_epoch"],
                r["images_per_s"],
                r["vs_ours"],
            ]
            for r in result["rows"]
        ],
    )
    return f"{head}\n\n{table}"


def render_quality(result: dict[str, Any]) -> str:
    head = (
        f"### 5. Quality: {result['evaluated_on']} Fashion-MNIST test images, noise {result['noise_std']} "
        f"(seed {result['noise_seed']}); classical parameters tuned on {result['tuned_on']}"
    )
    rows = []
    for r in result["rows"]:
        if "status" in r:
            rows.append([r["method"], r["backend"], r["status"], "-", "-", "-", "-", r["reference_psnr_db"]])
            continue
        rows.append(
            [
                r["method"],
                r["backend"],
                r["params"],
                r["images"],
                r["psnr_db"],
                r["ssim"],
                r["ms_per_image"],
                r["reference_psnr_db"],
            ]
        )
    table = markdown_table(
        ["method", "backend", "parameters", "images", "PSNR dB", "SSIM", "ms/image", "reference PSNR dB"],
        rows,
    )
    foot = (
        "ms/image: classical methods one image at a time on one thread; our models batched (256) on "
        f"{result['threads_models']} threads. Reference: the issue's figures (seed models for ours)."
    )
    return f"{head}\n\n{table}\n\n{foot}"


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "inference": render_inference,
    "concurrency": render_concurrency,
    "cli": render_cli,
    "training": render_training,
    "quality": render_quality,
}


def render_header(report: dict[str, Any]) -> str:
    m = report["machine"]
    return (
        f"## ae-bench ({report['mode']} mode), {m['date'][:10]}\n\n"
        f"Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs ({m['physical_cores']} physical cores), "
        f"{m['threads']} threads; torch {m['torch']}, onnxruntime {m['onnxruntime']}, numpy {m['numpy']}"
        + (f"; CUDA: {m['cuda']}" if m["cuda"] else "")
    )


def sanitize(value: Any) -> Any:
    """JSON-ready copy: numpy scalars to Python, Paths to str, non-finite floats to None (valid JSON)."""
    if isinstance(value, dict):
        return {str(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sanitize(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------- orchestration


def _export_sha(onnx_dir: Path) -> str | None:
    """The checkpoint sha256 that `onnx_dir/denoiser.onnx` was exported from (its metadata), if readable."""
    path = onnx_dir / "denoiser.onnx"
    if not path.is_file():
        return None
    model = OnnxModel(path, provider="cpu", threads=1, warmup=False)
    sha = model.metadata.provenance.get("checkpoint_sha256")
    return str(sha) if sha else None


def resolve_models(
    checkpoints: Sequence[Checkpoint], onnx_dir: Path, scratch: Path, log: Callable[[str], None]
) -> list[ModelUnderTest]:
    """Pair each checkpoint with an ONNX export of exactly its weights.

    `onnx_dir` is used for the checkpoint it was exported from (checked by the sha256 in its metadata);
    any other checkpoint, or all of them when `onnx_dir` holds no export, is exported into `scratch`.
    """
    from ae_export.export import export_all

    existing = _export_sha(onnx_dir)
    models = []
    for i, checkpoint in enumerate(checkpoints):
        path = checkpoint.path
        label = f"{path.parent.name}/{path.name}" if path else f"model {i + 1}"
        if existing is not None and existing == checkpoint.sha256:
            models.append(ModelUnderTest(label, checkpoint, onnx_dir))
            continue
        target = scratch / f"onnx-{i}"
        reason = "no export there" if existing is None else "it holds another checkpoint's export"
        log(f"exporting {checkpoint.path} to a temporary folder ({onnx_dir}: {reason})")
        export_all(checkpoint, target, log=lambda _line: None)
        models.append(ModelUnderTest(label, checkpoint, target, note=f"exported for this run ({reason})"))
    return models


def load_fashion(data_dir: str | None) -> Dataset:
    """Fashion-MNIST without downloading (the benchmark must not depend on the network)."""
    from train.data import load_dataset

    return load_dataset("fashion-mnist", data_dir, download=False)


def run_bench(
    sections: Sequence[str],
    budget: Budget,
    threads: int,
    models: Sequence[ModelUnderTest],
    data: Dataset | None,
    on_section: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the chosen sections in order (never two at once); returns the whole report, bench.json's body.

    `on_section(name, result)` is called as each section finishes, so tables appear as the run goes.
    Sections 1-3 use the first model; section 5 evaluates every model.
    """
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown sections {unknown}; valid: {', '.join(SECTIONS)}")
    if not models:
        raise ValueError("at least one model (checkpoint + ONNX export) is needed")
    if data is None and any(s in ("cli", "training", "quality") for s in sections):
        raise ValueError("sections cli, training and quality need Fashion-MNIST")
    torch.set_num_threads(threads)
    first = models[0]
    onnx_path = first.onnx_dir / "denoiser.onnx"
    started = time.perf_counter()
    report: dict[str, Any] = {
        "tool": "ae-bench",
        "mode": budget.mode,
        "machine": machine_info(threads),
        "budget": {k: v for k, v in vars(budget).items()},
        "models": [
            {
                "label": m.label,
                "checkpoint": str(m.checkpoint.path),
                "sha256": m.checkpoint.sha256,
                "latent_dim": m.checkpoint.model_config.latent_dim,
                "epoch": m.checkpoint.epoch,
                "onnx_dir": str(m.onnx_dir),
                "note": m.note,
            }
            for m in models
        ],
        "sections": {},
        "seconds": {},
    }
    for name in SECTIONS:
        if name not in sections:
            continue
        t0 = time.perf_counter()
        if name == "inference":
            result = bench_inference(first.checkpoint.build_model(), onnx_path, threads, budget)
        elif name == "concurrency":
            result = bench_concurrency(onnx_path, threads, budget)
        elif name == "cli":
            assert data is not None
            result = bench_cli(onnx_path, threads, data.val.images.numpy(), budget.cli_images)
        elif name == "training":
            assert data is not None
            result = bench_training(data, threads, budget.train_steps, first.checkpoint.model_config)
        else:
            assert data is not None
            result = bench_quality(data, models, threads, budget, full=budget.mode == "full")
        result["seconds"] = time.perf_counter() - t0
        report["sections"][name] = result
        report["seconds"][name] = result["seconds"]
        if on_section is not None:
            on_section(name, result)
    report["seconds"]["total"] = time.perf_counter() - started
    return sanitize(report)
