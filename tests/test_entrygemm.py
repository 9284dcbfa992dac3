"""The decoder's entry layer as one MatMul per input cell: exact per layer shape, applied only where it
can be, only for the CPU target it was measured on, and int8 keeps its nodes together."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from ae_export.entrygemm import dense_entry
from ae_export.export import export_all
from ae_export.fastgraph import fast_graph, graph_kind
from ae_export.specs import SPECS
from ae_export.tconv import UnsupportedGraphError
from ae_export.variants import weighted_layers
from tests.helpers import conv_model, run_model
from train.checkpoint import load_checkpoint

# (latent, in, out, kernel, stride, pad, output_padding, input size): the decoder's first layer, then
# shapes it does not have (odd stride, even kernel, stride 1, padding, output_padding within the pad).
LAYERS = [
    (4, 32, 16, 3, 2, 0, 0, 3),
    (6, 16, 8, 3, 2, 1, 1, 7),
    (5, 4, 3, 5, 3, 2, 1, 6),
    (3, 4, 3, 4, 2, 1, 0, 5),
    (3, 3, 2, 3, 1, 1, 0, 5),
    (2, 2, 1, 2, 2, 0, 0, 1),
]


def _entry_model(
    rng: np.random.Generator,
    latent: int,
    cin: int,
    cout: int,
    k: int,
    s: int,
    p: int,
    op: int,
    hw: int,
    trans_b: bool = True,
    bias: str = "vector",
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Gemm (latent -> cin*hw*hw) -> Relu -> Reshape (B, cin, hw, hw) -> ConvTranspose -> Relu."""
    units = cin * hw * hw
    w = {
        "lw": rng.uniform(-0.5, 0.5, (units, latent)),
        "lb": rng.uniform(-0.5, 0.5, units if bias == "vector" else 1) if bias != "none" else np.zeros(1),
        "w": rng.uniform(-0.5, 0.5, (cin, cout, k, k)),
        "b": rng.uniform(-0.5, 0.5, cout),
    }
    stored = {"lw" if trans_b else "lwT": w["lw"] if trans_b else w["lw"].T, "w": w["w"], "b": w["b"]}
    if bias != "none":
        stored["lb"] = w["lb"]
    nodes = [
        helper.make_node(
            "Gemm",
            ["x", "lw" if trans_b else "lwT", *(["lb"] if bias != "none" else [])],
            ["h"],
            transB=int(trans_b),
        ),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["image"]),
        helper.make_node(
            "ConvTranspose", ["image", "w", "b"], ["t"], strides=[s, s], pads=[p] * 4, output_padding=[op, op]
        ),
        helper.make_node("Relu", ["t"], ["y"]),
    ]
    model = conv_model(nodes, ["batch", latent], stored)
    model.graph.initializer.append(
        onnx.numpy_helper.from_array(np.array([0, cin, hw, hw], np.int64), "shape")
    )
    return model, w


def _torch_reference(x: np.ndarray, w: dict[str, np.ndarray], s: int, p: int, op: int, hw: int) -> np.ndarray:
    t = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in w.items()}
    h = torch.relu(torch.from_numpy(x) @ t["lw"].T + t["lb"])
    image = h.reshape(len(x), -1, hw, hw)
    return torch.relu(torch.nn.functional.conv_transpose2d(image, t["w"], t["b"], s, p, op)).numpy()


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize(("latent", "cin", "cout", "k", "s", "p", "op", "hw"), LAYERS)
def test_layer_matches_torch(latent, cin, cout, k, s, p, op, hw, batch) -> None:
    rng = np.random.default_rng(cin * 100 + hw * 10 + k)
    model, w = _entry_model(rng, latent, cin, cout, k, s, p, op, hw)
    fast = dense_entry(model)
    ops = [n.op_type for n in fast.graph.node]
    assert ops == ["Gemm", "Relu", "Reshape", "MatMul", "Transpose", "Col2Im", "Conv", "Relu"], ops
    assert fast.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = rng.standard_normal((batch, latent)).astype(np.float32)
    ref = _torch_reference(x, w, s, p, op, hw)
    got = run_model(fast, x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("trans_b", "bias"), [(False, "vector"), (True, "none"), (True, "scalar")])
def test_gemm_forms(trans_b: bool, bias: str) -> None:
    """The Linear layer's weight either way round, with no bias or one bias for every unit."""
    rng = np.random.default_rng(7)
    model, w = _entry_model(rng, 4, 8, 4, 3, 2, 0, 0, 3, trans_b=trans_b, bias=bias)
    fast = dense_entry(model)
    assert "MatMul" in [n.op_type for n in fast.graph.node]
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(run_model(fast, x), _torch_reference(x, w, 2, 0, 0, 3), atol=1e-5, rtol=1e-5)


def test_leaves_what_it_cannot_do_exactly() -> None:
    """Untouched: a Gemm output read twice, a layer whose output_padding lies beyond every footprint,
    a ConvTranspose not fed by a Gemm; and a too-old opset is refused."""
    rng = np.random.default_rng(8)
    model, _ = _entry_model(rng, 4, 8, 4, 3, 2, 0, 0, 3)
    model.graph.node.append(helper.make_node("Relu", ["h"], ["extra"]))
    model.graph.output.append(helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, None))
    beyond, _ = _entry_model(rng, 4, 8, 4, 3, 2, 0, 1, 3)  # output_padding 1 > end pad 0
    plain = conv_model(
        [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2])],
        ["batch", 4, 3, 3],
        {"w": rng.uniform(-1, 1, (4, 2, 3, 3)), "b": np.zeros(2)},
    )
    for case in (model, beyond, plain):
        assert [n.op_type for n in dense_entry(case).graph.node] == [n.op_type for n in case.graph.node]
    old, _ = _entry_model(rng, 4, 8, 4, 3, 2, 0, 0, 3)
    old.opset_import[0].version = 17
    with pytest.raises(UnsupportedGraphError, match="opset 17"):
        dense_entry(old)


@pytest.fixture(scope="module")
def portable_dir(trained_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("portable_entry")
    export_all(load_checkpoint(trained_checkpoint), out, log=lambda _line: None, graph="portable")
    return out


@pytest.mark.parametrize("role", ["decoder", "denoiser"])
def test_whole_graph_per_cpu_target(portable_dir, role) -> None:
    """avx2's fast graph runs the entry layer as MatMul + Col2Im; avx512's keeps the phase Conv; both
    compute the portable graph's values, and int8 sees the MatMul and its bias Conv as one layer."""
    portable = onnx.load(str(portable_dir / SPECS[role].file_name))
    sample = (1, 28, 28) if role == "denoiser" else (4,)
    for target, matmuls in (("avx2", 1), ("avx512", 0)):
        fast = fast_graph(portable, target)
        ops = [n.op_type for n in fast.graph.node]
        assert "ConvTranspose" not in ops and ops.count("MatMul") == matmuls, (target, ops)
        assert graph_kind(fast) == "fast"
        for batch in (1, 5, 64):
            x = np.random.default_rng(batch).random((batch, *sample), dtype=np.float32)
            np.testing.assert_allclose(run_model(fast, x), run_model(portable, x), atol=1e-5, rtol=1e-5)
        layer = weighted_layers(fast, role)["decoder.cnn.0"]
        assert len(layer) == (2 if matmuls else 1), layer


def test_profile_counts_the_layer_as_a_transposed_convolution(portable_dir, tmp_path) -> None:
    """The bench's per-kind table puts the MatMul, its Transpose and its bias Conv under conv_transpose,
    not under the Linear layers or layout work: ORT's profile names them after the pass's mark."""
    from bench.flops import profile_ort_ops

    path = tmp_path / "denoiser.onnx"
    onnx.save(fast_graph(onnx.load(str(portable_dir / SPECS["denoiser"].file_name)), "avx2"), str(path))
    flops = {"total": 3, "by_kind": {"conv": 1, "conv_transpose": 1, "linear": 1}}
    rows = {r["kind"]: r["ops"] for r in profile_ort_ops(path, threads=1, batch=4, runs=2, flops=flops)}
    assert {"MatMul", "Transpose", "Col2Im", "Conv"} <= set(rows["conv_transpose"]), rows
    assert "MatMul" not in rows["linear"] and "Transpose" not in rows["elementwise/other"], rows


def test_the_mark_reaches_the_bias_conv_without_an_activation(tmp_path) -> None:
    """Two ConvTransposes with nothing between: the bias Conv's output (after which ORT names its fused
    node) still carries the mark, so the bench counts it as the transposed convolution's; same values."""
    from bench.flops import profile_ort_ops

    rng = np.random.default_rng(11)
    model, _ = _entry_model(rng, 4, 32, 16, 3, 2, 0, 0, 3)
    second = helper.make_node("ConvTranspose", ["t", "w2", "b2"], ["y"], strides=[2, 2], pads=[1] * 4)
    del model.graph.node[-1]  # the Relu: "t" now feeds the second layer directly
    model.graph.node.append(second)
    for name, value in (("w2", rng.uniform(-0.5, 0.5, (16, 8, 3, 3))), ("b2", rng.uniform(-0.5, 0.5, 8))):
        model.graph.initializer.append(onnx.numpy_helper.from_array(value.astype(np.float32), name))
    fast = fast_graph(model, "avx2")
    x = rng.standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(run_model(fast, x), run_model(model, x), atol=1e-5, rtol=1e-5)
    path = tmp_path / "two.onnx"
    onnx.save(fast, str(path))
    flops = {"total": 3, "by_kind": {"conv": 1, "conv_transpose": 1, "linear": 1}}
    rows = {r["kind"]: r for r in profile_ort_ops(path, 1, 4, 2, flops, sample_shape=(4,))}
    assert rows["conv"]["ms_per_call"] == 0, rows  # no Conv of this graph counted as a plain one


def test_a_second_copy_of_a_weight_keeps_its_layer_key() -> None:
    """Fresh names of a second rewrite of one weight ("c1.cell_weight_1") name the same int8 layer."""
    from ae_export.variants import layer_key

    assert {layer_key(n, "denoiser") for n in ("c1.weight", "c1.cell_weight", "c1.ones_weight_1")} == {"c1"}
