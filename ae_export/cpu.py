"""What this CPU offers, from /proc/cpuinfo: the SIMD width ONNX Runtime's blocked convolutions use.

Why a CPU target at export: ONNX Runtime's fast x86 convolutions (MLAS NCHWc) hold channels in blocks of
16 with AVX-512 and of 8 with AVX2, and the fast graph's encoder pass (ae_export.stackconv) pays only where
a convolution is narrower than that block. Measured on the lecture model, same process, alternating
rounds, the whole denoiser at batch 256: stacking ran 1.09x faster on an AVX-512 Xeon and 1.08x slower on
an AVX2 EPYC (whose 8-channel first convolution already fills a block); the decoder's first layer as a
MatMul per input cell (ae_export.entrygemm) ran 1.05x faster on that EPYC. So the exporter tunes the
graph for a target, by default the CPU it runs on.
"""

from __future__ import annotations

from pathlib import Path

# Target -> ONNX Runtime's NCHWc channel block on it (0: no blocked layout, e.g. ARM or SSE-only x86).
CPU_TARGETS: dict[str, int] = {"avx512": 16, "avx2": 8, "other": 0}
# Targets whose fast graph computes the decoder's first layer as one MatMul per input cell
# (ae_export.entrygemm): 1.05x on an AVX2 EPYC at batch 256; a similar form measured 0.98x on AVX-512,
# and other CPUs are not measured, so they keep the phase Conv.
DENSE_ENTRY_TARGETS = frozenset({"avx2"})
AUTO = "auto"


def cpu_info(path: Path = Path("/proc/cpuinfo")) -> tuple[set[str], str] | None:
    """(flags, model name) of the first CPU listed, or None where there is no readable cpuinfo."""
    try:
        text = path.read_text()
    except OSError:
        return None
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
        elif key.strip() == "model name" and value.strip() and not model:
            model = value.strip()
    return flags, model


def this_cpu_target() -> str:
    """The CPU_TARGETS key for this machine, as ONNX Runtime picks its convolution kernels."""
    info = cpu_info()
    flags = info[0] if info is not None else set()
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags and "fma" in flags:
        return "avx2"
    return "other"


def resolve_cpu_target(target: str) -> str:
    """`auto` -> this CPU's target; a known target as is; else ValueError naming the valid choices."""
    if target == AUTO:
        return this_cpu_target()
    if target not in CPU_TARGETS:
        raise ValueError(f"unknown CPU target {target!r}; valid choices: {AUTO}, {', '.join(CPU_TARGETS)}")
    return target
