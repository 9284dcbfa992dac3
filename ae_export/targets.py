"""The files an export folder offers to deployment targets (Triton, OpenVINO, OpenCV).

One list, read by the Triton repository writer and the compatibility matrix alike: the fp32 artifacts
that the export's own metadata lists (encoder, decoder, denoiser; the denoiser only for an architecture
without an encoder/decoder pair) under their role names, then every variant that the folder's `manifest.json`
lists (fp16, int8, ... from `ae-export --variants`), named `<role>_<variant>`.

The manifest (written by `ae-export --variants`) is read as `{"files": [{"file": "denoiser.fp16.onnx",
"kind": "model", "role": "denoiser", "variant": "fp16", ...}, ...]}`; entries of another kind (reports,
operator lists) are not models, and fp32 entries are the base files, not listed twice. `.ort` entries
are kept, marked `onnx=False`: only ONNX Runtime reads that format, so each target leaves them out. A
model entry without those keys is an error, never a silent skip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx

from ae_export.specs import SPECS
from runtimes.metadata import parse_metadata

MANIFEST = "manifest.json"
BASE_VARIANT = "fp32"


class ManifestError(ValueError):
    """manifest.json exists but does not list files the way this module reads them."""


@dataclass(frozen=True)
class ExportedFile:
    name: str  # "denoiser" or "denoiser_fp16": the model name a target serves it under
    role: str
    variant: str
    path: Path

    @property
    def onnx(self) -> bool:
        """An ONNX protobuf file (not ONNX Runtime's .ort flatbuffer format)."""
        return self.path.suffix == ".onnx"


def model_name(role: str, variant: str) -> str:
    """`denoiser_fp16`, `denoiser_int8_ort`: a name Triton and file systems accept (no dots)."""
    return f"{role}_{variant}".replace(".", "_")


def manifest_variants(onnx_dir: Path) -> list[ExportedFile]:
    """The non-fp32 files `manifest.json` lists; empty when the folder has no manifest."""
    path = onnx_dir / MANIFEST
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())["files"]
        models = [e for e in entries if e.get("kind", "model") == "model"]
        found = [
            ExportedFile(model_name(e["role"], e["variant"]), e["role"], e["variant"], onnx_dir / e["file"])
            for e in models
            if e["variant"] != BASE_VARIANT
        ]
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
        raise ManifestError(
            f"{path}: expected {{'files': [{{'file', 'role', 'variant'}}, ...]}}: {err!r}"
        ) from err
    missing = [str(f.path) for f in found if not f.path.is_file()]
    if missing:
        raise ManifestError(f"{path} lists files that are not there: {', '.join(missing)}")
    return found


def base_artifacts(onnx_dir: Path) -> dict[str, str]:
    """role -> file name of one export, as its denoiser's metadata lists them (an architecture without an
    encoder/decoder pair exports the denoiser only)."""
    denoiser = onnx_dir / SPECS["denoiser"].file_name
    if not denoiser.is_file():
        raise FileNotFoundError(f"not exported yet: {denoiser} (run `ae-export` first)")
    model = onnx.load(str(denoiser), load_external_data=False)
    return parse_metadata({p.key: p.value for p in model.metadata_props}, str(denoiser)).artifacts


def exported_files(onnx_dir: Path) -> list[ExportedFile]:
    """The fp32 artifacts, then the manifest's variants; FileNotFoundError if the export is missing."""
    artifacts = base_artifacts(onnx_dir)
    base = [ExportedFile(role, role, BASE_VARIANT, onnx_dir / file) for role, file in artifacts.items()]
    missing = [str(f.path) for f in base if not f.path.is_file()]
    if missing:
        raise FileNotFoundError(f"not exported yet: {', '.join(missing)} (run `ae-export` first)")
    return base + manifest_variants(onnx_dir)
