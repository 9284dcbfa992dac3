"""Rewrite an exported graph's strided ConvTranspose nodes into ordinary Conv + Col2Im (the "fast" graph).

Why: ONNX Runtime's CPU ConvTranspose is a GEMM followed by a single-threaded col2im scatter; on this
project's decoder it took ~70% of the kernel time for ~37% of the FLOPs. An ordinary Conv runs through
ORT's NCHWc kernels (fused bias + ReLU, all intra-op threads), and `Col2Im` with block = stride is a
plain interleave. Imports onnx and numpy only (no torch), so the pass can run on any exported file.

Equivalence (one spatial axis; the 2-D kernel is the outer product of the two axes' tap tables):
a ConvTranspose with stride S, kernel K, pad p (begin) writes
    y[n] = b + sum over (i, k) with S*i + k - p = n of  x[i] * w[k]          0 <= n < out
where out = S*(in - 1) + K - p_begin - p_end + output_padding (taps landing outside [0, out) are
dropped, positions no tap reaches hold b). Group the outputs by phase: n = S*j + r, 0 <= r < S. Then
S*(j - i) = k - p - r, so an output of phase r only ever reads taps k = r + p (mod S), from inputs
i = j - (k - p - r)/S: every phase is an ordinary (correlation) convolution over the grid index j
with a small kernel, and all S phases together are ONE Conv whose output channels are
(out_channel, r). A tap (r, k) that does not exist is a zero weight. Interleaving the phases
(n = S*j + r) and cropping to [0, out) is exactly `Col2Im` with block_shape = strides = S and end pads
= S*J - out (non-overlapping blocks are copied, nothing is summed). The bias is added to every phase,
as ConvTranspose adds it to every output position.

The same argument applies when the input is itself held as P phases on a grid (x[P*g + q] = X[q, g]):
n = S*P*g + R, i = P*g' + q gives g' - g = -(S*q + k - p - R)/(S*P) whenever that is an integer, so a
ConvTranspose that follows another one (with only elementwise ops such as ReLU between them, which act
on the phase layout unchanged) can run on the coarse grid too, and a chain shares one final Col2Im.
That is legal only when the previous output tiles its grid exactly (out == S*P*G: no cropped padding
positions, which would hold bias instead of the zeros the next layer must read); otherwise the chain
is cut there and the earlier part gets its own Col2Im.

The last layer of a merged chain reads P > 1 phases, and its phase Conv is then mostly zero taps (86% on
this decoder's last layer: each of 16 output phases reads 2x2 cells of 32 phase channels, while a
transposed 3x3 kernel gives each output pixel 1 to 4 taps). It takes the overlap-add form instead,
Col2Im's own meaning: the inputs of one grid cell, x[P*g + q], reach only the outputs n = S*P*g + (S*q +
k) - p, a footprint of E = S*(P-1) + K positions starting at S*P*g - p. So a 1x1 Conv computes, per
cell, every product x[P*g + q] * w[k] summed over the input channels and phases q that land on footprint
offset o = S*q + k (E*E*C_out channels; a weight is zero where phase q has no tap k reaching offset o:
64% of them on this decoder's last layer, 86% in its phase form), and `Col2Im` with block E, stride S*P
and begin pad p adds the overlapping footprints into the image: every (input, tap) product once, as the
ConvTranspose sums them. The bias rides on the Conv where one window of S*P offsets per axis covers
every output exactly once (then each output receives it once), else a separate Add follows; activations
stay after the Col2Im (it sums, so they no longer commute with it). This needs every output position
inside some footprint's reach or beyond it only by output_padding already cropped (end pad >=
output_padding); otherwise the layer keeps its phase Conv. The first layer of a chain (P = 1) keeps the
phase form: measured, its overlap form was slower (a 3x3 block Col2Im over 2.25x the elements, and bias
+ ReLU as two more nodes).

For this project's decoder (ConvTranspose 32->16 on 3x3 -> 7x7, 16->8 -> 14x14, 8->1 -> 28x28, BN
already folded into the weights by the exporter's optimizer, ReLU between) the pass gives: Conv
(2x2 taps, 16*4 channels) + Col2Im (crop 8 -> 7) for the first layer, the second layer as a Conv on
the 7x7 grid (8*4 phase channels), and the last as a 1x1 Conv (32 -> 25 channels, bias on the 4x4
offset window) + Col2Im (block 5, stride 4) + the sigmoid.

Anything the pass does not handle (dynamic spatial size, groups, dilation, auto_pad, output_shape,
non-constant weights, opset < 18) raises UnsupportedGraphError naming the node: the pass never leaves
a half-rewritten or wrong graph. The batch axis is untouched (the reshapes copy it with 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ae_export.graphedit import (
    ELEMENTWISE,
    GraphWalk,
    drop_unused_and_check,
    node_attr,
    rewritten_weight,
    static_shapes,
)
from ae_export.stackconv import STACK_MARK, stack_narrow_convs

MIN_OPSET = 18  # Col2Im
# Names of the tensors the rewritten layers' Convs write ("<node>.phases...", "<node>.footprints"): ORT
# names fused nodes after their outputs, so profiles (bench.flops) can tell these Convs from the rest.
PHASES_MARK, FOOTPRINTS_MARK = ".phases", ".footprints"
REWRITE_MARKS = (PHASES_MARK, FOOTPRINTS_MARK)


class UnsupportedGraphError(ValueError):
    """The graph holds a ConvTranspose the pass cannot rewrite exactly; the message names it and why."""


@dataclass
class _Layer:
    """One ConvTranspose node with everything the rewrite needs, read from the graph."""

    node: onnx.NodeProto
    weight: np.ndarray  # (C_in, C_out, Kh, Kw)
    bias: np.ndarray  # (C_out,)
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # begin_h, begin_w, end_h, end_w
    output_padding: tuple[int, int]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        kh, kw = self.weight.shape[2:]
        self.out_hw = tuple(  # type: ignore[assignment]
            s * (n - 1) + k - pb - pe + op
            for s, n, k, pb, pe, op in zip(
                self.strides,
                self.in_hw,
                (kh, kw),
                self.pads[:2],
                self.pads[2:],
                self.output_padding,
                strict=True,
            )
        )


def _taps(stride: int, kernel: int, pad: int, phases_in: int) -> list[tuple[int, int, int, int]]:
    """(R, q, k, delta) for one axis: output phase R of S*P reads tap k of input phase q at grid g+delta."""
    block = stride * phases_in
    taps = []
    for r in range(block):
        for q in range(phases_in):
            for k in range(kernel):
                num = stride * q + k - pad - r
                if num % block == 0:
                    taps.append((r, q, k, -num // block))
    return taps


def _phase_conv(
    layer: _Layer, phases_in: tuple[int, int], grid_in: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, list[int], tuple[int, int]]:
    """Weights (C_out*Bh*Bw, C_in*Ph*Pw, Th, Tw), bias, Conv pads and output grid of one phase conv."""
    c_in, c_out, kh, kw = layer.weight.shape
    blocks = (layer.strides[0] * phases_in[0], layer.strides[1] * phases_in[1])
    grid_out = tuple(-(-o // b) for o, b in zip(layer.out_hw, blocks, strict=True))
    axes = []
    for ax, kernel in enumerate((kh, kw)):
        taps = _taps(layer.strides[ax], kernel, layer.pads[ax], phases_in[ax])
        deltas = [t[3] for t in taps] or [0]
        # Conv pads must be >= 0: widen the tap window with zero taps where needed.
        lo = min(min(deltas), 0)
        hi = max(max(deltas), grid_in[ax] - grid_out[ax])
        axes.append((taps, lo, hi))
    (taps_h, lo_h, hi_h), (taps_w, lo_w, hi_w) = axes
    bh, bw = blocks
    ph, pw = phases_in
    kernel = np.zeros((c_out, bh, bw, c_in, ph, pw, hi_h - lo_h + 1, hi_w - lo_w + 1), dtype=np.float64)
    w = layer.weight.astype(np.float64)
    for rh, qh, th, dh in taps_h:
        for rw, qw, tw, dw in taps_w:
            kernel[:, rh, rw, :, qh, qw, dh - lo_h, dw - lo_w] = w[:, :, th, tw].T
    kernel = kernel.reshape(c_out * bh * bw, c_in * ph * pw, hi_h - lo_h + 1, hi_w - lo_w + 1)
    bias = np.repeat(layer.bias.astype(np.float64), bh * bw)
    pads = [-lo_h, -lo_w, grid_out[0] - grid_in[0] + hi_h, grid_out[1] - grid_in[1] + hi_w]
    return kernel.astype(np.float32), bias.astype(np.float32), pads, grid_out  # type: ignore[return-value]


@dataclass(frozen=True)
class _Overlap:
    """The overlap-add form of one layer: 1x1 Conv weights and bias, and the Col2Im that sums them."""

    weight: np.ndarray  # (C_out*Eh*Ew, C_in*Ph*Pw, 1, 1)
    bias: np.ndarray  # (C_out*Eh*Ew,): the layer's bias on one window of offsets per axis, else zeros
    add_bias: bool  # no window covers every output once: a separate Add after the Col2Im carries it
    block: tuple[int, int]  # footprint E per axis
    strides: tuple[int, int]  # S*P per axis
    pads: tuple[int, int, int, int]  # Col2Im begin_h, begin_w, end_h, end_w


def _overlap_conv(layer: _Layer, phases_in: tuple[int, int], grid_in: tuple[int, int]) -> _Overlap | None:
    """The layer as 1x1 Conv + overlapping Col2Im (see module doc), or None where that is not exact."""
    c_in, c_out, kh, kw = layer.weight.shape
    spans, strides, pads_end, windows = [], [], [], []
    for ax, kernel in enumerate((kh, kw)):
        s, p, g = layer.strides[ax], phases_in[ax], grid_in[ax]
        span, block, pad = s * (p - 1) + kernel, s * p, layer.pads[ax]
        # Col2Im must find exactly g blocks: (out + pad + end - span) / block + 1 == g.
        end = (g - 1) * block + span - pad - layer.out_hw[ax]
        if end < 0:
            return None  # outputs beyond every footprint (output_padding): they would need bias only
        spans.append(span)
        strides.append(block)
        pads_end.append(end)
        # Offsets [c, c + block) cover each output once iff every output's cell exists for them.
        lo, hi = max(0, span - block - end), min(pad, span - block)
        windows.append(lo if lo <= hi else None)
    (eh, ew), (ph, pw) = spans, phases_in
    kernel = np.zeros((c_out, eh, ew, c_in, ph, pw), dtype=np.float64)
    w = layer.weight.astype(np.float64)
    for qh in range(ph):
        for th in range(kh):
            for qw in range(pw):
                for tw in range(kw):
                    oh, ow = layer.strides[0] * qh + th, layer.strides[1] * qw + tw
                    kernel[:, oh, ow, :, qh, qw] = w[:, :, th, tw].T
    on_window = np.zeros((c_out, eh, ew), dtype=np.float32)
    if None not in windows:
        (ch, cw), (bh, bw) = windows, strides
        on_window[:, ch : ch + bh, cw : cw + bw] = layer.bias[:, None, None]
    return _Overlap(
        weight=kernel.reshape(c_out * eh * ew, c_in * ph * pw, 1, 1).astype(np.float32),
        bias=on_window.reshape(-1),
        add_bias=None in windows,
        block=(eh, ew),
        strides=(strides[0], strides[1]),
        pads=(layer.pads[0], layer.pads[1], pads_end[0], pads_end[1]),
    )


class _Emit:
    """Adds nodes' initializers to one list; nodes are named after the replaced node (`stem`), new weights
    after the replaced weight (`graphedit.rewritten_weight`), all fresh and unique."""

    def __init__(
        self, fresh: Callable[[str], str], inits: list[onnx.TensorProto], stem: str, weight: str
    ) -> None:
        self.fresh, self.inits, self.stem, self.weight = fresh, inits, stem, weight
        self.nodes: list[onnx.NodeProto] = []
        self.channels = 0  # the last Conv's output channels

    def const(self, key: str, value: np.ndarray, layer: bool = False) -> str:
        """A new initializer named after the node, or (`layer`) after the replaced weight's layer."""
        name = self.fresh(rewritten_weight(self.weight, key) if layer else f"{self.stem}.{key}")
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def conv(self, x: str, out: str, weight: np.ndarray, bias: np.ndarray, form: str, pads: list[int]) -> str:
        """Conv writing `out` (named with a REWRITE_MARK: no longer what the exporter named it)."""
        w, b = self.const(f"{form}_weight", weight, True), self.const(f"{form}_bias", bias, True)
        self.channels = weight.shape[0]
        self.nodes += [
            helper.make_node(
                "Conv",
                [x, w, b],
                [out],
                name=self.fresh(f"{self.stem}.{form}_conv"),
                kernel_shape=list(weight.shape[2:]),
                pads=pads,
                strides=[1, 1],
            )
        ]
        return out

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
        columns = self.fresh(f"{self.stem}.columns")
        image_name = self.const("image_shape", np.array(image, np.int64))
        block_name = self.const("block_shape", np.array(block, np.int64))
        self.nodes += [
            helper.make_node("Reshape", [x, shape], [columns], name=self.fresh(f"{self.stem}.to_columns")),
            helper.make_node(
                "Col2Im",
                [columns, image_name, block_name],
                [out],
                name=self.fresh(f"{self.stem}.{kind}"),
                strides=list(strides),
                pads=pads,
            ),
        ]


def _read_layer(
    node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], shapes: dict[str, list[int | str]]
) -> _Layer:
    def refuse(reason: str) -> UnsupportedGraphError:
        return UnsupportedGraphError(f"ConvTranspose {node.name or node.output[0]!r}: {reason}")

    if node.input[1] not in inits or (len(node.input) > 2 and node.input[2] and node.input[2] not in inits):
        raise refuse("weight and bias must be initializers (constant)")
    weight = numpy_helper.to_array(inits[node.input[1]])
    if weight.ndim != 4 or weight.dtype != np.float32:
        raise refuse(f"only 2-D float32 kernels are handled; weight is {weight.dtype} {weight.shape}")
    c_out = weight.shape[1]
    bias = (
        numpy_helper.to_array(inits[node.input[2]])
        if len(node.input) > 2 and node.input[2]
        else np.zeros(c_out, np.float32)
    )
    if node_attr(node, "group", 1) != 1:
        raise refuse("group != 1 is not handled")
    if list(node_attr(node, "dilations", [1, 1])) != [1, 1]:  # type: ignore[call-overload]
        raise refuse("dilation != 1 is not handled")
    auto_pad = node_attr(node, "auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", "NOTSET"):
        raise refuse(f"auto_pad={auto_pad!r} is not handled (explicit pads only)")
    if node_attr(node, "output_shape", None) is not None:
        raise refuse("the output_shape attribute is not handled (explicit pads only)")
    kernel_shape = list(node_attr(node, "kernel_shape", list(weight.shape[2:])))  # type: ignore[call-overload]
    if kernel_shape != list(weight.shape[2:]):
        raise refuse(f"kernel_shape {kernel_shape} disagrees with the weight {weight.shape}")
    shape = shapes.get(node.input[0])
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise refuse(f"input needs a static (B, C, H, W) shape from shape inference; got {shape}")
    if shape[1] != weight.shape[0]:
        raise refuse(f"input has {shape[1]} channels, the weight expects {weight.shape[0]}")
    strides = tuple(node_attr(node, "strides", [1, 1]))  # type: ignore[call-overload]
    pads = tuple(node_attr(node, "pads", [0, 0, 0, 0]))  # type: ignore[call-overload]
    output_padding = tuple(node_attr(node, "output_padding", [0, 0]))  # type: ignore[call-overload]
    if min(strides) < 1 or min(pads) < 0 or min(output_padding) < 0:
        raise refuse(f"strides {strides}, pads {pads}, output_padding {output_padding} are not handled")
    layer = _Layer(
        node,
        weight,
        bias,
        strides,
        pads,
        output_padding,
        (int(shape[2]), int(shape[3])),  # type: ignore[arg-type]
    )
    if min(layer.out_hw) < 1:
        raise refuse(f"output size {layer.out_hw} is empty")
    return layer


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
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise UnsupportedGraphError(f"the graph's opset {opset} has no Col2Im (needs >= {MIN_OPSET})")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    shapes = static_shapes(model)
    replaced: dict[int, list[onnx.NodeProto]] = {}
    new_inits: list[onnx.TensorProto] = []
    walk = GraphWalk(graph)
    fresh = walk.fresh

    for chain in _chains(graph, walk):  # read before any node is changed
        layers = [_read_layer(node, inits, shapes) for node, _ in chain]
        phases, grid = (1, 1), layers[0].in_hw
        for index, (layer, (node, between)) in enumerate(zip(layers, chain, strict=True)):
            weight, bias, pads, grid_out = _phase_conv(layer, phases, grid)
            blocks = (layer.strides[0] * phases[0], layer.strides[1] * phases[1])
            exact = all(g * b == o for g, b, o in zip(grid_out, blocks, layer.out_hw, strict=True))
            last = index == len(layers) - 1 or not merge or not exact
            emit = _Emit(fresh, new_inits, node.name or node.output[0], node.input[1])
            form = _overlap_conv(layer, phases, grid) if last and overlap and phases != (1, 1) else None
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


def fast_graph(model: onnx.ModelProto, block: int) -> onnx.ModelProto:
    """The "fast" graph: transposed convolutions rewritten (this module), then strided Convs narrower than
    the target CPU's channel `block` stacked by phase (ae_export.stackconv). Raises UnsupportedGraphError
    like rewrite_conv_transpose."""
    return stack_narrow_convs(rewrite_conv_transpose(model), block)


def graph_kind(model: onnx.ModelProto) -> str:
    """ "fast" when either pass changed the graph (a Col2Im, a stacked Conv), else "portable"."""
    fast = any(n.op_type == "Col2Im" or n.name.endswith(STACK_MARK) for n in model.graph.node)
    return "fast" if fast else "portable"
