"""Flush subnormal float32 weights to zero in an exported graph: exact in effect, and up to 40x faster.

Why: weight decay drives the weights of dead units towards zero, and after a few epochs hundreds of them
sit in float32's subnormal range (|w| < 1.18e-38; the lecture model's encoder has ~600). x86 CPUs
compute with subnormal operands in microcode, dozens of times slower than with normal ones: measured on
an AVX-512 Xeon, ONNX Runtime's Gemm for the encoder's Linear(288, 128) at batch 256 took 5.1 ms with the
trained weights and 0.11 ms with random ones of the same shape. PyTorch hides this (it sets
flush-to-zero for its own kernels); ONNX Runtime and other consumers do not by default, so the exported
file must not carry subnormals.

Setting them to zero changes each product by less than 1.2e-38 times an activation of order 1, which is
below float32's resolution of any output in [0, 1]: parity against PyTorch is unchanged (and checked).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

SMALLEST_NORMAL = np.finfo(np.float32).tiny  # 1.1754944e-38


def flush_subnormals(proto: onnx.ModelProto) -> int:
    """Zero every subnormal value of the float32 initializers, in place; return how many were zeroed."""
    flushed = 0
    for index, init in enumerate(proto.graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        subnormal = (values != 0) & (np.abs(values) < SMALLEST_NORMAL)
        count = int(subnormal.sum())
        if count:
            values = np.where(subnormal, np.float32(0), values).astype(np.float32)
            proto.graph.initializer[index].CopyFrom(numpy_helper.from_array(values, init.name))
            flushed += count
    return flushed
