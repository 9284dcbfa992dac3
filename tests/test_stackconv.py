"""The narrow-Conv stacking pass: exact per Conv-pair shape against torch; skips what it cannot prove."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from ae_export.fastgraph import graph_kind
from ae_export.stackconv import STACK_MARK, stack_narrow_convs
from tests.helpers import conv_model, run_model

# (C_in, C_mid, C_out, kernel A, stride A, pads A, kernel B, stride B, pads B, input H, W). Pads are
# ONNX's (begin_h, begin_w, end_h, end_w). The first row is the lecture encoder's first two Convs; the
# others are shapes the model does not have (stride-1 first Conv, even and non-square kernels, no pad,
# unequal pads, per-axis strides), so the pass is not tuned to one case.
PAIRS = [
    (1, 8, 16, (3, 3), (2, 2), (1, 1, 1, 1), (3, 3), (2, 2), (1, 1, 1, 1), (28, 28)),
    (3, 4, 6, (5, 5), (1, 1), (2, 2, 2, 2), (3, 3), (2, 2), (1, 1, 1, 1), (12, 12)),
    (1, 8, 16, (3, 3), (2, 2), (1, 1, 1, 1), (4, 4), (2, 2), (1, 1, 1, 1), (16, 16)),
    (2, 5, 7, (3, 2), (2, 1), (0, 1, 1, 0), (3, 3), (2, 3), (0, 2, 1, 0), (21, 18)),
    (1, 8, 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (2, 2), (0, 0, 0, 0), (28, 28)),
    (2, 3, 4, (3, 3), (1, 1), (1, 1, 1, 1), (5, 5), (4, 4), (2, 2, 2, 2), (16, 16)),
]


def _pair(
    c_in: int, c_mid: int, c_out: int, ka, sa, pa, kb, sb, pb, hw, seed: int = 0, act: str = "Relu", **b_attrs
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    weights = {
        "wa": rng.uniform(-0.5, 0.5, (c_mid, c_in, *ka)).astype(np.float32),
        "ba": rng.uniform(-0.5, 0.5, c_mid).astype(np.float32),
        "wb": rng.uniform(-0.5, 0.5, (c_out, c_mid // b_attrs.get("group", 1), *kb)).astype(np.float32),
        "bb": rng.uniform(-0.5, 0.5, c_out).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], strides=list(sa), pads=list(pa), name="conv_a"),
        helper.make_node(act, ["a"], ["r"], name="act"),
        helper.make_node(
            "Conv", ["r", "wb", "bb"], ["y"], strides=list(sb), pads=list(pb), name="conv_b", **b_attrs
        ),
    ]
    return conv_model(nodes, ["batch", c_in, *hw], weights), weights


def _torch_pad(pads) -> tuple[int, int, int, int]:
    """ONNX (begin_h, begin_w, end_h, end_w) -> F.pad's (left, right, top, bottom)."""
    return (pads[1], pads[3], pads[0], pads[2])


@pytest.mark.parametrize("pair", PAIRS, ids=[f"pair{i}" for i in range(len(PAIRS))])
@pytest.mark.parametrize("batch", [1, 5])
def test_stacked_pair_equals_torch(pair, batch: int) -> None:
    model, w = _pair(*pair)
    stacked = stack_narrow_convs(model, 16)
    names = [n.name for n in stacked.graph.node]
    assert names[0].endswith(STACK_MARK) and names[2].endswith(".coarse_conv"), names
    assert [n.op_type for n in stacked.graph.node] == ["Conv", "Relu", "Conv"]
    *_, ka, sa, pa, kb, sb, pb, hw = pair
    x = np.random.default_rng(batch).standard_normal((batch, pair[0], *hw)).astype(np.float32)
    with torch.no_grad():
        t = F.conv2d(
            F.pad(torch.from_numpy(x), _torch_pad(pa)),
            torch.from_numpy(w["wa"]),
            torch.from_numpy(w["ba"]),
            stride=sa,
        )
        t = F.conv2d(
            F.pad(torch.relu(t), _torch_pad(pb)),
            torch.from_numpy(w["wb"]),
            torch.from_numpy(w["bb"]),
            stride=sb,
        )
    got = run_model(stacked, x)
    assert got.shape == tuple(t.shape)
    np.testing.assert_allclose(got, t.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got, run_model(model, x), atol=1e-5, rtol=1e-5)
    assert (graph_kind(model), graph_kind(stacked)) == ("portable", "fast")


def test_other_elementwise_ops_between() -> None:
    """A LeakyRelu (negative values kept) acts on the stacked layout as on the image."""
    model, _ = _pair(*PAIRS[0], act="LeakyRelu")
    stacked = stack_narrow_convs(model, 16)
    assert stacked.graph.node[0].name.endswith(STACK_MARK)
    x = np.random.default_rng(7).random((3, 1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(run_model(stacked, x), run_model(model, x), atol=1e-5, rtol=1e-5)


def test_chain_of_narrow_convs_rewrites_each_node_once() -> None:
    """Three strided Convs of 4, 8 and 16 channels: the first pair is stacked; the second Conv, replaced by
    then, is not taken up again as the first of another pair (its input is no longer what it read)."""
    rng = np.random.default_rng(5)
    weights = {
        "w1": rng.uniform(-0.5, 0.5, (4, 1, 3, 3)),
        "w2": rng.uniform(-0.5, 0.5, (8, 4, 3, 3)),
        "w3": rng.uniform(-0.5, 0.5, (16, 8, 3, 3)),
    }
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", **attrs),
        helper.make_node("Relu", ["a"], ["ar"]),
        helper.make_node("Conv", ["ar", "w2"], ["b"], name="c2", **attrs),
        helper.make_node("Relu", ["b"], ["br"]),
        helper.make_node("Conv", ["br", "w3"], ["y"], name="c3", **attrs),
    ]
    model = conv_model(nodes, ["batch", 1, 32, 32], weights)
    stacked = stack_narrow_convs(model, 16)
    assert [n.name for n in stacked.graph.node if n.op_type == "Conv"] == [
        f"c1{STACK_MARK}",
        "c2.coarse_conv",
        "c3",
    ]
    x = np.random.default_rng(6).random((2, 1, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(run_model(stacked, x), run_model(model, x), atol=1e-5, rtol=1e-5)


def _unchanged(model: onnx.ModelProto) -> bool:
    return not any(n.name.endswith(STACK_MARK) for n in stack_narrow_convs(model, 16).graph.node)


def test_leaves_alone_what_it_cannot_prove_or_would_not_pay() -> None:
    lecture = PAIRS[0]
    # 16 output channels already fill an AVX-512 block: no reorder to save.
    assert _unchanged(_pair(1, 16, 16, *lecture[3:])[0])
    # A's 13x13 output does not tile a 2x2 grid.
    assert _unchanged(
        _pair(1, 8, 16, (3, 3), (2, 2), (1, 1, 1, 1), (3, 3), (2, 2), (1, 1, 1, 1), (26, 26))[0]
    )
    # B has stride 1: there is no coarse grid.
    assert _unchanged(_pair(1, 8, 16, *lecture[3:7], (1, 1), *lecture[8:])[0])
    # Grouped and dilated second Convs are not handled.
    assert _unchanged(_pair(*lecture, group=2)[0])
    assert _unchanged(_pair(*lecture, dilations=[2, 2])[0])
    # A's output read by a second node (a graph output too): stacking would change what it sees.
    model, _ = _pair(*lecture)
    model.graph.output.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, None))
    assert _unchanged(model)
    # A dynamic spatial size cannot be stacked statically.
    model, _ = _pair(*lecture)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    assert _unchanged(model)
