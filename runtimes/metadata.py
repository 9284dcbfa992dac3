"""The metadata contract between the exporter and the runtime.

Every exported ONNX file carries `metadata_props` whose keys start with `ae_export.` and whose values are
JSON. The exporter writes them with `encode_metadata`; the runtime reads them with `parse_metadata`
(`json.loads`, never `eval`). This module is torch-free on purpose: it is the one place both sides share.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = 1
PREFIX = "ae_export."

# metadata_props keys (each value is a JSON document)
KEY_FORMAT = PREFIX + "format"  # int: FORMAT_VERSION
KEY_ROLE = PREFIX + "role"  # "encoder" | "decoder" | "denoiser"
KEY_MODEL = PREFIX + "model_config"  # {"latent_dim": 4, "hidden_dim": 128}
KEY_INPUT = PREFIX + "input"  # TensorContract as a dict
KEY_OUTPUT = PREFIX + "output"  # TensorContract as a dict
KEY_NOISE = PREFIX + "noise"  # {"kind": "gaussian_clipped", "std": 0.3, "clip": [0, 1], "formula": ...}
KEY_TRAINING = PREFIX + "training"  # dataset, epochs, final metrics, ...
KEY_PROVENANCE = PREFIX + "provenance"  # checkpoint sha256, versions, opset, created
KEY_ARTIFACTS = PREFIX + "artifacts"  # {"encoder": "encoder.onnx", ...}: sibling files of one export
KEY_TOLERANCE = PREFIX + "tolerance"  # {"cpu": {"atol":..,"rtol":..}, "cuda": {...}}
KEY_VARIANT = PREFIX + "variant"  # variant files: {"name", "precision", "format", "excluded_layers"}
# Optional (files written before it existed hold the portable graph): "portable" = standard ONNX ops only
# (ConvTranspose); "fast" = transposed convolutions rewritten into Conv + Col2Im (opset 18), which some
# consumers (OpenCV DNN, some mobile execution providers) do not implement.
KEY_GRAPH = PREFIX + "graph"
# Optional, any-size image models only: {"radius": R}, how far in input pixels an output pixel reaches.
# The runtime cuts large images into tiles overlapping by R (rounded up to size_multiple), whose results
# equal the whole image's; without it, images always run whole.
KEY_RECEPTIVE_FIELD = PREFIX + "receptive_field"
GRAPHS = ("portable", "fast")
REQUIRED_KEYS = (KEY_FORMAT, KEY_ROLE, KEY_MODEL, KEY_INPUT, KEY_OUTPUT, KEY_ARTIFACTS)
# Keys whose value is a JSON object; the optional ones (not in REQUIRED_KEYS) may also be null.
OBJECT_KEYS = (
    KEY_MODEL,
    KEY_INPUT,
    KEY_OUTPUT,
    KEY_ARTIFACTS,
    KEY_NOISE,
    KEY_TRAINING,
    KEY_PROVENANCE,
    KEY_TOLERANCE,
)
ROLES = ("encoder", "decoder", "denoiser")


class MetadataError(ValueError):
    """An ONNX file lacks the ae_export metadata or carries malformed values."""


def _positive_int(value: object) -> bool:
    """A JSON integer >= 1 (bool is an int subclass in Python, but `true` is not a size)."""
    return type(value) is int and value >= 1


@dataclass(frozen=True)
class TensorContract:
    """What one graph input or output holds. `shape` uses a string for a symbolic axis ("batch")."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    layout: str = ""
    value_range: tuple[float, float] | None = None
    # Symbolic height/width axes take sizes that are multiples of this (the runtime pads and crops back).
    size_multiple: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "layout": self.layout,
            "range": list(self.value_range) if self.value_range is not None else None,
            "size_multiple": self.size_multiple,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorContract:
        """Raises ValueError for an axis that is neither a name nor an int >= 1, or a size_multiple that
        is not an int >= 1: `int()` used to turn 28.9 into 28 and `true` into 1, and a size_multiple of 0
        or -8 then surfaced as an onnxruntime shape error on the first run."""
        rng = data.get("range")
        shape = tuple(data["shape"])
        bad = [d for d in shape if not isinstance(d, str) and not _positive_int(d)]
        if bad:
            raise ValueError(f"shape {list(shape)} has axes that are neither names nor ints >= 1: {bad}")
        multiple = data.get("size_multiple", 1)
        if not _positive_int(multiple):
            raise ValueError(f"size_multiple must be an int >= 1; got {multiple!r}")
        return cls(
            name=str(data["name"]),
            shape=shape,
            dtype=str(data.get("dtype", "float32")),
            layout=str(data.get("layout", "")),
            value_range=(float(rng[0]), float(rng[1])) if rng is not None else None,
            size_multiple=multiple,
        )

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        """The shape of one sample: every axis but the leading batch axis; None for a symbolic axis."""
        return tuple(None if isinstance(d, str) else int(d) for d in self.shape[1:])


@dataclass(frozen=True)
class ModelMetadata:
    """The parsed `ae_export.*` metadata of one ONNX file."""

    role: str
    model_config: dict[str, Any]
    input: TensorContract
    output: TensorContract
    artifacts: dict[str, str]
    noise: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    tolerance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    graph: str = "portable"
    receptive_radius: int | None = None


def encode_metadata(meta: ModelMetadata) -> dict[str, str]:
    """ModelMetadata -> metadata_props (string keys, JSON string values)."""
    values: dict[str, Any] = {
        KEY_FORMAT: meta.format_version,
        KEY_ROLE: meta.role,
        KEY_MODEL: meta.model_config,
        KEY_INPUT: meta.input.to_dict(),
        KEY_OUTPUT: meta.output.to_dict(),
        KEY_NOISE: meta.noise,
        KEY_TRAINING: meta.training,
        KEY_PROVENANCE: meta.provenance,
        KEY_ARTIFACTS: meta.artifacts,
        KEY_TOLERANCE: meta.tolerance,
        KEY_GRAPH: meta.graph,
    }
    if meta.receptive_radius is not None:
        values[KEY_RECEPTIVE_FIELD] = {"radius": meta.receptive_radius}
    return {key: json.dumps(value, sort_keys=True, allow_nan=False) for key, value in values.items()}


def parse_metadata(props: Mapping[str, str], source: str = "model") -> ModelMetadata:
    """metadata_props -> ModelMetadata; raises MetadataError naming the file and the faulty key."""
    missing = [key for key in REQUIRED_KEYS if key not in props]
    if missing:
        raise MetadataError(
            f"{source}: not an ae-export model (metadata keys missing: {', '.join(missing)}); "
            "export it with `ae-export`"
        )
    values: dict[str, Any] = {}
    for key, text in props.items():
        if not key.startswith(PREFIX):
            continue
        try:
            values[key] = json.loads(text)
        # JSONDecodeError is a ValueError; json.loads also raises a bare ValueError (an integer of over
        # 4300 digits) and RecursionError (arrays nested some thousand deep).
        except (ValueError, RecursionError) as err:
            raise MetadataError(f"{source}: metadata {key!r} is not valid JSON: {err}") from err
    if type(values[KEY_FORMAT]) is not int or values[KEY_FORMAT] != FORMAT_VERSION:
        raise MetadataError(
            f"{source}: metadata format {values[KEY_FORMAT]!r} is not supported (this runtime reads "
            f"format {FORMAT_VERSION})"
        )
    if values[KEY_ROLE] not in ROLES:
        raise MetadataError(f"{source}: role {values[KEY_ROLE]!r} is not one of {', '.join(ROLES)}")
    # A value of another JSON type (a list, a string) was an AttributeError traceback further down.
    for key in OBJECT_KEYS:
        value = values.get(key)
        if not isinstance(value, dict) and not (value is None and key not in REQUIRED_KEYS):
            raise MetadataError(
                f"{source}: metadata {key!r} must be a JSON object; got {type(value).__name__} {value!r}"
            )
    graph = values.get(KEY_GRAPH, "portable")
    if graph not in GRAPHS:
        raise MetadataError(f"{source}: graph {graph!r} is not one of {', '.join(GRAPHS)}")
    receptive = values.get(KEY_RECEPTIVE_FIELD)
    radius = receptive.get("radius") if isinstance(receptive, dict) else None
    if receptive is not None and (type(radius) is not int or radius < 0):
        raise MetadataError(
            f"{source}: metadata {KEY_RECEPTIVE_FIELD!r} must be {{'radius': int >= 0}}; got {receptive!r}"
        )
    try:
        return ModelMetadata(
            role=values[KEY_ROLE],
            model_config=dict(values[KEY_MODEL]),
            input=TensorContract.from_dict(values[KEY_INPUT]),
            output=TensorContract.from_dict(values[KEY_OUTPUT]),
            artifacts={str(k): str(v) for k, v in values[KEY_ARTIFACTS].items()},
            noise=dict(values.get(KEY_NOISE) or {}),
            training=dict(values.get(KEY_TRAINING) or {}),
            provenance=dict(values.get(KEY_PROVENANCE) or {}),
            tolerance=dict(values.get(KEY_TOLERANCE) or {}),
            format_version=int(values[KEY_FORMAT]),
            graph=graph,
            receptive_radius=radius,
        )
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise MetadataError(f"{source}: malformed ae_export metadata: {err!r}") from err
