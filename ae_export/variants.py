"""Smaller and faster flavours of the fp32 files: fp16 and static int8, each judged by the quality it keeps.

Quality is measured, never assumed: every variant is scored on the standard test (Fashion-MNIST test
images 0-1999, the model's own noise `clip(x + 0.3 * N(0, 1), 0, 1)` from the training's fixed evaluation
seed, mean per-image PSNR and SSIM from train.metrics) against the fp32 ONNX file on the same images.

int8 is static QDQ quantization (onnxruntime.quantization, per-channel int8 weights, uint8 activations)
calibrated on real training images with the model's noise. Quantizing every layer loses ~0.5 dB on this
model, and which layers are sensitive is a property of the trained weights, so it is searched, not
guessed: quantize all, then greedily keep in float the layer whose exclusion recovers most, until the
loss is within the search target. The search is scored on test images 2000-2999 with their own noise
seed, so the standard test that gates the result is not the one the search fitted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.transformers.float16 import convert_float_to_float16

from ae_export.specs import SPECS, VariantSpec
from runtimes.metadata import KEY_ARTIFACTS, KEY_VARIANT, PREFIX
from runtimes.noise import add_noise
from runtimes.sessions import open_session, physical_cores
from train.data import Dataset, fixed_noisy, to_float
from train.metrics import psnr_per_image, ssim_per_image

STANDARD_IMAGES = 2000  # test[:2000]
STANDARD_SEED = 1234  # train.loop.TrainConfig.eval_seed: the noisy set training reports on
SEARCH_START, SEARCH_IMAGES, SEARCH_SEED = 2000, 1000, 4321  # test[2000:3000], its own noise
CALIBRATION_IMAGES, CALIBRATION_SEED = 512, 0  # train[:512]
# The search stops at half the budget: what it fits on test[2000:3000] must still hold on test[:2000].
SEARCH_MARGIN = 0.5
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
RUN_CHUNK = 500


@dataclass(frozen=True)
class EvalSet:
    """Clean and noisy float32 images (N, 1, 28, 28) in [0, 1], and where they came from."""

    name: str
    clean: np.ndarray
    noisy: np.ndarray


@dataclass(frozen=True)
class Quality:
    psnr_db: float
    ssim: float


def standard_test(data: Dataset, noise_std: float) -> EvalSet:
    """The gate's images: the first STANDARD_IMAGES held-out images (all of them where a folder dataset
    holds fewer; the name says how many), with fixed noise. Why not refuse a small set: the gate compares
    the variant with the fp32 file image by image on the same noisy inputs, and a folder dataset is a
    documented way to train; refusing left no way to export one with its manifest."""
    check_standard_test(data)
    images = data.val.images[:STANDARD_IMAGES]
    return EvalSet(
        f"test[:{len(images)}] noise {noise_std} seed {STANDARD_SEED}",
        to_float(images).numpy(),
        fixed_noisy(images, noise_std, STANDARD_SEED).numpy(),
    )


def check_standard_test(data: Dataset) -> None:
    """Raise ValueError, before anything is written, when the dataset has no held-out image to judge on."""
    if len(data.val.images) == 0:
        raise ValueError(
            "the variants' quality gate and the manifest need held-out images of the checkpoint's dataset; "
            "it has none (a folder dataset needs enough images for its validation split)"
        )


def search_set(data: Dataset, noise_std: float) -> EvalSet:
    """test[2000:3000] (fewer when the dataset is smaller, but never overlapping the standard test).

    A small folder dataset holds out no image beyond the standard test: the search then takes training
    images the calibration did not use, and where it used them all (a training split of at most
    CALIBRATION_IMAGES), the calibration's own images. Never an empty set: a folder of 300 images once
    left the search nothing to score, and the export stopped with "need at least one array to
    concatenate" after its fp32 files had replaced the folder's. The gate stays on held-out images.
    """
    images = data.val.images[SEARCH_START : SEARCH_START + SEARCH_IMAGES]
    if len(images) == 0:  # a small folder dataset: fall back to training images not used for calibration
        images = data.train.images[CALIBRATION_IMAGES : CALIBRATION_IMAGES + SEARCH_IMAGES]
    if len(images) == 0:  # the calibration took the whole training split
        images = data.train.images[:SEARCH_IMAGES]
    return EvalSet(
        f"search set noise {noise_std} seed {SEARCH_SEED}",
        to_float(images).numpy(),
        fixed_noisy(images, noise_std, SEARCH_SEED).numpy(),
    )


def calibration_images(data: Dataset, noise_std: float, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Real training images with the model's own noise (what the model sees in service): (N, 1, 28, 28)."""
    clean = to_float(data.train.images[:count]).numpy()
    return add_noise(clean, noise_std, np.random.default_rng(CALIBRATION_SEED))


def run_file(path: Path, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """The file's output for x on the CPU, through the runtime's own session opener."""
    session, _ = open_session(path, "cpu", threads or physical_cores(), spinning=False)
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: x[i : i + RUN_CHUNK]})[0] for i in range(0, len(x), RUN_CHUNK)]
    )


def quality(denoised: np.ndarray, clean: np.ndarray) -> Quality:
    out, ref = torch.from_numpy(denoised), torch.from_numpy(clean)
    return Quality(float(psnr_per_image(out, ref).mean()), float(ssim_per_image(out, ref).mean()))


def score_denoiser(path: Path, test: EvalSet, threads: int | None = None) -> Quality:
    return quality(run_file(path, test.noisy, threads), test.clean)


def score_pair(encoder: Path, decoder: Path, test: EvalSet, threads: int | None = None) -> Quality:
    """decoder(encoder(noisy)): how the `encode`/`decode` files of a variant denoise together."""
    return quality(run_file(decoder, run_file(encoder, test.noisy, threads), threads), test.clean)


def within_budget(losses_db: Sequence[float], budget_db: float) -> bool:
    """True when every loss is a number within the budget. Why not `max(losses) > budget`: a variant whose
    outputs hold NaN scores a NaN loss, and NaN > budget is False, so the gate passed it."""
    return all(math.isfinite(loss) and loss <= budget_db for loss in losses_db)


# ------------------------------------------------------------------------------------------ file tagging


def tag_variant(
    proto: onnx.ModelProto,
    variant: VariantSpec,
    excluded: Sequence[str] = (),
    roles: Sequence[str] = tuple(SPECS),
) -> None:
    """Point the `artifacts` metadata at this variant's siblings and record the variant in the file.

    `roles`: the files of the export (the photo model has only the denoiser)."""
    values = {
        KEY_ARTIFACTS: json.dumps({role: variant.file_name(role) for role in roles}, sort_keys=True),
        KEY_VARIANT: json.dumps(
            {
                "name": variant.name,
                "precision": variant.precision,
                "format": variant.fmt,
                "excluded_layers": list(excluded),
            },
            sort_keys=True,
        ),
    }
    kept = [p for p in proto.metadata_props if p.key not in values and p.key.startswith(PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)


# -------------------------------------------------------------------------------------------------- fp16


FP16_MAX = float(np.finfo(np.float16).max)  # 65504


def fp16_overflow(proto: onnx.ModelProto) -> str:
    """Why float16 cannot hold this graph's weights, naming the largest one; "" when it can.

    The converter clamps a float32 weight past float16's range to +-65504 without a word: the fp16 file
    would compute something else than the model, and without parity nothing would notice.
    """
    tensors = [(t.name, t) for t in proto.graph.initializer] + [
        (node.name or node.output[0], attr.t)
        for node in proto.graph.node
        if node.op_type == "Constant"
        for attr in node.attribute
        if attr.name == "value"
    ]
    worst = ("", 0.0)
    for name, tensor in tensors:
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(tensor)
        peak = float(np.abs(values[np.isfinite(values)]).max(initial=0.0))
        if peak > worst[1]:
            worst = (name, peak)
    if worst[1] <= FP16_MAX:
        return ""
    return (
        f"weight {worst[0]} holds {worst[1]:.6g}, past float16's largest value {FP16_MAX:g}: converting "
        "would clamp it and change the model (serve the fp32 files)"
    )


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and compute, float32 graph inputs/outputs (callers need no change).

    onnxruntime ships onnxconverter-common's converter as onnxruntime.transformers.float16, so no new
    dependency is needed.
    """
    half = convert_float_to_float16(proto, keep_io_types=True)
    topological_sort(half.graph)  # the converter appends its input Casts after their consumers
    onnx.checker.check_model(half, full_check=True)
    return half


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder graph.node so every node follows the producers of its inputs (stable otherwise)."""
    known = {i.name for i in graph.input} | {init.name for init in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or a dangling input near {pending[0].name}")
        for node in ready:
            known.update(node.output)
        ordered.extend(ready)
        pending = [n for n in pending if n not in ready]
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


# -------------------------------------------------------------------------------------------------- int8


def layer_key(initializer: str, role: str) -> str:
    """A weight's module path as the denoiser names it ("encoder.cnn.0"), whichever file and graph it is in.

    The exporter names initializers by parameter path, relative to the exported module: the encoder file
    says "cnn.0.weight" where the denoiser says "encoder.cnn.0.weight"; layers are named the denoiser's
    way so one exclusion list applies to all three files. The fast graph's rewrites name their weights
    after the weight they replace ("cnn.0.phase_weight", `ae_export.graphedit.rewritten_weight`), so a
    layer has one key in the fast and the portable graph too.
    """
    stem = re.sub(r"\.(?:[a-z]+_)?weight(?:_\d+)?$", "", initializer)  # _N: a second copy's fresh name
    return stem if role == "denoiser" else f"{role}.{stem}"


def weighted_layers(proto: onnx.ModelProto, role: str) -> dict[str, list[str]]:
    """Layer key -> names of the nodes with that layer's weights (the quantizable compute). A rewritten
    layer may be several nodes (the fast graph's entry layer: a MatMul and its bias Conv), and keeping
    the layer in float keeps them all."""
    inits = {init.name for init in proto.graph.initializer}
    layers: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in inits:
            layers.setdefault(layer_key(node.input[1], role), []).append(node.name)
    return layers


class _Batches(CalibrationDataReader):
    def __init__(self, name: str, x: np.ndarray, batch: int = 128) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(
            {name: x[i : i + batch]} for i in range(0, len(x), batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


@contextlib.contextmanager
def _quiet_quantizer():
    """onnxruntime.quantization logs advice ("consider pre-processing") on the root logger per call."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_int8(
    fp32_path: Path,
    role: str,
    calibration: np.ndarray,
    excluded: Sequence[str],
    workdir: Path,
    calibration_batch: int = 128,
) -> onnx.ModelProto:
    """Static QDQ int8 (per-channel weights, MinMax calibration on `calibration`), `excluded` kept float.

    Weights get 7 bits (`reduce_range`, values in [-64, 64]) so that the file computes the same on every
    x86 CPU. Why: without VNNI (AVX2, and AVX-512 before Cascade Lake) ONNX Runtime multiplies uint8
    activations by int8 weights with VPMADDUBSW, which adds each pair of products into a saturating int16;
    two products of 255 x 127 overflow it. On a 2-core AVX2 EPYC the all-int8 denoiser lost 0.50 dB against
    the fp32 file with 8-bit weights (a VNNI Xeon, which cannot saturate, lost 0.013 dB), and its outputs
    were 0.026 mean abs away from the same file run with ORT's optimizations off (the QDQ graph computed in
    float, which never saturates); with 7-bit weights 255 x 64 x 2 fits, and the loss was 0.009 dB with
    5e-6 mean abs between the two runs. A file made on a VNNI machine ships to CPUs without it.

    The calibrator keeps every intermediate tensor of a batch: photographs go one at a time."""
    proto = onnx.load(str(fp32_path))
    layers = weighted_layers(proto, role)
    out = workdir / f"{role}.int8.tmp.onnx"
    with _quiet_quantizer():
        quantize_static(
            str(fp32_path),
            str(out),
            _Batches(proto.graph.input[0].name, calibration, calibration_batch),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=True,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=[node for k in excluded for node in layers.get(k, [])],
        )
    return onnx.load(str(out))


def int8_runs_at(opset: int) -> bool:
    """Whether this onnxruntime runs, on the CPU, the QDQ nodes quantize_static writes at `opset`: a uint8
    QuantizeLinear/DequantizeLinear pair and a per-channel int8 DequantizeLinear."""
    scale, zero = numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(0), "z")
    weight = numpy_helper.from_array(np.zeros((2, 1), np.int8), "w")
    scales = numpy_helper.from_array(np.full(2, 0.1, np.float32), "ws")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        helper.make_node("DequantizeLinear", ["w", "ws"], ["wf"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "int8_probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 1])],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2, 1]) for n in ("y", "wf")],
        [scale, zero, weight, scales],
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    try:
        onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises bare pybind11 exception types (NotImplemented, Fail, ...)
        return False
    return True


def check_int8_opset(opset: int) -> None:
    """Raise ValueError, before anything is written, when int8 files made at `opset` would not run here.

    Why: the quantizer writes QuantizeLinear/DequantizeLinear at the model's opset, and onnx may offer a
    newer opset than onnxruntime has those kernels for (onnx 1.23 offers 28; onnxruntime 1.32 has no
    QuantizeLinear(28)). `ae-export --opset 28` then wrote the fp32 files, removed the folder's earlier
    variants and manifest, and stopped in the int8 search with exit 2, naming a temporary file.
    """
    if int8_runs_at(opset):
        return
    lower = next((o for o in range(opset - 1, 0, -1) if int8_runs_at(o)), None)
    advice = f"--opset {lower} or lower, or " if lower else ""
    raise ValueError(
        f"int8 at opset {opset}: onnxruntime {onnxruntime.__version__} has no QuantizeLinear/"
        f"DequantizeLinear kernel for it, so the int8 files could not run; use {advice}"
        "--variants without int8"
    )


@dataclass
class Int8Search:
    """The greedy search's outcome: layers kept in float and every trial's loss on the search set."""

    excluded: list[str]
    search_loss_db: float
    target_db: float
    trials: list[dict[str, object]] = field(default_factory=list)


def search_int8(
    fp32_denoiser: Path,
    calibration: np.ndarray,
    search: EvalSet,
    budget_db: float,
    log: Callable[[str], None] = print,
    threads: int | None = None,
) -> Int8Search:
    """Greedy: quantize all; while the loss exceeds SEARCH_MARGIN * budget, keep in float the layer whose
    exclusion recovers most. Stops when no exclusion helps any more or every layer is float."""
    target = budget_db * SEARCH_MARGIN
    base = score_denoiser(fp32_denoiser, search, threads).psnr_db
    candidates = list(weighted_layers(onnx.load(str(fp32_denoiser)), "denoiser"))
    with tempfile.TemporaryDirectory(prefix="ae-int8-") as tmp:
        work = Path(tmp)

        def loss(excluded: list[str]) -> float:
            proto = quantize_int8(fp32_denoiser, "denoiser", calibration, excluded, work)
            path = work / "trial.onnx"
            onnx.save(proto, str(path))
            return base - score_denoiser(path, search, threads).psnr_db

        excluded: list[str] = []
        current = loss(excluded)
        result = Int8Search(excluded, current, target, [{"excluded": [], "loss_db": current}])
        log(f"int8 search: all layers quantized loses {current:.3f} dB (target <= {target:.3f} dB)")
        while current > target:
            remaining = [c for c in candidates if c not in excluded]
            if not remaining:
                break
            scored = []
            for layer in remaining:
                trial = loss([*excluded, layer])
                result.trials.append({"excluded": [*excluded, layer], "loss_db": trial})
                scored.append((trial, layer))
            best, layer = min(scored)
            if best >= current:
                log(f"int8 search: no single exclusion improves on {current:.3f} dB; stopping")
                break
            excluded.append(layer)
            current = best
            log(f"int8 search: keep {layer} in float -> loses {current:.3f} dB")
        result.search_loss_db = current
    return result
