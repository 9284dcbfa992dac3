"""Rewrite an exported graph's strided ConvTranspose nodes into ordinary Conv + Col2Im (the "fast" graph).

Why: ONNX Runtime's CPU ConvTranspose is a GEMM followed by a single-threaded col2im scatter; on this
project's decoder it took ~70% of the kernel time for ~37% of the FLOPs. An ordinary Conv runs through
ORT's NCHWc kernels (fused bias + ReLU, all intra-op threads), and `Col2Im` with block = stride is a
plain interleave. Imports onnx and numpy only (no torch), so the pass can run on any exported file.

Why each form is exact (the phase Conv, the overlap-add 1x1 Conv, and when a chain may share one
Col2Im): ae_export.tconv, which computes their weights.

For this project's decoder (ConvTranspose 32->16 on 3x3 -> 7x7, 16->8 -> 14x14, 8->1 -> 28x28, BN
already folded into the weights by the exporter's optimizer, ReLU between) the pass gives: Conv
(2x2 taps, 16*4 channels) + Col2Im (crop 8 -> 7) for the first layer, the second layer as a Conv on
the 7x7 grid (8*4 phase channels), and the last as a 1x1 Conv (32 -> 25 channels, bias on the 4x4
offset window) + Col2Im (block 5, stride 4) + the sigmoid. For the avx2 CPU target the first layer is
rewritten before this pass, as one MatMul per input cell (ae_export.entrygemm), and the chain starts at
the second.

Anything the pass does not handle (dynamic spatial size, groups, dilation, auto_pad, output_shape,
non-constant weights, opset < 18) raises UnsupportedGraphError naming the node: the pass never leaves
a half-rewritten or wrong graph. The batch axis is untouched (the reshapes copy it with 0).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ae_export.cpu import CPU_TARGETS, DENSE_ENTRY_TARGETS
from ae_export.entrygemm import CELLS_MARK, dense_entry
from ae_export.graphedit import (
    ELEMENTWISE,
    Emit,
    GraphWalk,
    drop_unused_and_check,
    static_shapes,
)
from ae_export.stackconv import STACK_MARK, stack_narrow_convs
from ae_export.tconv import (
    check_col2im_opset,
    overlap_form,
    phase_conv,
    read_conv_transpose,
)

# Names of the tensors the rewritten layers' Convs write ("<node>.phases...", "<node>.footprints"): ORT
# names fused nodes after their outputs, so profiles (bench.flops) can tell these Convs from the rest.
PHASES_MARK, FOOTPRINTS_MARK = ".phases", ".footprints"
REWRITE_MARKS = (PHASES_MARK, FOOTPRINTS_MARK, CELLS_MARK)


class _Emit(Emit):
    """`Emit` with the phase forms' two steps: a Conv, and Reshape + Col2Im back to an image."""

    channels = 0  # the last Conv's output channels

    def conv(self, x: str, out: str, weight: np.ndarray, bias: np.ndarray, form: str, pads: list[int]) -> str:
        """Conv writing `out` (named with a REWRITE_MARK: no longer what the exporter named it)."""
        w, b = self.const(f"{form}_weight", weight, True), self.const(f"{form}_bias", bias, True)
        self.channels = weight.shape[0]
        return self.node(
            "Conv",
            [x, w, b],
            out,
            f"{form}_conv",
            kernel_shape=list(weight.shape[2:]),
            pads=pads,
            strides=[1, 1],
        )

    def to_image(
        self,
        x: str,
        out: str,
        grid: tuple[int, int],
        image: tuple[int, int],
        block: tuple[int, int],
        strides: tuple[int, int],
        pads: list[int],
        kind: str,
    ) -> None:
        """(B, C*Bh*Bw, Gh, Gw) -> Reshape (B, C*Bh*Bw, Gh*Gw) -> Col2Im -> `out` (B, C, *image)."""
        # 0 copies the batch axis.
        shape = self.const("columns_shape", np.array([0, self.channels, grid[0] * grid[1]], np.int64))
        columns = self.node("Reshape", [x, shape], self.fresh(f"{self.stem}.columns"), "to_columns")
        self.col2im(columns, out, image, block, strides, pads, kind)


def _chains(
    graph: onnx.GraphProto, walk: GraphWalk
) -> list[list[tuple[onnx.NodeProto, list[onnx.NodeProto]]]]:
    """ConvTranspose chains: [(convT, elementwise nodes after it that lead to the next convT), ...]."""
    chains, seen = [], set()
    for node in graph.node:
        if node.op_type != "ConvTranspose" or id(node) in seen:
            continue
        chain = []
        current: onnx.NodeProto | None = node
        while current is not None:
            seen.add(id(current))
            between, nxt = walk.elementwise_run(current.output[0])
            if nxt is not None and nxt.op_type == "ConvTranspose":
                chain.append((current, between))
                current = nxt
            else:
                chain.append((current, []))
                current = None
        chains.append(chain)
    return chains


def rewrite_conv_transpose(
    model: onnx.ModelProto, merge: bool = True, overlap: bool = True
) -> onnx.ModelProto:
    """A copy of `model` with every ConvTranspose replaced by phase Conv(s) + Col2Im (see module doc).

    `merge=False` gives every layer its own Conv + Col2Im, `overlap=False` keeps a merged chain's last
    layer in the phase form (both kept for measurement). Raises UnsupportedGraphError, leaving `model`
    untouched, when any ConvTranspose cannot be rewritten exactly.
    """
    check_col2im_opset(model)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    shapes = static_shapes(model)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    new_inits: list[onnx.TensorProto] = []
    walk = GraphWalk(graph)
    fresh = walk.fresh

    for chain in _chains(graph, walk):  # read before any node is changed
        layers = [read_conv_transpose(node, inits, shapes) for node, _ in chain]
        phases, grid = (1, 1), layers[0].in_hw
        for index, (layer, (node, between)) in enumerate(zip(layers, chain, strict=True)):
            weight, bias, pads, grid_out = phase_conv(layer, phases, grid)
            blocks = (layer.strides[0] * phases[0], layer.strides[1] * phases[1])
            exact = all(g * b == o for g, b, o in zip(grid_out, blocks, layer.out_hw, strict=True))
            last = index == len(layers) - 1 or not merge or not exact
            emit = _Emit(fresh, new_inits, node.name or node.output[0], node.input[1])
            form = overlap_form(layer, phases, grid) if last and overlap and phases != (1, 1) else None
            if form is not None:
                cols = emit.conv(
                    node.input[0],
                    fresh(f"{emit.stem}{FOOTPRINTS_MARK}"),
                    form.weight,
                    form.bias,
                    "footprint",
                    [0] * 4,
                )
                summed = fresh(f"{emit.stem}.sum") if form.add_bias else node.output[0]
                # Overlapping blocks: Col2Im sums the footprints into the image and crops both ends.
                emit.to_image(
                    cols, summed, grid, layer.out_hw, form.block, form.strides, list(form.pads), "overlap_add"
                )
                if form.add_bias:
                    c_out = layer.weight.shape[1]
                    b_name = emit.const("bias", layer.bias.reshape(1, c_out, 1, 1))
                    emit.nodes.append(
                        helper.make_node(
                            "Add", [summed, b_name], [node.output[0]], name=fresh(f"{emit.stem}.add_bias")
                        )
                    )
                phases, grid = (1, 1), layer.out_hw
            else:
                conv_out = emit.conv(
                    node.input[0],
                    fresh(f"{emit.stem}{PHASES_MARK}"),
                    weight,
                    bias,
                    "phase",
                    pads,
                )
                if last:
                    # Non-overlapping blocks: interleave the phases, crop the end to out_hw.
                    crop = [g * b - o for g, b, o in zip(grid_out, blocks, layer.out_hw, strict=True)]
                    emit.to_image(
                        conv_out,
                        node.output[0],
                        grid_out,
                        layer.out_hw,
                        blocks,
                        blocks,
                        [0, 0, *crop],
                        "interleave",
                    )
                    phases, grid = (1, 1), layer.out_hw
                else:
                    phases, grid = blocks, grid_out
                    # The elementwise ops now act on the phase layout; the next ConvTranspose reads it.
                    chain[index + 1][0].input[0] = walk.relabel(
                        between, conv_out, f"{emit.stem}{PHASES_MARK}"
                    )
            replaced[id(node)] = emit.nodes
    if not replaced:
        return model
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        new_nodes.extend(replaced.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(_hoist_activations(new_nodes, {o.name for o in graph.output}))
    graph.initializer.extend(new_inits)  # the ConvTranspose weights, now unread, are dropped below
    return drop_unused_and_check(model)


# Pointwise ops of one input that may move from after a Col2Im to before it (see _hoist_activations).
# (ELEMENTWISE less Clip, whose bounds are extra inputs.)
HOISTABLE = ELEMENTWISE - {"Clip"}


def _hoist_activations(nodes: list[onnx.NodeProto], graph_outputs: set[str]) -> list[onnx.NodeProto]:
    """Move pointwise activations that follow a rewritten Col2Im to before its Reshape, onto the Conv.

    Why exact: with block = stride the Col2Im copies every element to one place and crops the end, so
    it is a permutation followed by a crop; a pointwise f commutes with both, f(Col2Im(z)) = Col2Im(f(z)),
    element for element. Why faster: next to the Conv, ONNX Runtime fuses the activation into it (one
    pass fewer over the tensor, one node fewer per run). The decoder's ReLU after its first layer moves
    (and its sigmoid, where the last layer keeps the phase form). An overlap-add Col2Im sums, so nothing
    moves across it: only Col2Ims named ".interleave" are considered.
    """
    producer = {out: node for node in nodes for out in node.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            users.setdefault(name, []).append(node)
    order = list(nodes)
    taken = {name for node in nodes for name in (*node.input, *node.output)}
    for col2im in [n for n in nodes if n.op_type == "Col2Im" and n.name.endswith(".interleave")]:
        while True:
            after = users.get(col2im.output[0], [])
            act = after[0] if len(after) == 1 and col2im.output[0] not in graph_outputs else None
            if act is None or act.op_type not in HOISTABLE or len(act.input) != 1:
                break
            reshape = producer[col2im.input[0]]
            conv_out = reshape.input[0]
            hoisted, result = f"{conv_out}_{act.op_type.lower()}", act.output[0]
            while hoisted in taken:
                hoisted += "_"
            taken.add(hoisted)
            # conv -> act -> reshape -> col2im; the Col2Im now writes the activation's old output name.
            act.input[0], act.output[0] = conv_out, hoisted
            reshape.input[0] = hoisted
            users[col2im.output[0]] = []
            col2im.output[0] = result
            users[result] = [u for u in users.get(result, []) if u is not act]
            order.remove(act)
            order.insert(order.index(reshape), act)
    return order


def fast_graph(model: onnx.ModelProto, target: str) -> onnx.ModelProto:
    """The "fast" graph for a CPU target (ae_export.cpu): a Linear-fed first ConvTranspose as one MatMul
    per input cell where the target gains from it (ae_export.entrygemm), every other ConvTranspose
    rewritten (this module), then strided Convs narrower than the target's channel block stacked by
    phase (ae_export.stackconv). Raises UnsupportedGraphError like rewrite_conv_transpose."""
    if target in DENSE_ENTRY_TARGETS:
        model = dense_entry(model)
    return stack_narrow_convs(rewrite_conv_transpose(model), CPU_TARGETS[target])


def graph_kind(model: onnx.ModelProto) -> str:
    """ "fast" when either pass changed the graph (a Col2Im, a stacked Conv), else "portable"."""
    fast = any(n.op_type == "Col2Im" or n.name.endswith(STACK_MARK) for n in model.graph.node)
    return "fast" if fast else "portable"
