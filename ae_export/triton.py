"""Triton Inference Server model configs derived from the exported ONNX files (the repository writer,
its checker and the `ae-export triton` CLI are in `ae_export.triton_repo`).

Why derive, never type: a `config.pbtxt` that disagrees with its `model.onnx` (a renamed output, a
latent size changed by retraining) makes Triton refuse the model at load time, on the serving machine,
long after export. So every field comes from the ONNX graph and its `ae_export.*` metadata: tensor
names, data types, dims without the batch axis, and batching on because the graph's batch axis is
symbolic. The batching policy has the meaning and defaults of `runtimes.MicroBatcher` (Triton's
dynamic batcher is the same idea across processes): `max_batch_size` and `max_queue_delay_us` are read
from its signature, so the two cannot drift apart.

Every config is validated against Triton's own protobuf schema (`model_config_pb2` from tritonclient,
the `triton` extra) plus the rules Triton applies when it loads a model, before anything is written;
an invalid config is refused. Files are written atomically and `model.onnx` is a byte copy of the
exported file, whose path and sha256 the config's header records. A repository holds one export, since
Triton serves every folder in it: folders an earlier run wrote (that header) are removed, and a folder
without it is not ours, so the write is refused. `--check` re-derives each config from its `model.onnx`,
compares that file's sha256 with the header's and the export's, and names folders the export lacks.

Variants: where the export folder holds a `manifest.json` (fp16/int8/.ort variants), every listed
`.onnx` variant becomes one more model, `<role>_<variant>` (e.g. `denoiser_fp16`). `.ort` files are
left out: Triton's ONNX Runtime backend loads ONNX protobuf files only. With `--kind gpu` the models
`encoder`, `decoder` and `denoiser` hold the export's portable twins where it has them: ONNX Runtime's
CUDA provider has no Col2Im, so the fast graph would run part of every request on the CPU; and their
configs carry the runtime's CUDA provider options (`runtimes.sessions.cuda_options`: TF32 off, cuDNN's
heuristic algorithm choice) as a "cuda" execution accelerator, so Triton computes what parity checked.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from google.protobuf import text_format
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2 as mc

from ae_export.specs import BATCH_AXIS
from ae_export.targets import ExportedFile, exported_files
from runtimes.batching import MicroBatcher
from runtimes.manifest import DEFAULT_VARIANT, PORTABLE_VARIANT
from runtimes.metadata import TensorContract, parse_metadata
from runtimes.sessions import cuda_options

PLATFORM = "onnxruntime_onnx"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
VERSION = "1"
DEFAULT_ONNX_DIR = "artifacts/onnx"
MARKER = "# Written by `ae-export triton`"  # the first line of every config.pbtxt we write: "ours"
SOURCE_LINE = re.compile(r"^# source: (.+)$", re.MULTILINE)
SHA256_LINE = re.compile(r"^# .*sha256:? ([0-9a-f]{64})", re.MULTILINE)  # also the older one-line header
KINDS = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}
_NO_CUDA_KERNEL = {"Col2Im"}  # in the graphs ae-export writes
_BATCHER = inspect.signature(MicroBatcher.__init__).parameters
DEFAULT_MAX_BATCH_SIZE: int = _BATCHER["max_batch_size"].default
DEFAULT_MAX_QUEUE_DELAY_US: int = _BATCHER["max_queue_delay_us"].default

# ONNX element type -> Triton data type (the subset an ONNX model's I/O can use).
_DTYPES = {
    onnx.TensorProto.FLOAT: mc.TYPE_FP32,
    onnx.TensorProto.FLOAT16: mc.TYPE_FP16,
    onnx.TensorProto.BFLOAT16: mc.TYPE_BF16,
    onnx.TensorProto.DOUBLE: mc.TYPE_FP64,
    onnx.TensorProto.INT8: mc.TYPE_INT8,
    onnx.TensorProto.INT16: mc.TYPE_INT16,
    onnx.TensorProto.INT32: mc.TYPE_INT32,
    onnx.TensorProto.INT64: mc.TYPE_INT64,
    onnx.TensorProto.UINT8: mc.TYPE_UINT8,
    onnx.TensorProto.UINT16: mc.TYPE_UINT16,
    onnx.TensorProto.UINT32: mc.TYPE_UINT32,
    onnx.TensorProto.UINT64: mc.TYPE_UINT64,
    onnx.TensorProto.BOOL: mc.TYPE_BOOL,
    onnx.TensorProto.STRING: mc.TYPE_STRING,
}


class TritonConfigError(ValueError):
    """A config that Triton's schema or load-time rules reject, or an ONNX file a config cannot describe."""


@dataclass(frozen=True)
class Options:
    """The serving choices that are not properties of the model file."""

    kind: str = "cpu"
    warmup: bool = False
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US


@dataclass(frozen=True)
class Mismatch:
    model: str
    field: str
    config: str
    derived: str = ""  # empty: nothing derived to compare with; `config` says what is wrong

    def __str__(self) -> str:
        if not self.derived:  # the config itself is unusable: nothing to compare with
            return f"{self.model}: {self.field}: {self.config}"
        return f"{self.model}: {self.field}: config.pbtxt has {self.config}, model.onnx gives {self.derived}"


# ---------------------------------------------------------------- derive


def _io(value: onnx.ValueInfoProto, contract: TensorContract, source: str) -> tuple[int, list[int]]:
    """(Triton data type, dims without the batch axis) of one graph input/output, checked against metadata."""
    tensor = value.type.tensor_type
    if tensor.elem_type not in _DTYPES:
        raise TritonConfigError(
            f"{source}: {value.name}: ONNX element type {tensor.elem_type} has no Triton type"
        )
    dims = list(tensor.shape.dim)
    if not dims or dims[0].dim_param != BATCH_AXIS:
        raise TritonConfigError(
            f"{source}: {value.name}: first axis must be the symbolic {BATCH_AXIS!r} axis for Triton "
            f"batching; got {dims[0] if dims else 'a scalar'}"
        )
    sample = [d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:]]  # -1: Triton's "any size"
    expected = [-1 if d is None else d for d in contract.sample_shape]  # None: a symbolic axis
    if value.name != contract.name or sample != expected:
        raise TritonConfigError(
            f"{source}: graph tensor {value.name!r} {sample} disagrees with its ae_export metadata "
            f"{contract.name!r} {expected}; re-export the file"
        )
    if onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name != contract.dtype:
        raise TritonConfigError(
            f"{source}: {value.name}: graph dtype {onnx.TensorProto.DataType.Name(tensor.elem_type)} "
            f"disagrees with metadata dtype {contract.dtype}"
        )
    return _DTYPES[tensor.elem_type], sample


def derive_config(path: Path, name: str, options: Options) -> mc.ModelConfig:
    """The Triton ModelConfig of one exported ONNX file; raises TritonConfigError if it cannot be served."""
    model = onnx.load(str(path), load_external_data=False)
    meta = parse_metadata({p.key: p.value for p in model.metadata_props}, str(path))
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise TritonConfigError(
            f"{path}: expected one input and one output; got {len(inputs)} and {len(graph.output)}"
        )
    config = mc.ModelConfig(name=name, platform=PLATFORM, max_batch_size=options.max_batch_size)
    for value, contract, field in (
        (inputs[0], meta.input, config.input),
        (graph.output[0], meta.output, config.output),
    ):
        dtype, dims = _io(value, contract, str(path))
        field.add(name=value.name, data_type=dtype, dims=dims)
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    config.instance_group.add(count=1, kind=KINDS[options.kind])
    if options.kind == "gpu":
        # The runtime's CUDA provider options, which parity certifies: TF32 off (ONNX Runtime turns it on
        # by default, ~1e-3 relative error in float32) and cuDNN's heuristic algorithm choice. Triton's
        # ONNX Runtime backend hands a "cuda" accelerator's parameters to the CUDA provider as they are.
        cuda = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="cuda")
        for key, value in cuda_options().items():
            cuda.parameters[key] = value
    if options.warmup:
        # Triton runs these before it marks the model ready: the first real request then meets warm
        # kernels and allocated arenas, at the smallest and the largest batch the batcher forms.
        for batch in sorted({1, options.max_batch_size}):
            warm = config.model_warmup.add(name=f"random_batch_{batch}", batch_size=batch)
            multiple = meta.input.size_multiple  # a variable height/width warms at the lecture's 28 px,
            size = -(-28 // multiple) * multiple  # rounded up to a size the model takes
            for tensor in config.input:
                dims = [size if d == -1 else d for d in tensor.dims]  # warmup data needs real sizes
                warm.inputs[tensor.name].CopyFrom(
                    mc.ModelWarmup.Input(data_type=tensor.data_type, dims=dims, random_data=True)
                )
    return config


# ---------------------------------------------------------------- validate


def load_rule_problems(config: mc.ModelConfig) -> Iterator[str]:
    """The load-time rules Triton applies beyond the schema (model_config_utils.cc), for the fields we use."""
    if not config.name:
        yield "name is empty"
    if config.platform != PLATFORM:
        yield f"platform {config.platform!r} is not {PLATFORM!r}"
    if config.max_batch_size < 1:
        yield f"max_batch_size {config.max_batch_size} < 1 (the model has a dynamic batch axis)"
    names = [t.name for t in (*config.input, *config.output)]
    if len(set(names)) != len(names):
        yield f"tensor names are not unique: {names}"
    for kind, tensors in (("input", config.input), ("output", config.output)):
        if not tensors:
            yield f"no {kind}"
        for i, tensor in enumerate(tensors):
            if not tensor.name:
                yield f"{kind}[{i}].name is empty"
            if tensor.data_type == mc.TYPE_INVALID:
                yield f"{kind}[{i}].data_type is TYPE_INVALID"
            if not tensor.dims or any(d < 1 and d != -1 for d in tensor.dims):
                yield f"{kind}[{i}].dims {list(tensor.dims)}: each dim must be > 0 or -1"
    if not config.instance_group:
        yield "no instance_group"
    for i, group in enumerate(config.instance_group):
        if group.count < 1 or group.kind not in KINDS.values():
            yield f"instance_group[{i}]: count {group.count}, kind {group.kind}: need count >= 1, CPU or GPU"
    inputs = {t.name: t for t in config.input}
    for i, warm in enumerate(config.model_warmup):
        if not 1 <= warm.batch_size <= config.max_batch_size:
            yield f"model_warmup[{i}].batch_size {warm.batch_size} not in 1..{config.max_batch_size}"
        if set(warm.inputs) != set(inputs):
            yield f"model_warmup[{i}] inputs {sorted(warm.inputs)} != model inputs {sorted(inputs)}"
        for key, value in warm.inputs.items():
            model = inputs.get(key)
            fits = (
                model is not None
                and len(value.dims) == len(model.dims)
                and value.data_type == model.data_type
            )
            if not fits or any(
                w < 1 or (d != -1 and w != d) for w, d in zip(value.dims, model.dims, strict=True)
            ):
                yield f"model_warmup[{i}].inputs[{key}] type/dims {list(value.dims)} do not fit the input"


def parse_config(text: str, source: str = CONFIG_FILE) -> mc.ModelConfig:
    """Parse with Triton's schema (unknown fields and bad values raise) and apply its load-time rules."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise TritonConfigError(f"{source}: not a valid Triton model config: {err}") from err
    problems = list(load_rule_problems(config))
    if problems:
        raise TritonConfigError(f"{source}: invalid Triton model config: {'; '.join(problems)}")
    return config


def render_config(config: mc.ModelConfig, model_sha256: str, source: Path | None = None) -> str:
    """The config.pbtxt text, validated by parsing it back: raises rather than return an invalid one.
    Its header marks the folder as ours and records the exported file (path, sha256) model.onnx copies."""
    header = (
        f"{MARKER}: {VERSION}/{MODEL_FILE} is a byte copy of the exported file\n"
        + (f"# source: {source}\n" if source is not None else "")
        + f"# sha256: {model_sha256}\n"
        "# Every field derives from the ONNX graph and its ae_export metadata; dynamic_batching has\n"
        "# runtimes.MicroBatcher's meaning and defaults (an empty stanza: max_queue_delay_microseconds 0).\n"
        "# Check it against the model and the export with `ae-export triton --check <repository>`.\n"
    )
    text = header + text_format.MessageToString(config, use_short_repeated_primitives=True)
    if parse_config(text, config.name) != config:
        raise TritonConfigError(f"{config.name}: config does not survive a text round trip")
    return text


# ---------------------------------------------------------------- sources, compare


def sources(onnx_dir: Path, kind: str = "cpu") -> list[ExportedFile]:
    """What Triton's ONNX Runtime backend can serve: every exported ONNX file (.ort files are left out).

    For GPU instances the base models take the portable twins' files, which are not served twice.
    """
    files = [f for f in exported_files(onnx_dir) if f.onnx]
    twins = {f.role: f.path for f in files if f.variant == PORTABLE_VARIANT}
    if kind != "gpu" or not twins:
        return files
    return [
        dataclasses.replace(f, path=twins[f.role]) if f.variant == DEFAULT_VARIANT and f.role in twins else f
        for f in files
        if f.variant != PORTABLE_VARIANT
    ]


def cpu_nodes_on_gpu(path: Path) -> list[str]:
    """The op types of `path` that ONNX Runtime's CUDA provider has no kernel for and so runs on the CPU,
    with a host copy around each call: the fast graph's Col2Im (see `sources`)."""
    model = onnx.load(str(path), load_external_data=False)
    return sorted({n.op_type for n in model.graph.node if n.op_type in _NO_CUDA_KERNEL})


def options_of(config: mc.ModelConfig) -> Options:
    """The serving choices a config was written with, so `--check` compares only what the model decides."""
    kinds = {v: k for k, v in KINDS.items()}
    group = config.instance_group[0] if config.instance_group else None
    return Options(
        kind=kinds.get(group.kind, "cpu") if group else "cpu",
        warmup=bool(config.model_warmup),
        max_batch_size=config.max_batch_size,
        max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds,
    )


def _show(field: Any, value: Any) -> Any:
    """An enum value by its name (KIND_GPU, not 2); any other value as itself."""
    names = field.enum_type.values_by_number if field.enum_type is not None else {}
    return names[value].name if value in names else value


def diff(a: Message, b: Message, path: str = "") -> Iterator[tuple[str, str, str]]:
    """(field path, value in a, value in b) for every field where two messages differ, depth first."""
    for field in a.DESCRIPTOR.fields:
        name = f"{path}{field.name}"
        va, vb = getattr(a, field.name), getattr(b, field.name)
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            for key in sorted(set(va) | set(vb)):
                if key not in va or key not in vb:
                    yield (
                        f"{name}[{key}]",
                        "present" if key in va else "absent",
                        "present" if key in vb else "absent",
                    )
                elif isinstance(va[key], Message):
                    yield from diff(va[key], vb[key], f"{name}[{key}].")
                elif va[key] != vb[key]:
                    yield f"{name}[{key}]", repr(va[key]), repr(vb[key])
        elif field.label == field.LABEL_REPEATED:
            if field.message_type is not None:
                if len(va) != len(vb):
                    yield f"{name} (count)", str(len(va)), str(len(vb))
                    continue
                for i, (ea, eb) in enumerate(zip(va, vb, strict=True)):
                    yield from diff(ea, eb, f"{name}[{i}].")
            elif list(va) != list(vb):
                yield name, str([_show(field, v) for v in va]), str([_show(field, v) for v in vb])
        elif field.message_type is not None:
            if a.HasField(field.name) != b.HasField(field.name):
                yield (
                    name,
                    "set" if a.HasField(field.name) else "unset",
                    "set" if b.HasField(field.name) else "unset",
                )
            elif a.HasField(field.name):
                yield from diff(va, vb, f"{name}.")
        elif va != vb:
            yield name, str(_show(field, va)), str(_show(field, vb))
