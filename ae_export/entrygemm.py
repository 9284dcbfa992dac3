"""The decoder's entry layer: a ConvTranspose fed by a Linear layer, as one MatMul per input cell.

Why: the fast graph's phase form (ae_export.fastgraph) computes the decoder's first layer (32 -> 16
channels, 3x3 -> 7x7) as a 2x2-tap Conv with 64 output channels over a zero-padded 4x4 grid: 3.2x the
layer's multiply-adds, most of them on zero taps and padding. Its input, though, is the Linear layer's
output reshaped to (B, 32, 3, 3), and the Linear layer can write its outputs in any order. So this
pass makes it write them cell-major, (B, 9 cells, 32 channels), and computes the layer as:

    Reshape (B, H*W, C_in) -> MatMul (C_in, C_out*Kh*Kw) -> Transpose (B, C_out*Kh*Kw, H*W)
      -> Col2Im (overlap-add into the image) -> depthwise 1x1 Conv (bias; ORT fuses the ReLU after it)

Exactly the layer's multiply-adds, in one large GEMM (B*9 rows). Measured on a 2-core AVX2 EPYC
(ONNX Runtime 1.32, the lecture model, rounds in shuffled order): a bare single-threaded session
1.055x at batch 256, 1.053x at 64, 1.00x at batch 1; `Denoiser` defaults 1.048x at 256, 1.03x at 64,
1.00x at batch 1. A one-thread profile at batch 256: the layer's Conv, reorder and Col2Im took ~950 us,
MatMul + Transpose + Col2Im + bias Conv ~750 us. The bias as an Add and a Relu instead of the
depthwise Conv (which ORT fuses with the ReLU) gave less (1.039x at 256, 0.97x at batch 1); the MatMul
with the weights on the left, (C_out*Kh*Kw, C_in) x (B, C_in, H*W), which needs no Transpose but
runs B small GEMMs, was slower than the phase form (0.95x). Applied for the `avx2` CPU target only
(ae_export.cpu): on AVX-512 a similar overlap-add first layer (1x1 Conv + Col2Im + bias and ReLU
nodes) measured 0.98x, and ARM is not measured.

Equivalence: ConvTranspose writes y[o, n] = b[o] + sum over (c, i, k) with S*i + k - p = n of
x[c, i] w[c, o, k] (2-D indices). Group the sum by input cell i: cell i adds Z[i, (o, k)] = sum_c
x[c, i] w[c, o, k] to output n = S*i + k - p. Z is one product (H*W, C_in) x (C_in, C_out*Kh*Kw) per
image, and Col2Im with block K, stride S and begin pad p adds block i's values at exactly those
positions (`ae_export.tconv.overlap_form` with one input phase; its end pads crop what lies beyond the
output). The bias is added once per output after the sum (weight 1: x*1 + b is the same single rounding
as x + b). Reordering the Linear layer's output units (rows of its weight, entries of its bias) changes
no sum, and the elementwise ops between it and the Reshape act on each value alone, so they commute with
the reorder. Only the order of float additions differs from ConvTranspose (~1e-7).

The pass applies where a ConvTranspose's input is a Reshape to static (B, C, H, W) of a 2-D Gemm output
(weights and bias constant) through single-consumer elementwise ops, and where its overlap-add form is
exact; it leaves every other ConvTranspose to the phase pass. Imports onnx and numpy only.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ae_export.graphedit import (
    ELEMENTWISE,
    Emit,
    GraphWalk,
    drop_unused_and_check,
    node_attr,
    rewritten_weight,
    static_shapes,
)
from ae_export.tconv import (
    ConvTransposeLayer,
    OverlapForm,
    check_col2im_opset,
    overlap_form,
    read_conv_transpose,
)

# In the names of the MatMul and Transpose nodes and of the tensors the bias Conv and its activation write
# (ORT names fused nodes after their outputs): profiles (bench.flops) count them as the transposed
# convolution's, not as a Linear layer's or layout work.
CELLS_MARK = ".cells"


def _feeding_gemm(
    convt: onnx.NodeProto,
    producer: dict[str, onnx.NodeProto],
    walk: GraphWalk,
    inits: dict[str, onnx.TensorProto],
) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """(Gemm, Reshape) where `convt` reads Reshape(elementwise*(Gemm)), each the only reader of its
    input and the Gemm's weight and bias constant; else None."""
    reshape = producer.get(convt.input[0])
    if reshape is None or reshape.op_type != "Reshape" or walk.single_next(reshape.output[0]) is not convt:
        return None
    node = producer.get(reshape.input[0])
    while node is not None and node.op_type in ELEMENTWISE:
        if walk.single_next(node.output[0]) is None:
            return None
        node = producer.get(node.input[0])
    if node is None or node.op_type != "Gemm" or walk.single_next(node.output[0]) is None:
        return None
    constant = [name for name in node.input[1:] if name]
    return (node, reshape) if all(name in inits for name in constant) else None


def _cell_major(
    gemm: onnx.NodeProto, inits: dict[str, onnx.TensorProto], channels: int, cells: int
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The Gemm's weight and bias with its output units reordered from (channel, cell) to (cell,
    channel); None where its weight or bias does not have that many units."""
    units = channels * cells
    order = np.arange(units).reshape(channels, cells).T.reshape(-1)  # new unit j is old unit order[j]
    weight = numpy_helper.to_array(inits[gemm.input[1]])
    trans_b = bool(node_attr(gemm, "transB", 0))
    if weight.ndim != 2 or weight.shape[0 if trans_b else 1] != units:
        return None
    weight = weight[order] if trans_b else weight[:, order]
    if len(gemm.input) < 3 or not gemm.input[2]:
        return weight, None
    bias = numpy_helper.to_array(inits[gemm.input[2]])
    if bias.size == 1:  # one value for every unit: no order to change
        return weight, bias
    if bias.size != units or bias.shape[-1] != units:
        return None
    return weight, bias[..., order]


def _emit_layer(
    emit: Emit, walk: GraphWalk, convt: onnx.NodeProto, x: str, layer: ConvTransposeLayer, form: OverlapForm
) -> None:
    """(B, C_in*H*W) cell-major `x` -> the layer's output, named as the ConvTranspose's (module doc)."""
    c_in, c_out = layer.weight.shape[:2]
    cells = layer.in_hw[0] * layer.in_hw[1]
    stem = emit.stem
    shape = emit.const("cells_shape", np.array([0, cells, c_in], np.int64))  # 0: the batch
    x = emit.node("Reshape", [x, shape], walk.fresh(f"{stem}.cells_in"), "to_cells")
    # (B, H*W, C_in) x (C_in, C_out*Kh*Kw) -> (B, H*W, C_out*Kh*Kw) -> Col2Im's (B, C_out*Kh*Kw, H*W).
    matrix = emit.const("cell_weight", form.weight[:, :, 0, 0].T.copy(), layer=True)
    y = emit.node("MatMul", [x, matrix], walk.fresh(f"{stem}{CELLS_MARK}"), "cells_matmul")
    cols = emit.node("Transpose", [y], walk.fresh(f"{stem}.columns"), "cells_to_columns", perm=[0, 2, 1])
    total = walk.fresh(f"{stem}.sum")
    emit.col2im(cols, total, layer.out_hw, form.block, form.strides, list(form.pads), "overlap_add")
    # The bias once per output, after the sum: a depthwise 1x1 Conv of weight 1, which ORT fuses with a
    # following activation. Its output takes the mark, and so do the activations after it (which ORT then
    # names the fused node after), where a single next node reads them.
    original = convt.output[0]
    between, nxt = walk.elementwise_run(original)
    out = original
    if between and nxt is not None:
        out = walk.fresh(f"{stem}{CELLS_MARK}_biased")
        nxt.input[0] = walk.relabel(between, out, f"{stem}{CELLS_MARK}")
    elif not between and original not in walk.outputs:  # no activation: the readers take the mark
        out = walk.fresh(f"{stem}{CELLS_MARK}_biased")
        for reader in walk.consumers.get(original, []):
            reader.input[:] = [out if name == original else name for name in reader.input]
    ones = emit.const("ones_weight", np.ones((c_out, 1, 1, 1), np.float32), layer=True)
    bias = emit.const("cell_bias", layer.bias.astype(np.float32), layer=True)
    emit.node("Conv", [total, ones, bias], out, "cells_bias_conv", group=c_out, kernel_shape=[1, 1])


def dense_entry(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` where each ConvTranspose fed by a Linear layer runs as MatMul + Col2Im (module
    doc); other ConvTransposes are left as they are. Raises UnsupportedGraphError (from reading the
    layer) where such a ConvTranspose cannot be rewritten exactly by any form."""
    check_col2im_opset(model)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    shapes = static_shapes(model)
    walk = GraphWalk(graph)
    producer = {out: node for node in graph.node for out in node.output}
    new_inits: list[onnx.TensorProto] = []
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for convt in [n for n in graph.node if n.op_type == "ConvTranspose"]:
        found = _feeding_gemm(convt, producer, walk, inits)
        if found is None:
            continue
        gemm, reshape = found
        layer = read_conv_transpose(convt, inits, shapes)
        c_in, cells = layer.weight.shape[0], layer.in_hw[0] * layer.in_hw[1]
        gemm_shape = shapes.get(gemm.output[0])
        if gemm_shape is None or len(gemm_shape) != 2 or gemm_shape[1] != c_in * cells:
            continue
        permuted = _cell_major(gemm, inits, c_in, cells)
        form = overlap_form(layer, (1, 1), layer.in_hw)  # one input phase: each cell's own footprint
        if permuted is None or form is None:
            continue
        emit = Emit(walk.fresh, new_inits, convt.name or convt.output[0], convt.input[1])
        linear = gemm.input[1]  # its layer's int8 key stays the same (ae_export.variants.layer_key)
        gemm.input[1] = emit.add(rewritten_weight(linear, "permuted_weight"), permuted[0])
        if permuted[1] is not None:
            gemm.input[2] = emit.add(rewritten_weight(linear, "permuted_bias"), permuted[1])
        _emit_layer(emit, walk, convt, reshape.input[0], layer, form)
        replaced[id(convt)], replaced[id(reshape)] = emit.nodes, []
    if not replaced:
        return model
    nodes = [new for node in graph.node for new in replaced.get(id(node), [node])]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    return drop_unused_and_check(model)
