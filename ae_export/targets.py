"""The files an export folder offers to deployment targets (Triton, OpenVINO, OpenCV).

One list, read by the Triton repository writer and the compatibility matrix alike: the fp32 artifacts
that the export's own metadata lists (encoder, decoder, denoiser; the denoiser only for an architecture
without an encoder/decoder pair) under their role names, then every variant that the folder's `manifest.json`
lists (fp16, int8, ... from `ae-export --variants`), named `<role>_<variant>`.

The manifest (written by `ae-export --variants`) is read by the runtime's reader (`runtimes.manifest`):
entries of another kind than "model" (reports, operator lists) are not models, and fp32 entries are the
base files, not listed twice. `.ort` entries are kept, marked `onnx=False`: only ONNX Runtime reads that
format, so each target leaves them out. A model entry without its keys, a listed file that is missing,
and one whose size or sha256 differ from the manifest's are errors, never a silent skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from ae_export.specs import SPECS
from runtimes.manifest import DEFAULT_VARIANT, MANIFEST_FILE, ManifestError, load_manifest, resolve_model
from runtimes.metadata import parse_metadata


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
    """The non-fp32 files `manifest.json` lists; empty when the folder has no manifest.

    Read by the runtime's own reader (`runtimes.manifest`), so a target is offered exactly what
    `Denoiser(folder, variant=...)` would load, and each file is checked against the manifest's size and
    sha256 first: a replaced or damaged variant is a ManifestError naming it, not a file a Triton
    repository or the compatibility matrix would serve or judge.
    """
    manifest = load_manifest(onnx_dir)
    if manifest is None:
        return []
    found = []
    for entry in manifest["files"]:
        if entry.get("kind") != "model" or entry["variant"] == DEFAULT_VARIANT:
            continue
        role, variant = entry["role"], entry["variant"]
        if not (onnx_dir / entry["file"]).is_file():
            raise ManifestError(f"{onnx_dir / MANIFEST_FILE} lists a file that is not there: {entry['file']}")
        path = resolve_model(onnx_dir, role, variant)  # size and sha256 against the manifest
        found.append(ExportedFile(model_name(role, variant), role, variant, path))
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
    base = [ExportedFile(role, role, DEFAULT_VARIANT, onnx_dir / file) for role, file in artifacts.items()]
    missing = [str(f.path) for f in base if not f.path.is_file()]
    if missing:
        raise FileNotFoundError(f"not exported yet: {', '.join(missing)} (run `ae-export` first)")
    return base + manifest_variants(onnx_dir)
