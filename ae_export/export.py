"""Export encoder, decoder and the full denoiser to ONNX with a dynamic batch axis.

Uses torch's current exporter (`dynamo=True` with `dynamic_shapes`), then checks each graph (ONNX checker
with full_check, strict shape inference) and guards the batch axis: every input and output must keep the
symbolic `batch` dimension and no Reshape may have baked in the export batch size (the decoder's Unflatten
is the known trap). Files are written atomically and only after parity passed, so a failed export leaves
the previous files (if any) untouched and no half-written `.onnx` behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

import ae_export
from ae_export.specs import BATCH_AXIS, DEFAULT_OPSET, IMAGE_RANGE, SPECS, ArtifactSpec
from runtimes.fileio import atomic_write_bytes
from runtimes.metadata import ModelMetadata, TensorContract, encode_metadata
from runtimes.noise import noise_model
from train.checkpoint import Checkpoint
from train.model import DenoisingAutoencoder

MIN_OPSET = 18  # torch's dynamo exporter emits opset 18 and newer


class ExportError(RuntimeError):
    """The export could not produce a trustworthy file; the message names the artifact and the fault."""


@dataclass(frozen=True)
class ExportedArtifact:
    spec: ArtifactSpec
    proto: onnx.ModelProto
    example_batch: int


def max_supported_opset() -> int:
    return onnx.defs.onnx_opset_version()


def check_opset(opset: int) -> None:
    top = max_supported_opset()
    if not MIN_OPSET <= opset <= top:
        raise ExportError(
            f"opset {opset} is not supported here: valid opsets are {MIN_OPSET}..{top} "
            f"(torch {torch.__version__}, onnx {onnx.__version__})"
        )


def module_for(model: DenoisingAutoencoder, spec: ArtifactSpec) -> torch.nn.Module:
    """The submodule an artifact exports: the role names it."""
    return {"encoder": model.encoder, "decoder": model.decoder, "denoiser": model}[spec.role]


def choose_example_batch(model: DenoisingAutoencoder) -> int:
    """A batch size >= 2 that equals no dimension of the model, so a baked-in batch is detectable."""
    dims = model.config.dims()  # every channel count, side and feature size of this shape
    return next(b for b in range(5, 1 << 16) if b not in dims)


def _tensor_shape(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim]


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def check_batch_axis(proto: onnx.ModelProto, spec: ArtifactSpec, example_batch: int) -> None:
    """Fail if the batch axis came out static anywhere, or a Reshape baked in the export batch size."""
    graph = proto.graph
    for value, name in ((graph.input[0], spec.input_name), (graph.output[0], spec.output_name)):
        if value.name != name:
            raise ExportError(f"{spec.file_name}: graph tensor is named {value.name!r}, spec says {name!r}")
        shape = _tensor_shape(value)
        if not shape or shape[0] != BATCH_AXIS:
            raise ExportError(
                f"{spec.file_name}: {value.name} has shape {shape}; its first axis must be the symbolic "
                f"{BATCH_AXIS!r}"
            )
    for value in graph.value_info:
        shape = _tensor_shape(value)
        if shape and shape[0] == example_batch:
            raise ExportError(
                f"{spec.file_name}: intermediate {value.name} has a static batch of {example_batch} "
                f"(the export batch): {shape}"
            )
    constants = _constant_values(graph)
    for node in graph.node:
        if node.op_type == "Reshape" and node.input[1] in constants:
            target = constants[node.input[1]].reshape(-1)
            if target.size and int(target[0]) == example_batch:
                raise ExportError(
                    f"{spec.file_name}: Reshape {node.name} has the export batch {example_batch} baked "
                    f"into its target shape {target.tolist()}; it must be -1 or computed"
                )


def _export_one(
    model: DenoisingAutoencoder, spec: ArtifactSpec, opset: int, example_batch: int
) -> onnx.ModelProto:
    module = module_for(model, spec).eval()
    sample = spec.sample_shape(spec.input_kind, model.config.latent_dim)
    example = torch.rand((example_batch, *sample))
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=1 << 20)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # the exporter narrates its steps on stdout
            program = torch.onnx.export(
                module,
                (example,),
                None,
                dynamo=True,
                opset_version=opset,
                input_names=[spec.input_name],
                output_names=[spec.output_name],
                dynamic_shapes=({0: batch},),
                optimize=True,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many types; re-raise as one, keeping the cause
        raise ExportError(f"{spec.file_name}: torch.onnx.export failed: {err}\n{log.getvalue()}") from err
    proto = program.model_proto
    for node in proto.graph.node:  # stack traces with local paths: noise in a shipped file
        del node.metadata_props[:]
    return proto


def _metadata(checkpoint: Checkpoint, spec: ArtifactSpec, opset: int) -> dict[str, str]:
    config = checkpoint.model_config
    latent = config.latent_dim
    train_config = checkpoint.train_config
    noise_std = float(train_config.get("noise_factor", 0.3))
    last = checkpoint.metrics[-1] if checkpoint.metrics else {}

    def contract(kind: str, name: str, shape: tuple[int | str, ...]) -> TensorContract:
        if kind == "image":
            return TensorContract(name, shape, "float32", "NCHW", IMAGE_RANGE)
        return TensorContract(name, shape, "float32", "NC", None)

    import onnxscript  # versions for provenance only

    versions: dict[str, str] = {
        "ae_export": ae_export.__version__,
        "torch": str(torch.__version__),
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
    }
    with contextlib.suppress(ImportError):
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    meta = ModelMetadata(
        role=spec.role,
        model_config=config.to_dict(),
        input=contract(spec.input_kind, spec.input_name, spec.input_shape(latent)),
        output=contract(spec.output_kind, spec.output_name, spec.output_shape(latent)),
        artifacts={role: s.file_name for role, s in SPECS.items()},
        noise={**noise_model(noise_std), "target": train_config.get("target", "clean")},
        training={
            "dataset": checkpoint.dataset,
            "epochs": checkpoint.epoch,
            "config": train_config,
            "final_metrics": {k: v for k, v in last.items() if isinstance(v, (int, float))},
        },
        provenance={
            "checkpoint_sha256": checkpoint.sha256,
            "checkpoint": str(checkpoint.path) if checkpoint.path else None,
            "opset": opset,
            "versions": versions,
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
        tolerance={provider: tol.to_dict() for provider, tol in spec.tolerances.items()},
    )
    return encode_metadata(meta)


def export_artifact(
    checkpoint: Checkpoint, spec: ArtifactSpec, opset: int = DEFAULT_OPSET
) -> ExportedArtifact:
    """Export, annotate and check one artifact in memory; raises ExportError naming the file."""
    check_opset(opset)
    model = checkpoint.build_model()
    example_batch = choose_example_batch(model)
    proto = _export_one(model, spec, opset, example_batch)
    proto.producer_name = "ae-export"
    proto.producer_version = ae_export.__version__
    latent = model.config.latent_dim
    proto.doc_string = (
        f"ae-export {spec.role}: {spec.input_name} {list(spec.input_shape(latent))} -> "
        f"{spec.output_name} {list(spec.output_shape(latent))}; see metadata_props ae_export.*"
    )
    onnx.helper.set_model_props(proto, _metadata(checkpoint, spec, opset))
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"{spec.file_name}: ONNX check failed: {err}") from err
    check_batch_axis(proto, spec, example_batch)
    return ExportedArtifact(spec, proto, example_batch)


def write_model(proto: onnx.ModelProto, path: Path) -> None:
    atomic_write_bytes(path, proto.SerializeToString())


@contextlib.contextmanager
def staging_dir(out_dir: Path):
    """A temporary folder inside out_dir (same filesystem, so the final renames are atomic)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def export_all(
    checkpoint: Checkpoint,
    out_dir: str | Path,
    opset: int = DEFAULT_OPSET,
    verify: Callable[[Path], Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Export every artifact; `verify(staged_dir)` (parity) must pass before the files are moved in place.

    `verify` raises to reject the export; the previous files in `out_dir`, if any, are then left as they were.
    """
    out_dir = Path(out_dir)
    check_opset(opset)
    try:
        with staging_dir(out_dir) as staged:
            for spec in SPECS.values():
                artifact = export_artifact(checkpoint, spec, opset)
                write_model(artifact.proto, staged / spec.file_name)
                size = (staged / spec.file_name).stat().st_size
                log(f"exported {spec.file_name}: {size / 1024:.0f} KiB, opset {opset}, batch axis ok")
            if verify is not None:
                verify(staged)
            paths = {}
            for role, spec in SPECS.items():
                paths[role] = out_dir / spec.file_name
                (staged / spec.file_name).replace(paths[role])
    except PermissionError as err:
        raise ExportError(f"{out_dir}: cannot write there ({err})") from err
    return paths
