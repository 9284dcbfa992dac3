"""Where the work is: FLOPs per layer counted from the PyTorch model, and ORT kernel time per operator kind.

Why both: the share of the matmul peak says *that* throughput is lost; setting each operator kind's share
of the kernel time against its share of the FLOPs says *where*.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ae_export.fastgraph import REWRITE_MARKS
from ae_export.specs import IMAGE_SAMPLE_SHAPE
from runtimes.sessions import open_session, session_options

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
OTHER = "elementwise/other"


def _node_kind(node_name: str, op: str) -> str:
    """The fast graph's rewritten transposed convolutions (ae_export.fastgraph) count as conv_transpose:
    their Convs, MatMuls and Transposes (by their names or those of the tensors they write) and Col2Ims."""
    rewritten = any(mark in node_name for mark in REWRITE_MARKS)
    if op == "Col2Im" or (rewritten and (op == "Transpose" or ORT_OP_KIND.get(op) in ("conv", "linear"))):
        return "conv_transpose"
    return ORT_OP_KIND.get(op, OTHER)


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.ConvTranspose2d):
        return "conv_transpose"
    return "conv" if isinstance(module, nn.Conv2d) else "linear"


def count_flops(model: nn.Module, image_shape: tuple[int, ...] = IMAGE_SAMPLE_SHAPE) -> dict[str, Any]:
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
            kinds[name] = _kind(module)

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
    onnx_path: Path,
    threads: int,
    batch: int,
    runs: int,
    flops: dict[str, Any],
    sample_shape: tuple[int, ...] = IMAGE_SAMPLE_SHAPE,
) -> list[dict[str, Any]]:
    """ONNX Runtime's kernel time per operator kind over `runs` calls at `batch`, beside its FLOP share.

    ORT's own profiler (kernel time of every node) grouped by operator kind shows which layers run far
    below the peak. The profile file is deleted after.
    """
    options = session_options(threads, spinning=True)
    with tempfile.TemporaryDirectory(prefix="ae-bench-profile-") as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session, _ = open_session(onnx_path, "cpu", options=options)
        x = np.random.default_rng(2).random((batch, *sample_shape), dtype=np.float32)
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
        kind = _node_kind(name, op_of[name])
        kind_us[kind] = kind_us.get(kind, 0.0) + sum(durations[-runs:]) / runs  # us per call
    total_us = sum(kind_us.values())
    rows = []
    for kind in (*FLOP_KINDS, OTHER):
        us = kind_us.get(kind, 0.0)
        kind_flops = flops["by_kind"].get(kind, 0) * batch
        rows.append(
            {
                "kind": kind,
                "ops": sorted({op for name, op in op_of.items() if _node_kind(name, op) == kind}),
                "ms_per_call": us / 1e3,
                "time_share": us / total_us if total_us else 0.0,
                "flop_share": kind_flops / (flops["total"] * batch),
                "gflops": kind_flops / (us * 1e3) if us else 0.0,
            }
        )
    return rows


def profile_notes(profile: list[dict[str, Any]], batch: int) -> list[str]:
    """The operator kind that takes the most time relative to its FLOPs: where the peak is lost."""
    worst = max(profile, key=lambda r: r["time_share"] - r["flop_share"])
    return [
        f"ORT at batch {batch}: {worst['kind']} ({', '.join(worst['ops']) or '-'}) takes "
        f"{100 * worst['time_share']:.0f}% of the kernel time for {100 * worst['flop_share']:.0f}% of "
        f"the FLOPs ({worst['gflops']:.1f} GFLOP/s)"
    ]
