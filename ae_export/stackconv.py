"""Stack a narrow strided Conv's output by phase, so the next strided Conv runs on its coarse grid.

Why: ONNX Runtime's fast CPU convolutions (NCHWc) hold channels in blocks of 16 on AVX-512. The
encoder's first convolution has 8 output channels, so ORT converts its output back to plain NCHW
(a single-threaded reorder that took as long as the convolution itself) and the next convolution
takes the slower plain-input path. Computing the same values as 4x the channels on a 2x coarser
grid keeps both convolutions in blocks of 16 with no reorder between them: on the lecture encoder,
one thread, batch 256, 989 -> 796 us for the three convolutions (1.24x), 1.09x on the whole
denoiser through `Denoiser` (same process, alternating rounds; the README has the figures).
Imports onnx and numpy only, like the ConvTranspose rewrite it runs beside (ae_export.fastgraph).

Equivalence (one spatial axis; 2-D is the product of the axes). Conv A (stride s, kernel K, begin
pad p) computes a[n] = b + sum_k x[s*n - p + k] * w[k]. Group its outputs by phase modulo P,
n = P*g + r: a[P*g + r] = b + sum_k x[s*P*g - p + (s*r + k)] * w[k], which is ONE Conv over g with
stride s*P, begin pad p and kernel s*(P - 1) + K whose output channel (c, r) holds w[c] at taps
s*r .. s*r + K - 1 and zeros elsewhere. Conv B (stride P, kernel L, begin pad q) reads
a[P*m - q + l] = A[c, r, g] with g = m + floor((l - q) / P), r = (l - q) mod P: on the coarse grid
it is a stride-1 Conv whose tap t = floor((l - q) / P) reads channel (c, r); every (l) lands on one
(t, r), so no value is summed twice. Elementwise ops between A and B (ReLU after a folded batch
norm) act on each value alone and give the same result in the stacked layout. B's zero padding of
a (indices < 0 or >= N) is the coarse Conv's zero padding only when A's output tiles the grid
exactly, N == P*G; the pass requires that. Nothing is approximated: the sums hold the same
products (the added ones are exact zeros), so the result differs from the original by rounding.

Where it applies: a Conv A whose output channels are fewer than `block` (the target CPU's NCHWc
block, ae_export.cpu.CPU_TARGETS: 16 on AVX-512; 8 on AVX2, where this model's 8-channel first Conv
needs no reorder and stacking measured 1.08x slower; 0, no pass, where ORT has no blocked layout) and
whose output feeds, through elementwise ops only, one Conv B with stride >= 2 on both axes. Anything
else (dynamic sizes, groups, dilation, auto_pad, non-constant weights, an output that does not tile)
is left as it is: the pass is an optimization of a graph that is already right, so it skips what it
cannot prove.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ae_export.graphedit import GraphWalk, drop_unused_and_check, node_attr, rewritten_weight, static_shapes

# Node names of the stacked convolutions end with this (profilers and graph_kind can find them).
STACK_MARK = ".stacked_conv"


@dataclass(frozen=True)
class _Conv:
    """One plain 2-D Conv read from the graph: (C_out, C_in, Kh, Kw) weight and per-axis geometry."""

    node: onnx.NodeProto
    weight: np.ndarray
    bias: np.ndarray
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # begin_h, begin_w, end_h, end_w
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]


def _read_conv(
    node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], shapes: dict[str, list[int | str]]
) -> _Conv | None:
    """The Conv's geometry, or None when it is not a plain, constant, statically shaped 2-D Conv."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return None
    names = [n for n in node.input[1:] if n]
    if not all(n in inits for n in names):
        return None
    weight = numpy_helper.to_array(inits[node.input[1]])
    if weight.ndim != 4 or weight.dtype != np.float32:
        return None
    bias = numpy_helper.to_array(inits[names[1]]) if len(names) > 1 else np.zeros(weight.shape[0], np.float32)
    if node_attr(node, "group", 1) != 1 or list(node_attr(node, "dilations", [1, 1])) != [1, 1]:  # type: ignore[call-overload]
        return None
    if node_attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    shape_in, shape_out = shapes.get(node.input[0]), shapes.get(node.output[0])
    if shape_in is None or shape_out is None or len(shape_in) != 4 or len(shape_out) != 4:
        return None
    dims = [*shape_in[2:], *shape_out[2:]]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    return _Conv(
        node,
        weight,
        bias,
        tuple(node_attr(node, "strides", [1, 1])),  # type: ignore[arg-type]
        tuple(node_attr(node, "pads", [0, 0, 0, 0])),  # type: ignore[arg-type]
        (int(dims[0]), int(dims[1])),
        (int(dims[2]), int(dims[3])),
    )


def _stacked_first(
    a: _Conv, phases: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, dict[str, list[int]]] | None:
    """Conv A as one Conv whose output channel (c, rh, rw) is A's phase (rh, rw) on the coarse grid."""
    c_out, c_in, kh, kw = a.weight.shape
    kernel, stride, pads = [], [], [a.pads[0], a.pads[1], 0, 0]
    for ax, (k, p) in enumerate(zip((kh, kw), phases, strict=True)):
        s = a.strides[ax]
        span = s * (p - 1) + k
        grid = a.out_hw[ax] // p
        last = s * (a.out_hw[ax] - 1) - a.pads[ax] + k - 1  # the last input index A reads
        pads[2 + ax] = max(0, last - (a.in_hw[ax] - 1))
        if (a.in_hw[ax] + a.pads[ax] + pads[2 + ax] - span) // (s * p) + 1 != grid:
            return None  # the coarse Conv would not produce exactly the grid
        kernel.append(span)
        stride.append(s * p)
    ph, pw = phases
    w = np.zeros((c_out, ph, pw, c_in, kernel[0], kernel[1]), np.float32)
    for rh in range(ph):
        for rw in range(pw):
            oh, ow = a.strides[0] * rh, a.strides[1] * rw
            w[:, rh, rw, :, oh : oh + kh, ow : ow + kw] = a.weight
    bias = np.repeat(a.bias, ph * pw).astype(np.float32)
    attrs = {"kernel_shape": kernel, "strides": stride, "pads": pads}
    return w.reshape(c_out * ph * pw, c_in, *kernel), bias, attrs


def _coarse_second(
    b: _Conv, phases: tuple[int, int], grid: tuple[int, int]
) -> tuple[np.ndarray, dict[str, list[int]]] | None:
    """Conv B as a stride-1 Conv on the coarse grid, reading the stacked channels (c, rh, rw)."""
    c_out, c_in, kh, kw = b.weight.shape
    taps, pads, kernel = [], [0, 0, 0, 0], []
    for ax, (k, p) in enumerate(zip((kh, kw), phases, strict=True)):
        q = b.pads[ax]
        ax_taps = [((tap - q) // p, (tap - q) % p) for tap in range(k)]  # tap -> (grid offset t, phase r)
        t_min, t_max = min(t for t, _ in ax_taps), max(t for t, _ in ax_taps)
        end = b.out_hw[ax] + t_max - grid[ax]  # end pad that makes the output exactly out_hw
        if end < 0:
            return None
        pads[ax], pads[2 + ax] = -t_min, end
        kernel.append(t_max - t_min + 1)
        taps.append([(t - t_min, r) for t, r in ax_taps])
    ph, pw = phases
    w = np.zeros((c_out, c_in, ph, pw, kernel[0], kernel[1]), np.float32)
    for lh, (th, rh) in enumerate(taps[0]):
        for lw, (tw, rw) in enumerate(taps[1]):
            w[:, :, rh, rw, th, tw] = b.weight[:, :, lh, lw]
    return w.reshape(c_out, c_in * ph * pw, *kernel), {
        "kernel_shape": kernel,
        "strides": [1, 1],
        "pads": pads,
    }


def stack_narrow_convs(model: onnx.ModelProto, block: int) -> onnx.ModelProto:
    """A copy of `model` with every Conv pair whose first Conv has fewer than `block` output channels
    rewritten (see module doc); others untouched."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    shapes = static_shapes(model)
    walk = GraphWalk(graph)
    fresh = walk.fresh
    rewritten: set[int] = set()  # ids of nodes replaced already (a second pass over B would be stale)
    for node in list(graph.node):
        a = _read_conv(node, inits, shapes) if id(node) not in rewritten else None
        if a is None or a.weight.shape[0] >= block:
            continue
        between, nxt = walk.elementwise_run(node.output[0])
        b = _read_conv(nxt, inits, shapes) if nxt is not None else None
        if b is None or min(b.strides) < 2:
            continue
        phases = b.strides
        if any(n % p for n, p in zip(a.out_hw, phases, strict=True)):
            continue  # A's output does not tile the coarse grid (see module doc)
        grid = (a.out_hw[0] // phases[0], a.out_hw[1] // phases[1])
        first, second = _stacked_first(a, phases), _coarse_second(b, phases, grid)
        if first is None or second is None:
            continue
        (w_a, bias_a, attrs_a), (w_b, attrs_b) = first, second
        stem_a, stem_b = node.name or node.output[0], nxt.name or nxt.output[0]
        # Weights named after the layers they replace, so the layer keeps its name (see rewritten_weight).
        w_a_name = fresh(rewritten_weight(node.input[1], "stacked_weight"))
        b_a_name = fresh(rewritten_weight(node.input[1], "stacked_bias"))
        w_b_name = fresh(rewritten_weight(nxt.input[1], "coarse_weight"))
        graph.initializer.extend(
            [
                numpy_helper.from_array(w_a, w_a_name),
                numpy_helper.from_array(bias_a, b_a_name),
                numpy_helper.from_array(w_b, w_b_name),
            ]
        )
        stacked = helper.make_node(
            "Conv",
            [node.input[0], w_a_name, b_a_name],
            [fresh(f"{stem_a}.stacked")],
            name=fresh(f"{stem_a}{STACK_MARK}"),
            **attrs_a,
        )
        current = walk.relabel(between, stacked.output[0], f"{stem_a}.stacked")
        coarse = helper.make_node(
            "Conv",
            [current, w_b_name, *nxt.input[2:]],
            list(nxt.output),
            name=fresh(f"{stem_b}.coarse_conv"),
            **attrs_b,
        )
        for old, new in ((node, stacked), (nxt, coarse)):  # each in its place: the order stays topological
            graph.node.insert(list(graph.node).index(old), new)
            graph.node.remove(old)
        rewritten |= {id(node), id(nxt)}
    return drop_unused_and_check(model) if rewritten else model
