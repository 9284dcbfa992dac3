"""Reading an export folder's `manifest.json`: which file holds which role in which variant.

`ae-export` writes one manifest per export folder listing every file it wrote (role, variant, precision,
size, sha256, quality and speed figures). The runtime reads it here to turn "the int8 denoiser of this
folder" into a path, and checks the file is the one the manifest describes (size and sha256), so a
replaced or truncated file is refused before a session is opened. Standard library only (json, hashlib):
edge devices have no torch, and this module needs no onnxruntime either.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_VARIANT = "fp32"
# The fp32 model in the portable graph (ConvTranspose): what a CUDA session should run (see Denoiser).
PORTABLE_VARIANT = "portable"
# File-name tail per variant: `denoiser` + ".int8.onnx". The exporter's specs hold the same table
# (ae_export.specs.VARIANTS); a test checks the two agree. Used only for folders without a manifest.
VARIANT_SUFFIXES: dict[str, str] = {
    "fp32": ".onnx",
    "portable": ".portable.onnx",
    "fp16": ".fp16.onnx",
    "int8": ".int8.onnx",
    "fp32.ort": ".ort",
    "fp16.ort": ".fp16.ort",
    "int8.ort": ".int8.ort",
}


# What a model entry must hold, and of which type: the runtime picks files and verifies them by these.
MODEL_ENTRY_KEYS: dict[str, type] = {"file": str, "role": str, "variant": str, "size": int, "sha256": str}


class ManifestError(ValueError):
    """A manifest that cannot be used (bad JSON, wrong format), or a file that does not match it."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The file's SHA-256, hex."""
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_stream(handle: BinaryIO) -> str:
    """SHA-256 (hex) of what is left to read from `handle`, in 1 MiB blocks (a large file is never held
    whole in memory)."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def load_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The parsed manifest of an export folder, or None when the folder has none (an older export)."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    # UnicodeDecodeError and JSONDecodeError are ValueErrors, and so is an integer of over 4300 digits;
    # arrays nested some thousand deep raise RecursionError.
    except (ValueError, RecursionError) as err:
        raise ManifestError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or "files" not in data:
        raise ManifestError(f"{path}: not an ae-export manifest (format {MANIFEST_FORMAT} with 'files')")
    files = data["files"]
    if not isinstance(files, list) or not all(isinstance(e, dict) for e in files):
        raise ManifestError(f"{path}: 'files' must be a list of entries (objects)")
    # What resolve_model reads of a model entry, checked once: a missing key was a KeyError traceback.
    for entry in files:
        if entry.get("kind") == "model":
            bad = [k for k, kind in MODEL_ENTRY_KEYS.items() if not isinstance(entry.get(k), kind)]
            if bad:
                raise ManifestError(
                    f"{path}: model entry {entry.get('file', entry)!r} lacks a valid {', '.join(bad)} (every "
                    f"model entry has {', '.join(MODEL_ENTRY_KEYS)}); re-export to rewrite it"
                )
    return data


def model_entries(manifest: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    """variant name -> manifest entry, for the model files of one role."""
    return {e["variant"]: e for e in manifest["files"] if e.get("kind") == "model" and e.get("role") == role}


def variants_present(folder: str | Path, role: str = "denoiser") -> list[str]:
    """The variants of `role` this folder holds: from its manifest, else from the file names."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    if manifest is not None:
        return [v for v, e in model_entries(manifest, role).items() if (folder / e["file"]).is_file()]
    return [v for v, suffix in VARIANT_SUFFIXES.items() if (folder / f"{role}{suffix}").is_file()]


def portable_twin(folder: str | Path, role: str) -> Path | None:
    """The folder's portable-graph file for `role` (what CUDA and OpenCV run), or None if it has none."""
    if PORTABLE_VARIANT not in variants_present(folder, role):
        return None
    return resolve_model(folder, role, PORTABLE_VARIANT)


def resolve_model(
    folder: str | Path, role: str = "denoiser", variant: str = DEFAULT_VARIANT, verify: bool = True
) -> Path:
    """The file holding `role` in `variant` in an export folder.

    Raises FileNotFoundError naming the variants present when the folder lacks it, and ManifestError when
    `verify` and the file's size or sha256 differ from the manifest's (a replaced or damaged file).
    """
    folder = Path(folder)
    manifest = load_manifest(folder)
    if manifest is None:
        suffix = VARIANT_SUFFIXES.get(variant)
        path = folder / f"{role}{suffix}" if suffix else None
        if path is None or not path.is_file():
            present = variants_present(folder, role)
            raise FileNotFoundError(
                f"{folder}: no {role} in variant {variant!r}; present: {', '.join(present) or 'none'}"
            )
        return path
    entries = model_entries(manifest, role)
    entry = entries.get(variant)
    if entry is None or not (folder / entry["file"]).is_file():
        present = [v for v, e in entries.items() if (folder / e["file"]).is_file()]
        why = "listed in its manifest but missing" if entry is not None else "not in its manifest"
        raise FileNotFoundError(
            f"{folder}: no {role} in variant {variant!r} ({why}); present: {', '.join(present) or 'none'}"
        )
    path = folder / entry["file"]
    if verify:
        _check_entry(folder, path, entry)
    return path


def verify_listed(folder: str | Path, name: str) -> None:
    """Raise ManifestError when the folder's manifest lists the model file `name` and the file on disk is
    not that one (size or sha256); a folder without a manifest, or a file it does not list, passes.

    For the files a model's metadata names (a denoiser's encoder and decoder): the denoiser itself is
    checked by `resolve_model`, and a replaced or damaged sibling must not slip through beside it.
    """
    folder = Path(folder)
    manifest = load_manifest(folder)
    if manifest is None:
        return
    for entry in manifest["files"]:
        if entry.get("kind") == "model" and entry.get("file") == name:
            _check_entry(folder, folder / name, entry)
            return


def _check_entry(folder: Path, path: Path, entry: dict[str, Any]) -> None:
    size = path.stat().st_size
    if size != entry["size"] or sha256_file(path) != entry["sha256"]:
        raise ManifestError(
            f"{path}: does not match {folder / MANIFEST_FILE} (size {size} vs {entry['size']} bytes or "
            "sha256 differs); re-export, or load the file by its path to use it anyway"
        )
