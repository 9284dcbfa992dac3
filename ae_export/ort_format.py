"""ONNX Runtime's mobile format: `.ort` files, the operator list for a minimal build, the usability report.

`.ort` files are what ONNX Runtime Mobile (Android/iOS packages, or a minimal build) loads; they are made
with onnxruntime's own converter (`onnxruntime.tools.convert_onnx_models_to_ort`, "Fixed" optimisation
style, no target platform: the layout optimisations specific to x86 are left out so the files also run on
ARM). The converter writes `required_operators.config`, which a minimal ONNX Runtime build takes with
`--include_ops_by_config`. `.ort` files keep the ONNX file's metadata_props (checked by a test), so the
runtime reads the same `ae_export.*` metadata from either format.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
from onnxruntime.tools.mobile_helpers import usability_checker

from ae_export.specs import REQUIRED_OPERATORS, VariantSpec, variant_for
from ae_export.variants import tag_variant
from runtimes.metadata import KEY_VARIANT


def to_ort(onnx_files: Sequence[Path], out_dir: Path) -> dict[Path, Path]:
    """Convert each `.onnx` file to the `.ort` of its variant in out_dir; write required_operators.config.

    Each file's `artifacts` metadata is first pointed at the `.ort` siblings (a copy is converted), so a
    runtime that opens `denoiser.int8.ort` finds `encoder.int8.ort`, not the `.onnx` file.
    Returns {onnx file: ort file}.
    """
    converted: dict[Path, Path] = {}
    with tempfile.TemporaryDirectory(prefix="ae-ort-") as tmp:
        src, dst = Path(tmp) / "in", Path(tmp) / "out"
        src.mkdir()
        names: dict[str, Path] = {}
        for path in onnx_files:
            proto = onnx.load(str(path))
            variant, excluded = _variant_of(proto)
            ort_variant = variant_for(variant.precision, "ort")
            tag_variant(proto, ort_variant, excluded)  # siblings: the .ort files of the same precision
            role = _role_of(proto)
            # The converter names outputs after inputs with the suffix swapped: denoiser.int8.onnx -> .ort
            stem = ort_variant.file_name(role).removesuffix(".ort")
            onnx.save(proto, str(src / f"{stem}.onnx"))
            names[stem] = path
        log = io.StringIO()
        with contextlib.redirect_stdout(log), _quiet_converter():
            convert_onnx_models_to_ort(src, output_dir=dst, optimization_styles=[OptimizationStyle.Fixed])
        for stem, path in names.items():
            target = out_dir / f"{stem}.ort"
            shutil.move(str(dst / f"{stem}.ort"), target)
            converted[path] = target
        config = (dst / REQUIRED_OPERATORS).read_text()
        # The converter lists the temporary paths it read; name the files instead.
        lines = [
            f"# - {Path(line[4:]).name}" if line.startswith("# - ") else line for line in config.splitlines()
        ]
        (out_dir / REQUIRED_OPERATORS).write_text("\n".join(lines) + "\n")
    return converted


@contextlib.contextmanager
def _quiet_converter():
    """The converter's helpers log at INFO through their own loggers; keep the export's output readable."""
    logger = logging.getLogger("ort_format_model.utils")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _variant_of(proto: onnx.ModelProto) -> tuple[VariantSpec, list[str]]:
    """The file's variant (fp32 when untagged) and its layers kept in float."""
    for prop in proto.metadata_props:
        if prop.key == KEY_VARIANT:
            value = json.loads(prop.value)
            return variant_for(value["precision"], "onnx"), list(value.get("excluded_layers", []))
    return variant_for("fp32", "onnx"), []


def _role_of(proto: onnx.ModelProto) -> str:
    for prop in proto.metadata_props:
        if prop.key == "ae_export.role":
            return str(json.loads(prop.value))
    raise ValueError("not an ae-export model: no ae_export.role metadata")


def usability_report(onnx_files: Sequence[Path]) -> str:
    """onnxruntime's mobile usability check (NNAPI, CoreML NeuralNetwork and MLProgram partitions) as text."""
    sections = []
    for path in onnx_files:
        buffer = io.StringIO()
        handler = logging.StreamHandler(buffer)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger(f"ae_export.usability.{path.name}")
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try_eps = usability_checker.analyze_model(path, skip_optimize=False, logger=logger)
        verdict = (
            "NNAPI or CoreML may help: compare them against the CPU EP on the device"
            if try_eps
            else "use the CPU EP"
        )
        text = buffer.getvalue().replace(f"{path.parent}/", "")  # staging paths mean nothing to readers
        sections.append(f"=== {path.name} ===\n{text}verdict: {verdict}\n")
    return "\n".join(sections)
