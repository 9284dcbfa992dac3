"""What the fast-graph passes share: attribute and shape reads, single-consumer walks, fresh names, and
the emitter of a rewritten node's replacement.

One home for these so the ConvTranspose rewrites (ae_export.fastgraph, ae_export.entrygemm) and the
narrow-Conv stacking (ae_export.stackconv) read and write a graph the same way. Imports onnx and numpy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Elementwise unary ops that may sit between two rewritten convolutions: they act on each value alone,
# so they give the same result on a phase (stacked) layout as on the image layout.
ELEMENTWISE = frozenset({"Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "Elu", "Selu", "HardSigmoid"})


def node_attr(node: onnx.NodeProto, name: str, default: object) -> object:
    """The attribute's value, or `default` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Every tensor's shape from strict shape inference: ints where static, dim_param names where not."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes: dict[str, list[int | str]] = {}
    graph = inferred.graph
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    return shapes


class GraphWalk:
    """A graph's consumers and taken names, for passes that follow single-consumer chains and add nodes."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.used = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}

    def single_next(self, tensor: str) -> onnx.NodeProto | None:
        """The one node reading `tensor`, or None when several (or none) do or it is a graph output."""
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def elementwise_run(self, tensor: str) -> tuple[list[onnx.NodeProto], onnx.NodeProto | None]:
        """The elementwise ops that follow `tensor` one after another, and the node after them: the single
        reader of the run's last tensor, and only when it reads it as its data input (input 0)."""
        between: list[onnx.NodeProto] = []
        nxt = self.single_next(tensor)
        while nxt is not None and nxt.op_type in ELEMENTWISE and len(nxt.output) == 1:
            between.append(nxt)
            nxt = self.single_next(nxt.output[0])
        end = between[-1].output[0] if between else tensor
        return between, nxt if nxt is not None and nxt.input[0] == end else None

    def relabel(self, run: list[onnx.NodeProto], start: str, stem: str) -> str:
        """Make the elementwise `run` (from elementwise_run) read `start` and write fresh names after
        `stem`, one after another: they now act on a rewritten layout, no longer the exporter's tensors.
        Returns the run's last output (`start` for an empty run), which the next node must read."""
        current = start
        for op in run:
            op.input[0] = current
            current = self.fresh(f"{stem}_{op.op_type.lower()}")
            op.output[0] = current
        return current

    def fresh(self, stem: str) -> str:
        """A tensor or node name not yet in the graph: `stem`, else `stem_1`, `stem_2`, ..."""
        name, i = stem, 0
        while name in self.used:
            i += 1
            name = f"{stem}_{i}"
        self.used.add(name)
        return name


def drop_unused_and_check(model: onnx.ModelProto) -> onnx.ModelProto:
    """After a pass: drop initializers no node reads, infer the (changed) shapes again, check the model."""
    graph = model.graph
    still_used = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]  # stale: rewritten tensors have new shapes
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def rewritten_weight(original: str, part: str) -> str:
    """The name of a weight (or bias) a rewrite makes in place of the weight `original`:
    "decoder.cnn.0.weight" -> "decoder.cnn.0.phase_weight".

    Why: int8's per-layer choices (`ae_export.variants.layer_key`) name a layer by its weight. Named
    after the replaced node instead, the same decoder layer was "node_ConvTranspose_38.phase_weight" in
    the denoiser and "decoder.node_ConvTranspose_24.phase_weight" in the decoder file, so a layer the
    search kept in float in the denoiser was quantized in the decoder file.
    """
    return f"{original.removesuffix('.weight')}.{part}"


class Emit:
    """The nodes and initializers that replace one node: nodes named after it (`stem`), new weights after
    the weight it had (`rewritten_weight`), every name fresh; initializers go to the pass's shared list."""

    def __init__(
        self, fresh: Callable[[str], str], inits: list[onnx.TensorProto], stem: str, weight: str
    ) -> None:
        self.fresh, self.inits, self.stem, self.weight = fresh, inits, stem, weight
        self.nodes: list[onnx.NodeProto] = []

    def add(self, name: str, value: np.ndarray) -> str:
        """A new initializer under a fresh `name`."""
        name = self.fresh(name)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def const(self, key: str, value: np.ndarray, layer: bool = False) -> str:
        """A new initializer named after the node, or (`layer`) after the replaced weight's layer."""
        return self.add(rewritten_weight(self.weight, key) if layer else f"{self.stem}.{key}", value)

    def node(self, op: str, inputs: list[str], out: str, what: str, **attrs: object) -> str:
        """Node `op` named "<stem>.<what>", writing `out`; returns `out`."""
        self.nodes.append(
            helper.make_node(op, inputs, [out], name=self.fresh(f"{self.stem}.{what}"), **attrs)
        )
        return out

    def col2im(
        self,
        columns: str,
        out: str,
        image: tuple[int, int],
        block: tuple[int, int],
        strides: tuple[int, int],
        pads: list[int],
        kind: str,
    ) -> None:
        """Col2Im of (B, C*Bh*Bw, L) `columns` into `out` (B, C, *image), the node named "<stem>.<kind>"."""
        image_name = self.const("image_shape", np.array(image, np.int64))
        block_name = self.const("block_shape", np.array(block, np.int64))
        self.node("Col2Im", [columns, image_name, block_name], out, kind, strides=list(strides), pads=pads)
