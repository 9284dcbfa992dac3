"""What the numbers were measured on: CPU model and SIMD flags, library versions, and the matmul peak.

Timings only mean something beside the machine that produced them; the float32 matmul peak is the
hardware's practical ceiling that the model's throughput is set against.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from ae_export.cpu import cpu_info
from runtimes.sessions import physical_cores

# The instruction-set extensions that decide which kernels MLAS/oneDNN pick (the rest of /proc/cpuinfo's
# flags do not change float32 inference speed).
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "neon",
    "asimd",
    "sve",
)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform.processor()."""
    info = cpu_info()
    return (info[1] if info is not None else "") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD extensions of SIMD_FLAGS this CPU reports (x86 "flags", Arm "Features"); [] if unknown."""
    info = cpu_info()
    present = info[0] if info is not None else set()
    return [flag for flag in SIMD_FLAGS if flag in present]


def machine_info(threads: int) -> dict[str, Any]:
    """CPU, SIMD flags, cores, threads used, library versions, date."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
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
