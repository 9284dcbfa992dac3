"""One ConvTranspose layer read from a graph, and the exact forms the fast graph computes it in.

The graph passes (ae_export.fastgraph: the chains of phase Convs; ae_export.entrygemm: the decoder's
first layer as one MatMul per input cell) share this module's reading of a layer and its arithmetic.
Imports onnx and numpy only.

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

"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ae_export.graphedit import node_attr

COL2IM_OPSET = 18  # the first ONNX opset with Col2Im


class UnsupportedGraphError(ValueError):
    """The graph holds a ConvTranspose the pass cannot rewrite exactly; the message names it and why."""


def check_col2im_opset(model: onnx.ModelProto) -> None:
    """Raise UnsupportedGraphError where the graph's opset has no Col2Im, which every form here needs."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < COL2IM_OPSET:
        raise UnsupportedGraphError(f"the graph's opset {opset} has no Col2Im (needs >= {COL2IM_OPSET})")


@dataclass
class ConvTransposeLayer:
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


def phase_taps(stride: int, kernel: int, pad: int, phases_in: int) -> list[tuple[int, int, int, int]]:
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


def phase_conv(
    layer: ConvTransposeLayer, phases_in: tuple[int, int], grid_in: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, list[int], tuple[int, int]]:
    """Weights (C_out*Bh*Bw, C_in*Ph*Pw, Th, Tw), bias, Conv pads and output grid of one phase conv."""
    c_in, c_out, kh, kw = layer.weight.shape
    blocks = (layer.strides[0] * phases_in[0], layer.strides[1] * phases_in[1])
    grid_out = tuple(-(-o // b) for o, b in zip(layer.out_hw, blocks, strict=True))
    axes = []
    for ax, kernel in enumerate((kh, kw)):
        taps = phase_taps(layer.strides[ax], kernel, layer.pads[ax], phases_in[ax])
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
class OverlapForm:
    """The overlap-add form of one layer: 1x1 Conv weights and bias, and the Col2Im that sums them."""

    weight: np.ndarray  # (C_out*Eh*Ew, C_in*Ph*Pw, 1, 1)
    bias: np.ndarray  # (C_out*Eh*Ew,): the layer's bias on one window of offsets per axis, else zeros
    add_bias: bool  # no window covers every output once: a separate Add after the Col2Im carries it
    block: tuple[int, int]  # footprint E per axis
    strides: tuple[int, int]  # S*P per axis
    pads: tuple[int, int, int, int]  # Col2Im begin_h, begin_w, end_h, end_w


def overlap_form(
    layer: ConvTransposeLayer, phases_in: tuple[int, int], grid_in: tuple[int, int]
) -> OverlapForm | None:
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
    return OverlapForm(
        weight=kernel.reshape(c_out * eh * ew, c_in * ph * pw, 1, 1).astype(np.float32),
        bias=on_window.reshape(-1),
        add_bias=None in windows,
        block=(eh, ew),
        strides=(strides[0], strides[1]),
        pads=(layer.pads[0], layer.pads[1], pads_end[0], pads_end[1]),
    )


def read_conv_transpose(
    node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], shapes: dict[str, list[int | str]]
) -> ConvTransposeLayer:
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
    layer = ConvTransposeLayer(
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
