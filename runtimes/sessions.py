"""Opening ONNX Runtime sessions: the one place that picks providers and session options.

The runtime (`OnnxModel`), the exporter's parity check and the benchmark all open their sessions here, so
the configuration parity certifies is the configuration users run: the same graph optimisation level,
thread settings and, on CUDA, the same provider options (TF32 off, so CUDA float32 means float32).
Imports only the standard library and onnxruntime: edge devices have no torch.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from runtimes.cgroups import cpu_quota

PROVIDERS = ("auto", "cpu", "cuda")
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"

Provider = Literal["auto", "cpu", "cuda"]
ConvSearch = Literal["heuristic", "exhaustive", "default"]
CONV_SEARCHES: tuple[ConvSearch, ...] = ("heuristic", "exhaustive", "default")


class InvalidModelError(ValueError):
    """A model file exists but is not a usable ae-export ONNX file (not ONNX, wrong role, bad metadata)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ProviderUnavailableError(RuntimeError):
    """The requested execution provider cannot start here. Raised instead of a silent CPU fallback."""


def positive_count(name: str, value: object, none: str | None = None) -> int | None:
    """`value` as a Python int >= 1, or None where `none` says what None means; else a ValueError naming
    `name`. numpy integers count (np.arange gives them, and a sweep over one passed np.int64(64), which
    was refused as not a positive int); bool does not (True is not a count)."""
    if value is None and none is not None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return int(value)
    or_none = f" or None ({none})" if none is not None else ""
    raise ValueError(f"{name} must be a positive int{or_none}; got {value!r}")


def check_flag(name: str, value: object) -> None:
    """Raise ValueError unless `value` is True or False: "no" or 0.0 would pass as their truth value, and
    spinning="no" turned spinning on, the opposite of what it says."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings counted once).

    Why: ONNX Runtime's intra-op pool is fastest with one thread per physical core; hyper-threads compete
    for the same FPUs. psutil is not a dependency, so read the Linux sysfs topology of the CPUs in our
    affinity mask (which respects taskset and cpuset limits); elsewhere fall back to `os.cpu_count()`.
    A cgroup CPU quota (`docker run --cpus`, a Kubernetes CPU limit) caps the count at the whole CPUs it
    allows, rounded down, at least 1 (`runtimes.cgroups`): more threads than that get throttled.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
    quota = cpu_quota()
    return max(1, min(_cores_of(cpus), int(quota) if quota is not None else len(cpus)))


def _cores_of(cpus: list[int]) -> int:
    """Physical cores among these CPUs (SMT siblings counted once), from the Linux sysfs topology."""
    cores: set[str] = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            # All SMT threads of one core list the same siblings, so the string identifies the core.
            cores.add((topology / "thread_siblings_list").read_text().strip())
        except OSError:
            try:
                package = (topology / "physical_package_id").read_text().strip()
                core = (topology / "core_id").read_text().strip()
            except OSError:
                return max(1, len(cpus))
            cores.add(f"{package}:{core}")
    return max(1, len(cores))


def session_options(threads: int, spinning: bool = True) -> ort.SessionOptions:
    """Session options tuned for latency at batch 1 and throughput at batch 256.

    Measured on this project's denoiser (2-core AMD EPYC VM, onnxruntime 1.32, best of 5 rounds of the
    median over 1000 runs at batch 1 / 100 runs at batch 256; all with ORT_ENABLE_ALL, ORT_SEQUENTIAL,
    inter_op 1):

        intra_op  spinning  mem_pattern   batch 1    batch 256   | IO binding: batch 1  batch 256
        1         on        on            47.1 us    4231 us     |             53.0 us  4285 us
        1         off       on            47.8 us    4339 us     |             54.0 us  4418 us
        2         on        on            50.0 us    3911 us     |             56.6 us  3952 us
        2         on        off           52.9 us    3934 us     |             58.8 us  4374 us
        2         off       on            66.3 us    4430 us     |             86.0 us  4515 us
        2         off       off           79.2 us    4407 us     |             67.2 us  4077 us

    So: intra_op = physical cores (batch 256 is 8% faster, batch 1 within 3 us), spinning on (turning it
    off costs 30% at batch 1 with 2 threads), memory pattern on. IO binding with a preallocated output was
    slower at batch 1 (extra Python binding calls) and no faster at batch 256, so `run` uses plain
    `session.run`. Spinning threads burn CPU between runs, though: where other threads need the cores
    (the `ae-denoise` pipeline decodes and encodes images beside the model) pass `spinning=False`.
    """
    threads = positive_count("threads", threads)  # type: ignore[assignment]
    check_flag("spinning", spinning)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = threads
    opts.enable_mem_pattern = True
    opts.enable_cpu_mem_arena = True
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # Warnings (e.g. "some nodes were not assigned to the preferred provider") are noise for end users;
    # real failures still raise.
    opts.log_severity_level = 3
    return opts


# CUDA float32 must mean float32: TF32 would trade ~1e-3 relative error for speed behind the caller's
# back, and parity certifies these exact options.
CUDA_OPTIONS: dict[str, str] = {"use_tf32": "0"}
# How cuDNN picks each convolution's algorithm, once per new input shape. ONNX Runtime's own default,
# "exhaustive", times every algorithm: the first call at each new shape cost 80-415 ms on an H100 (a
# photograph of a new size, a new batch size from the micro-batcher), against 9-39 ms with cuDNN's
# "heuristic" pick, which ran the photo model's tiles within 6% of exhaustive's and the 28x28 model
# no slower (`python -m bench.cuda_conv_search`; README, GPU check). Like PyTorch, whose cuDNN
# autotuner (`cudnn.benchmark`) is off by default, the runtime takes the heuristic and offers the search
# to a caller that serves one shape for a long time (`conv_search="exhaustive"`); "default" is cuDNN's
# implicit-GEMM algorithm, the least memory.
DEFAULT_CONV_SEARCH: ConvSearch = "heuristic"


def cuda_options(conv_search: ConvSearch = DEFAULT_CONV_SEARCH) -> dict[str, str]:
    """The CUDA execution provider's options for `conv_search` (one of CONV_SEARCHES)."""
    if conv_search not in CONV_SEARCHES:
        raise ValueError(f"conv_search must be one of {', '.join(CONV_SEARCHES)}; got {conv_search!r}")
    return {**CUDA_OPTIONS, "cudnn_conv_algo_search": conv_search.upper()}


def _cuda_unavailable_message(reason: str) -> str:
    return (
        f"CUDA execution provider not available: {reason}. Install onnxruntime-gpu (the `gpu` extra, in an "
        "environment without plain onnxruntime) with a matching CUDA/cuDNN, or choose provider 'cpu' or "
        f"'auto' (valid choices: {', '.join(PROVIDERS)})"
    )


def wants_cuda(provider: str) -> bool:
    """Whether a session for `provider` tries CUDA first: "cuda", or "auto" where this build offers it."""
    return provider == "cuda" or (provider == "auto" and CUDA_EP in ort.get_available_providers())


def open_session(
    path: str | os.PathLike[str],
    provider: str = "auto",
    threads: int | None = None,
    spinning: bool = True,
    options: ort.SessionOptions | None = None,
    conv_search: ConvSearch = DEFAULT_CONV_SEARCH,
) -> tuple[ort.InferenceSession, Literal["cpu", "cuda"]]:
    """An InferenceSession on the requested provider, and the provider that really runs it.

    "cuda" never falls back silently: onnxruntime drops CUDA without an error when its libraries fail to
    load, so the session's own provider list is checked and ProviderUnavailableError raised. "auto" takes
    CUDA where it really starts, else the CPU. `options` replaces `session_options(threads, spinning)`
    (the benchmark varies one knob at a time); a file onnxruntime cannot load is an InvalidModelError.
    `conv_search` applies on CUDA only (see DEFAULT_CONV_SEARCH).
    """
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}; got {provider!r}")
    cuda = cuda_options(conv_search)  # validated on every machine, not only where CUDA is
    available = ort.get_available_providers()
    want_cuda = wants_cuda(provider)
    if provider == "cuda" and CUDA_EP not in available:
        raise ProviderUnavailableError(
            _cuda_unavailable_message(f"this onnxruntime build offers only {', '.join(available)}")
        )
    providers: list[str | tuple[str, dict[str, str]]] = [(CUDA_EP, cuda), CPU_EP] if want_cuda else [CPU_EP]
    if options is None:
        options = session_options(threads if threads is not None else physical_cores(), spinning)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as err:  # onnxruntime raises bare pybind11 exception types (InvalidProtobuf, Fail, ...)
        raise InvalidModelError(path, f"onnxruntime cannot load it as an ONNX model: {err}") from err
    runs_on_cuda = session.get_providers()[0] == CUDA_EP
    if provider == "cuda" and not runs_on_cuda:
        raise ProviderUnavailableError(
            _cuda_unavailable_message(
                f"onnxruntime could not start it for {path} and fell back to {session.get_providers()} "
                "(check the CUDA/cuDNN libraries and the driver)"
            )
        )
    return session, ("cuda" if runs_on_cuda else "cpu")
