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
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper

import ae_export
from ae_export.cpu import AUTO, resolve_cpu_target
from ae_export.fastgraph import fast_graph, graph_kind
from ae_export.specs import (
    ARCH_SPECS,
    BATCH_AXIS,
    COMPAT_JSON,
    DEFAULT_OPSET,
    HEIGHT_AXIS,
    IMAGE_RANGE,
    PARITY_JSON,
    REJECTED_JSON,
    REQUIRED_OPERATORS,
    USABILITY_REPORT,
    WIDTH_AXIS,
    ArtifactSpec,
    specs_for,
)
from ae_export.subnormals import flush_tiny_weights
from ae_export.tconv import UnsupportedGraphError
from runtimes.fileio import atomic_write_bytes, unusable_folder
from runtimes.manifest import MANIFEST_FILE, VARIANT_SUFFIXES
from runtimes.metadata import ModelMetadata, TensorContract, encode_metadata, parse_metadata
from runtimes.noise import noise_model
from train.checkpoint import Checkpoint
from train.fcn import receptive_radius as fcn_receptive_radius
from train.model import DenoisingAutoencoder, ModelConfig

MIN_OPSET = 18  # torch's dynamo exporter emits opset 18 and newer
# "fast": transposed convolutions rewritten into Conv + Col2Im (ae_export.fastgraph), measured 1.17x
# faster through ONNX Runtime's CPU provider on the whole denoiser, one thread, batch 256 (best of 15
# interleaved rounds), and, for AVX-512 targets, the encoder's 8-channel first Conv stacked by phase
# with the next one (ae_export.stackconv, a further 1.09x; see ae_export.cpu); "portable": the graph as
# torch exports it (ConvTranspose), for consumers without Col2Im (OpenCV DNN, some mobile EPs).
GRAPHS = ("fast", "portable")
DEFAULT_GRAPH = "fast"


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


def module_for(model: torch.nn.Module, spec: ArtifactSpec) -> torch.nn.Module:
    """The submodule an artifact exports: the role names it (the whole model is the denoiser)."""
    if spec.role == "denoiser":
        return model
    assert isinstance(model, DenoisingAutoencoder), f"{spec.role} exists only for the lecture's model"
    return {"encoder": model.encoder, "decoder": model.decoder}[spec.role]


def size_multiple(config: ModelConfig) -> int:
    """What the input height and width must be multiples of (1: fixed-size models)."""
    return 2**config.fcn_levels if config.arch == "fcn" else 1


def receptive_radius(config: ModelConfig) -> int | None:
    """How far an output pixel reaches into the input, for any-size models (None: fixed-size models,
    which the runtime never tiles)."""
    return fcn_receptive_radius(config.fcn_levels, config.fcn_depth) if config.arch == "fcn" else None


def choose_example_batch(config: ModelConfig) -> int:
    """A batch size >= 2 that equals no dimension of the model, so a baked-in batch is detectable."""
    dims = config.dims()  # every channel count, side and feature size of this shape
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
    """Fail if the batch axis (or, for any-size specs, height/width) came out static anywhere, or a Reshape
    baked in the export batch size."""
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
        if spec.dynamic_size and list(shape[1:]) != list(spec.image_shape):
            raise ExportError(
                f"{spec.file_name}: {value.name} has shape {shape}; expected "
                f"{[BATCH_AXIS, *spec.image_shape]} (symbolic height and width)"
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
    model: torch.nn.Module, config: ModelConfig, spec: ArtifactSpec, opset: int, example_batch: int
) -> onnx.ModelProto:
    module = module_for(model, spec).eval()
    sample = spec.sample_shape(spec.input_kind, config.latent_dim)
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=1 << 20)
    axes: dict[int, Any] = {0: batch}
    if spec.dynamic_size and spec.input_kind == "image":
        # Example height/width: multiples of the stride that equal no other dimension (5 and 7 strides).
        multiple = size_multiple(config)
        sample = (1, 5 * multiple, 7 * multiple)
        axes[2] = torch.export.Dim(HEIGHT_AXIS, min=1, max=1 << 16)
        axes[3] = torch.export.Dim(WIDTH_AXIS, min=1, max=1 << 16)
    example = torch.rand((example_batch, *sample))
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
                dynamic_shapes=(axes,),
                optimize=True,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many types; re-raise as one, keeping the cause
        raise ExportError(f"{spec.file_name}: torch.onnx.export failed: {err}\n{log.getvalue()}") from err
    proto = program.model_proto
    for node in proto.graph.node:  # stack traces with local paths: noise in a shipped file
        del node.metadata_props[:]
    return proto


def _metadata(
    checkpoint: Checkpoint, spec: ArtifactSpec, opset: int, graph: str, cpu_target: str
) -> dict[str, str]:
    config = checkpoint.model_config
    latent = config.latent_dim
    train_config = checkpoint.train_config
    noise_std = float(train_config.get("noise_factor", 0.3))
    last = checkpoint.metrics[-1] if checkpoint.metrics else {}

    def contract(kind: str, name: str, shape: tuple[int | str, ...]) -> TensorContract:
        if kind == "image":
            return TensorContract(name, shape, "float32", "NCHW", IMAGE_RANGE, size_multiple(config))
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
        artifacts={role: s.file_name for role, s in specs_for(config.arch).items()},
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
            "cpu_target": cpu_target,
            "versions": versions,
            "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
        tolerance={provider: tol.to_dict() for provider, tol in spec.tolerances.items()},
        graph=graph,
        receptive_radius=receptive_radius(config) if spec.dynamic_size else None,
    )
    return encode_metadata(meta)


def check_graph(graph: str) -> None:
    if graph not in GRAPHS:
        raise ExportError(f"graph {graph!r} is not known: valid graphs are {', '.join(GRAPHS)}")


def export_artifact(
    checkpoint: Checkpoint,
    spec: ArtifactSpec,
    opset: int = DEFAULT_OPSET,
    graph: str = DEFAULT_GRAPH,
    cpu_target: str = AUTO,
) -> ExportedArtifact:
    """Export, annotate and check one artifact in memory; raises ExportError naming the file.

    graph="fast" rewrites the transposed convolutions and, where `cpu_target`'s convolution blocks are
    wider than the encoder's first Conv (AVX-512), stacks it with the next one (ae_export.fastgraph.
    fast_graph); such an encoder holds only Convs and runs everywhere, but its metadata says "fast"
    because its graph is no longer torch's. The resolved target is recorded in the provenance.
    """
    check_opset(opset)
    check_graph(graph)
    target = resolve_cpu_target(cpu_target)
    model = checkpoint.build_model()
    example_batch = choose_example_batch(checkpoint.model_config)
    proto = _export_one(model, checkpoint.model_config, spec, opset, example_batch)
    # The Col2Im rewrite is measured and verified for the lecture's fixed-size graph; any-size graphs keep
    # torch's ConvTranspose (their 2x2 stride-2 up-sampling has no overlapping windows to fold anyway).
    if graph == "fast" and not spec.dynamic_size:
        try:
            proto = fast_graph(proto, target)
        except UnsupportedGraphError as err:
            raise ExportError(
                f"{spec.file_name}: fast graph impossible ({err}); use --graph portable"
            ) from err
    flush_tiny_weights(proto)  # weight decay leaves ~1e-38 weights whose products slow x86 kernels
    proto.producer_name = "ae-export"
    proto.producer_version = ae_export.__version__
    latent = checkpoint.model_config.latent_dim
    proto.doc_string = (
        f"ae-export {spec.role}: {spec.input_name} {list(spec.input_shape(latent))} -> "
        f"{spec.output_name} {list(spec.output_shape(latent))}; see metadata_props ae_export.*"
    )
    onnx.helper.set_model_props(proto, _metadata(checkpoint, spec, opset, graph_kind(proto), target))
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"{spec.file_name}: ONNX check failed: {err}") from err
    check_batch_axis(proto, spec, example_batch)
    return ExportedArtifact(spec, proto, example_batch)


def write_model(proto: onnx.ModelProto, path: Path) -> None:
    atomic_write_bytes(path, proto.SerializeToString())


def check_out_dir(out_dir: Path) -> None:
    """The export writes into a folder: `out_dir` must be one, or a new path under one."""
    problem = unusable_folder(out_dir)
    if problem is not None:
        raise ExportError(problem)


@contextlib.contextmanager
def staging_dir(out_dir: Path):
    """A temporary folder inside out_dir (same filesystem, so the final renames are atomic)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def check_folder_holds(checkpoint: Checkpoint, out_dir: Path) -> str | None:
    """Raise ValueError when the folder's denoiser says it is an export of another model (another
    model_config); return a warning when it came from another checkpoint of that shape (other weights:
    parity will tell), else None. A file that cannot be read is left to parity, which fails on it.

    Why before parity: a folder of a latent-7 model checked against a latent-4 checkpoint ended in an
    anonymous "shape mismatch", and the photo checkpoint against a lecture folder in an ONNX Runtime
    traceback with parity's exit code; the files say what they hold (`ae_export.*` metadata).
    """
    path = out_dir / specs_for(checkpoint.model_config.arch)["denoiser"].file_name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run `ae-export` first)")
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        meta = parse_metadata(props, str(path))
    except (OSError, ValueError, DecodeError):  # unreadable, not ONNX, or no ae-export metadata
        return None  # parity fails on it, naming the file (exit 1, as for any file that does not run)
    want = checkpoint.model_config.to_dict()
    if meta.model_config != want:
        differ = sorted(k for k in {*want, *meta.model_config} if want.get(k) != meta.model_config.get(k))
        shown = ", ".join(f"{k} {meta.model_config.get(k)!r} vs {want.get(k)!r}" for k in differ)
        raise ValueError(
            f"{out_dir} holds an export of another model than {checkpoint.path or 'the checkpoint'} "
            f"(file vs checkpoint: {shown}); pass the checkpoint it was exported from"
        )
    exported_from = meta.provenance.get("checkpoint_sha256")
    if exported_from and exported_from != checkpoint.sha256:
        return (
            f"warning: {path.name} was exported from another checkpoint (sha256 {exported_from[:12]}, "
            f"this one {checkpoint.sha256[:12]}): parity compares it with this one's weights"
        )
    return None


def drop_derived_files(
    out_dir: Path, log: Callable[[str], None] | None = None, keep: Collection[str] = ()
) -> list[str]:
    """Remove what an earlier export derived from its fp32 files: every variant file of every role any
    architecture exports, the manifest, parity's reports and the .ort extras, except the names in `keep`
    (the variant writers keep the `parity.json` just written for these fp32 files). Returns the names
    removed.

    Why all of them, whatever this export will write: new fp32 files make every derived file describe
    another model. Left behind, a lecture export's `denoiser.fp16.onnx` or `denoiser.portable.onnx` in a
    folder that now holds the photo model was picked up by `Denoiser(folder, variant="fp16")` (and, on
    CUDA, as the folder's portable twin by default), and a `parity.json` from an earlier model stood
    beside files it never checked; so did `compat.json`, whose rows said OpenCV ran a portable
    `denoiser.onnx` that a fast export had replaced with one OpenCV refuses.
    """
    roles = sorted({role for specs in ARCH_SPECS.values() for role in specs})
    names = [
        f"{role}{suffix}" for role in roles for name, suffix in VARIANT_SUFFIXES.items() if name != "fp32"
    ]
    names += [MANIFEST_FILE, PARITY_JSON, REJECTED_JSON, REQUIRED_OPERATORS, USABILITY_REPORT, COMPAT_JSON]
    removed = []
    for name in names:
        path = out_dir / name
        if name in keep:
            continue
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(name)
    if removed and log is not None:
        log(
            f"removed {len(removed)} file(s) an earlier export derived from its own fp32 files: "
            + ", ".join(removed)
        )
    return removed


def export_all(
    checkpoint: Checkpoint,
    out_dir: str | Path,
    opset: int = DEFAULT_OPSET,
    verify: Callable[[Path], Any] | None = None,
    log: Callable[[str], None] = print,
    graph: str = DEFAULT_GRAPH,
    cpu_target: str = AUTO,
) -> dict[str, Path]:
    """Export every artifact; `verify(staged_dir)` (parity) must pass before the files are moved in place.

    `verify` raises to reject the export; the previous files in `out_dir`, if any, are then left as they were.
    Before the new files go in, whatever an earlier export derived from its own (variants, manifest,
    parity reports) is removed (`drop_derived_files`); the caller writes this export's.
    """
    out_dir = Path(out_dir)
    check_opset(opset)
    check_graph(graph)
    cpu_target = resolve_cpu_target(cpu_target)
    check_out_dir(out_dir)
    try:
        with staging_dir(out_dir) as staged:
            specs = specs_for(checkpoint.model_config.arch)
            for spec in specs.values():
                artifact = export_artifact(checkpoint, spec, opset, graph, cpu_target)
                write_model(artifact.proto, staged / spec.file_name)
                size = (staged / spec.file_name).stat().st_size
                kind = graph_kind(artifact.proto)
                axes = "batch, height and width axes" if spec.dynamic_size else "batch axis"
                log(
                    f"exported {spec.file_name}: {size / 1024:.0f} KiB, opset {opset}, {kind} graph"
                    f"{f' (tuned for {cpu_target})' if kind == 'fast' else ''}, {axes} ok"
                )
            if verify is not None:
                verify(staged)
            # Before the new files go in: a crash in between leaves the old fp32 files alone, not a mix.
            drop_derived_files(out_dir, log)
            paths = {}
            for role, spec in specs.items():
                paths[role] = out_dir / spec.file_name
                (staged / spec.file_name).replace(paths[role])
            # Files of roles this model does not have belong to an earlier export of another model.
            for name in sorted(
                {s.file_name for s in specs_for("lecture").values()} - {s.file_name for s in specs.values()}
            ):
                if (out_dir / name).is_file():
                    (out_dir / name).unlink()
                    log(
                        f"removed {name}: left by an earlier export; this model has no "
                        f"{name.removesuffix('.onnx')}"
                    )
    except PermissionError as err:
        raise ExportError(f"{out_dir}: cannot write there ({err})") from err
    return paths
