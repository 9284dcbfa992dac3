"""Exported graphs carry no subnormal or near-subnormal weights (they, and the subnormal products they
make, slow x86 kernels dozens of times), and zeroing them changes nothing a parity check can see."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from ae_export.export import export_artifact, module_for
from ae_export.specs import SPECS
from ae_export.subnormals import FLUSH_BELOW, flush_tiny_weights
from train.checkpoint import load_checkpoint


def _tiny(proto: onnx.ModelProto) -> int:
    total = 0
    for init in proto.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype == np.float32:
            total += int(((values != 0) & (np.abs(values) < FLUSH_BELOW)).sum())
    return total


def test_flush_zeroes_exactly_the_tiny_weights() -> None:
    """Subnormals and normals below 1e-20 go; 1e-20 and up, zeros and non-float tensors stay."""
    weights = np.array(
        [[1e-40, -3e-42, 1.2e-38, 0.5, -1e-30, 2e-20], [-1e-39, 0.0, -2.0, 1e-45, 9e-21, 1e-19]], np.float32
    )
    counts = np.arange(3, dtype=np.int64)  # not float32: left alone
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 6])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(counts, "n")],
    )
    proto = helper.make_model(graph)
    assert _tiny(proto) == 7
    assert flush_tiny_weights(proto) == 7
    flushed = numpy_helper.to_array(proto.graph.initializer[0])
    expected = np.array([[0, 0, 0, 0.5, 0, 2e-20], [0, 0, -2.0, 0, 0, 1e-19]], dtype=np.float32)
    np.testing.assert_array_equal(flushed, expected)
    np.testing.assert_array_equal(numpy_helper.to_array(proto.graph.initializer[1]), counts)
    assert flush_tiny_weights(proto) == 0


@pytest.mark.parametrize("role", ["encoder", "decoder", "denoiser"])
@pytest.mark.parametrize("graph", ["portable", "fast"])
def test_export_flushes_trained_subnormals_and_keeps_parity(
    trained_checkpoint: Path, role: str, graph: str
) -> None:
    """Weights as weight decay leaves them (some subnormal, some just above) export without either,
    with the same outputs."""
    checkpoint = load_checkpoint(trained_checkpoint)
    state = {k: v.clone() for k, v in checkpoint.model_state.items()}
    for name in ("encoder.lin.0.weight", "decoder.lin.2.weight", "decoder.cnn.0.weight"):
        flat = state[name].view(-1)
        flat[::7] = torch.where(flat[::7] > 0, 1e-40, -3e-42)  # subnormal float32
        flat[3::7] = torch.where(flat[3::7] > 0, 1e-33, -4e-25)  # normal, but with subnormal products
    checkpoint = dataclasses.replace(checkpoint, model_state=state)
    model = checkpoint.build_model()
    spec = SPECS[role]
    proto = export_artifact(checkpoint, spec, graph=graph).proto
    assert _tiny(proto) == 0
    shape = (16, *spec.sample_shape(spec.input_kind, checkpoint.model_config.latent_dim))
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        ref = module_for(model, spec)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
