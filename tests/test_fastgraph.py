"""The ConvTranspose -> phase Conv + Col2Im rewrite: exact per layer and per graph; refuses the rest."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from ae_export.export import export_all
from ae_export.fastgraph import graph_kind, rewrite_conv_transpose
from ae_export.parity import BATCH_SIZES, run_parity
from ae_export.specs import SPECS
from ae_export.tconv import UnsupportedGraphError
from runtimes.metadata import parse_metadata
from tests.helpers import conv_model, run_model
from train.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def portable_dir(trained_checkpoint, tmp_path_factory):
    """The same checkpoint exported with --graph portable (standard ONNX ops only)."""
    out = tmp_path_factory.mktemp("portable")
    export_all(load_checkpoint(trained_checkpoint), out, log=lambda _line: None, graph="portable")
    return out


def _single_layer(
    weight: np.ndarray, bias: np.ndarray, hw: int, opset: int = 18, **attrs: object
) -> onnx.ModelProto:
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    return conv_model([node], ["batch", weight.shape[0], hw, hw], {"w": weight, "b": bias}, opset)


# The decoder's three layers (in, out, kernel, stride, pad, output_padding, input size), then shapes the
# model does not have (odd stride, even kernel, stride 1) so the pass is not tuned to one case.
LAYERS = [
    (32, 16, 3, 2, 0, 0, 3),
    (16, 8, 3, 2, 1, 1, 7),
    (8, 1, 3, 2, 1, 1, 14),
    (4, 3, 5, 3, 2, 1, 6),
    (4, 3, 4, 2, 1, 0, 5),
    (3, 2, 3, 1, 1, 0, 5),
]


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize(("cin", "cout", "k", "s", "p", "op", "hw"), LAYERS)
def test_layer_matches_torch(cin, cout, k, s, p, op, hw, batch) -> None:
    rng = np.random.default_rng(cin * 100 + hw)
    bound = 1 / np.sqrt(cout * k * k)  # torch's default init scale, so outputs are O(1)
    weight = rng.uniform(-bound, bound, (cin, cout, k, k)).astype(np.float32)
    bias = rng.uniform(-bound, bound, cout).astype(np.float32)
    x = rng.standard_normal((batch, cin, hw, hw)).astype(np.float32)
    model = _single_layer(weight, bias, hw, strides=[s, s], pads=[p] * 4, output_padding=[op, op])
    fast = rewrite_conv_transpose(model)
    assert [n.op_type for n in fast.graph.node] == ["Conv", "Reshape", "Col2Im"]
    assert fast.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    ref = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), s, p, op
    ).numpy()
    got = run_model(fast, x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("role", ["decoder", "denoiser"])
def test_whole_graph_unchanged(portable_dir, role, merge) -> None:
    portable = onnx.load(str(portable_dir / SPECS[role].file_name))
    fast = rewrite_conv_transpose(portable, merge=merge)
    ops = [n.op_type for n in fast.graph.node]
    assert "ConvTranspose" not in ops
    assert ops.count("Col2Im") == (2 if merge else 3)
    # Interleaving Col2Ims only permute: the ReLUs (and, unmerged, the sigmoid) run before them, on the
    # Conv that ORT fuses them into. Merged, the last layer is the overlap-add form (1x1 Conv, a summing
    # Col2Im, its bias on the Conv), and the sigmoid must follow the sum.
    after = {n.input[0]: n.op_type for n in fast.graph.node}
    for node in fast.graph.node:
        if node.op_type == "Col2Im" and node.name.endswith(".interleave"):
            assert after.get(node.output[0]) not in {"Relu", "Sigmoid"}, ops
    if merge:
        assert ops[-6:] == ["Conv", "Relu", "Conv", "Reshape", "Col2Im", "Sigmoid"], ops
        assert fast.graph.node[-2].name.endswith(".overlap_add")
    else:
        assert ops[-1] == "Col2Im" and ops.index("Sigmoid") < ops.index("Col2Im", ops.index("Sigmoid"))
    assert (graph_kind(portable), graph_kind(fast)) == ("portable", "fast")
    sample = (1, 28, 28) if role == "denoiser" else (4,)
    for batch in (1, 5, 64):
        x = np.random.default_rng(batch).random((batch, *sample), dtype=np.float32)
        np.testing.assert_allclose(run_model(fast, x), run_model(portable, x), atol=1e-5, rtol=1e-5)
    assert fast.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_refuses_unsupported_layers() -> None:
    weight = np.ones((4, 2, 3, 3), np.float32)
    bias = np.zeros(2, np.float32)
    cases = {
        "group": _single_layer(np.ones((4, 1, 3, 3), np.float32), bias, 5, strides=[2, 2], group=2),
        "dilation": _single_layer(weight, bias, 5, strides=[2, 2], dilations=[2, 2]),
        "auto_pad": _single_layer(weight, bias, 5, strides=[2, 2], auto_pad="SAME_UPPER"),
        "output_shape": _single_layer(weight, bias, 5, strides=[2, 2], output_shape=[10, 10]),
        "opset": _single_layer(weight, bias, 5, opset=17, strides=[2, 2]),
    }
    for reason, model in cases.items():
        with pytest.raises(UnsupportedGraphError, match=reason if reason != "opset" else "opset 17"):
            rewrite_conv_transpose(model)
    # A dynamic spatial size cannot be phase-decomposed statically.
    dynamic = _single_layer(weight, bias, 5, strides=[2, 2])
    dynamic.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    with pytest.raises(UnsupportedGraphError, match="static"):
        rewrite_conv_transpose(dynamic)


def test_portable_graph_keeps_parity(portable_dir, onnx_dir, trained_checkpoint, fmnist_test) -> None:
    """Both graphs stay certified: the portable export passes the same parity matrix as the default."""
    for folder, graph in ((portable_dir, "portable"), (onnx_dir, "fast")):
        proto = onnx.load(str(folder / SPECS["denoiser"].file_name))
        assert parse_metadata({p.key: p.value for p in proto.metadata_props}).graph == graph
    model = load_checkpoint(trained_checkpoint).build_model()
    report = run_parity(model, portable_dir, fmnist_test[:1000], BATCH_SIZES, providers=("cpu",))
    assert report.passed, report.failure_summary()


def test_asymmetric_pads_and_strides() -> None:
    """Per-axis strides, a non-square kernel and unequal begin/end pads, against ORT's ConvTranspose."""
    rng = np.random.default_rng(3)
    weight = rng.uniform(-0.3, 0.3, (3, 2, 3, 4)).astype(np.float32)
    bias = rng.uniform(-0.3, 0.3, 2).astype(np.float32)
    model = _single_layer(weight, bias, 5, strides=[2, 3], pads=[1, 0, 2, 1], output_padding=[1, 0])
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 6  # (batch, 3, 5, 6)
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    ref = run_model(model, x)
    assert ref.shape == (2, 2, 9, 18)
    np.testing.assert_allclose(run_model(rewrite_conv_transpose(model), x), ref, atol=1e-6, rtol=1e-6)


def test_chain_merges_through_elementwise_ops() -> None:
    """Two layers with LeakyRelu between, exact tiling: one Col2Im for both, same values."""
    rng = np.random.default_rng(4)
    inits = {
        "w1": rng.uniform(-0.3, 0.3, (4, 3, 3, 3)),
        "b1": rng.uniform(-0.3, 0.3, 3),
        "w2": rng.uniform(-0.3, 0.3, (3, 2, 3, 3)),
        "b2": rng.uniform(-0.3, 0.3, 2),
    }
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w1", "b1"], ["h"], **attrs),
        helper.make_node("LeakyRelu", ["h"], ["r"], alpha=0.1),
        helper.make_node("ConvTranspose", ["r", "w2", "b2"], ["y"], **attrs),
    ]
    model = conv_model(nodes, ["batch", 4, 5, 5], inits)
    x = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    for overlap in (True, False):
        fast = rewrite_conv_transpose(model, overlap=overlap)
        assert [n.op_type for n in fast.graph.node] == ["Conv", "LeakyRelu", "Conv", "Reshape", "Col2Im"]
        assert fast.graph.node[2].attribute[0].ints == ([1, 1] if overlap else [2, 2])  # kernel_shape
        np.testing.assert_allclose(run_model(fast, x), run_model(model, x), atol=1e-6, rtol=1e-6)


# Second layers of two-layer chains (kernel, stride, pad, output_padding) after a first layer that tiles
# its grid (3x3, stride 2, pad 1, output_padding 1), and the form each must take: the overlap form with
# its bias on the Conv, the overlap form + Add (no window of offsets covers every output once), or the
# phase form (output_padding beyond the footprints: those outputs hold the bias alone).
OVERLAP = ["Conv", "Reshape", "Col2Im", "Sigmoid"]
SECOND_LAYERS = [
    ((3, 2, 1, 1), OVERLAP),  # the decoder's last layer
    ((4, 2, 1, 0), OVERLAP),
    ((2, 2, 0, 0), OVERLAP),  # footprints that do not overlap
    ((5, 3, 2, 1), OVERLAP),  # stride 3: footprint 8, window of 6 offsets
    ((3, 2, 0, 0), ["Conv", "Reshape", "Col2Im", "Add", "Sigmoid"]),  # no begin pad to hide a window edge
    ((1, 2, 0, 0), ["Conv", "Reshape", "Col2Im", "Add", "Sigmoid"]),  # kernel < stride: gaps hold bias only
    ((3, 2, 0, 1), ["Conv", "Sigmoid", "Reshape", "Col2Im"]),  # phase form, the sigmoid before the interleave
]


@pytest.mark.parametrize(("second", "ops"), SECOND_LAYERS)
def test_last_layer_of_a_chain_matches_torch(second, ops) -> None:
    """The chain's last layer (read as phases) in overlap-add form, against torch's conv_transpose2d."""
    k, s, p, op = second
    rng = np.random.default_rng(k * 10 + s + p + op)
    w1, b1 = rng.uniform(-0.3, 0.3, (4, 3, 3, 3)), rng.uniform(-0.3, 0.3, 3)
    w2, b2 = rng.uniform(-0.3, 0.3, (3, 2, k, k)), rng.uniform(-0.3, 0.3, 2)
    nodes = [
        helper.make_node(
            "ConvTranspose", ["x", "w1", "b1"], ["h"], strides=[2, 2], pads=[1] * 4, output_padding=[1, 1]
        ),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node(
            "ConvTranspose", ["r", "w2", "b2"], ["t"], strides=[s, s], pads=[p] * 4, output_padding=[op, op]
        ),
        helper.make_node("Sigmoid", ["t"], ["y"]),
    ]
    fast = rewrite_conv_transpose(
        conv_model(nodes, ["batch", 4, 5, 5], {"w1": w1, "b1": b1, "w2": w2, "b2": b2})
    )
    assert [n.op_type for n in fast.graph.node] == ["Conv", "Relu", *ops]
    last_conv = fast.graph.node[2]
    assert last_conv.attribute[0].ints == ([1, 1] if ops[1] == "Reshape" else [2, 2])  # kernel_shape
    x = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    t = torch.from_numpy
    h = torch.relu(torch.nn.functional.conv_transpose2d(t(x), t(w1).float(), t(b1).float(), 2, 1, 1))
    ref = torch.sigmoid(torch.nn.functional.conv_transpose2d(h, t(w2).float(), t(b2).float(), s, p, op))
    np.testing.assert_allclose(run_model(fast, x), ref.numpy(), atol=1e-6, rtol=1e-5)
