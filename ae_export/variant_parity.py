"""Parity of the variant files (fp16, int8, `.ort`) against PyTorch and against the fp32 ONNX files.

Each variant has its own tolerance in its spec (`ae_export.specs.VARIANTS`): fp16 and int8 cannot meet the
fp32 bound, and what they may lose in quality is judged by the PSNR budget; parity guards against gross
faults (a corrupted or swapped file, a broken conversion). Two references per check: the PyTorch model
(what the variant approximates) and the fp32 ONNX file of the same role (what it was made from). CPU
only: the variants are made for CPU and mobile runtimes, and the `.ort` files for ONNX Runtime Mobile.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ae_export.export import module_for
from ae_export.parity import BATCH_SIZES, CheckResult, ParityReport, any_size_cases, check, make_inputs
from ae_export.specs import FP32_VARIANT, SPECS, VARIANTS, VariantSpec
from runtimes.layout import pad_to_multiple
from runtimes.manifest import MANIFEST_FILE, load_manifest, sha256_file
from runtimes.sessions import open_session, physical_cores
from train.model import DenoisingAutoencoder


@dataclass(frozen=True)
class VariantFile:
    role: str
    variant: VariantSpec
    path: Path


def _torch_reference(model: DenoisingAutoencoder, role: str, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module_for(model, SPECS[role])(torch.from_numpy(x)).numpy()


def _run(session: ort.InferenceSession, x: np.ndarray) -> tuple[np.ndarray, float]:
    name = session.get_inputs()[0].name
    started = time.perf_counter()
    (out,) = session.run(None, {name: x})
    return out, (time.perf_counter() - started) * 1e3


def _bounded(result: CheckResult, variant: VariantSpec) -> CheckResult:
    """Fail a check whose mean abs error exceeds the variant's bound; the input label says why."""
    bound = variant.mean_abs_bound
    if bound is None or result.mean_abs <= bound:
        return result
    return dataclasses.replace(
        result,
        inputs=f"{result.inputs}; mean abs {result.mean_abs:.2e} > bound {bound:g}",
        failed_elements=max(result.failed_elements, 1),
    )


def check_variant_files(
    model: DenoisingAutoencoder,
    files: Sequence[VariantFile],
    fp32_dir: Path,
    images: np.ndarray | None = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    seed: int = 0,
    threads: int | None = None,
) -> ParityReport:
    """Every file x batch size x input kind, vs PyTorch and vs the fp32 `.onnx` of its role in fp32_dir.

    Rows are named by file ("denoiser.int8.onnx"); the fp32 comparison's input kind ends in "vs fp32".
    """
    model = model.eval().cpu()
    threads = threads or physical_cores()
    report = ParityReport(providers={"cpu": "ok"})
    cases = []  # references first, so PyTorch and ONNX Runtime never run at the same time
    for batch in batch_sizes:
        inputs = make_inputs(model, images, batch, seed)
        for role, spec in SPECS.items():
            for kind, x in inputs[spec.input_kind].items():
                cases.append((role, batch, kind, x, _torch_reference(model, role, x)))
    fp32_sessions = {
        role: open_session(fp32_dir / FP32_VARIANT.file_name(role), "cpu", threads, spinning=False)[0]
        for role in {item.role for item in files}
    }
    for item in files:
        session, _ = open_session(item.path, "cpu", threads, spinning=False)
        for role, batch, kind, x, ref in cases:
            allowed = item.variant.parity_inputs
            if role != item.role or (allowed is not None and kind not in allowed):
                continue
            out, ms = _run(session, x)
            name = item.path.name
            report.results.append(
                _bounded(check(name, "cpu", batch, kind, out, ref, item.variant.vs_torch, ms), item.variant)
            )
            if item.variant.name != FP32_VARIANT.name:
                base, _ = _run(fp32_sessions[item.role], x)
                result = check(name, "cpu", batch, f"{kind} vs fp32", out, base, item.variant.vs_fp32, ms)
                report.results.append(_bounded(result, item.variant))
    return report


def check_any_size_variant_files(
    model: torch.nn.Module,
    files: Sequence[VariantFile],
    fp32_dir: Path,
    sizes: Sequence[tuple[int, int]],
    batch_sizes: Sequence[int] = BATCH_SIZES,
    seed: int = 0,
    threads: int | None = None,
    max_pixels: int = 1 << 21,
) -> ParityReport:
    """The any-size model's variant files (its int8 twin) at each parity size: vs PyTorch and vs the fp32
    `denoiser.onnx`, padded to the stride and cropped back as the runtime does, with the variant's own
    tolerance, input kinds and mean-abs bound (as `check_variant_files` does for the fixed-size files).
    Rows are named "denoiser.int8.onnx HxW"."""
    model = model.eval().cpu()
    threads = threads or physical_cores()
    multiple = 2 ** int(model.config.fcn_levels)
    fp32 = open_session(fp32_dir / FP32_VARIANT.file_name("denoiser"), "cpu", threads, spinning=False)[0]
    report = ParityReport(providers={"cpu": "ok"})
    # References first, so PyTorch and ONNX Runtime never run at the same time.
    cases = any_size_cases(model, sizes, batch_sizes, seed, max_pixels)
    for item in files:
        session, _ = open_session(item.path, "cpu", threads, spinning=False)
        allowed = item.variant.parity_inputs
        for size, batch, kind, x, ref in cases:
            if allowed is not None and kind not in allowed:
                continue
            padded = pad_to_multiple(x, multiple)
            out, ms = _run(session, padded)
            out = np.ascontiguousarray(out[..., : x.shape[2], : x.shape[3]])
            base = np.ascontiguousarray(_run(fp32, padded)[0][..., : x.shape[2], : x.shape[3]])
            name = f"{item.path.name} {size}"
            for label, reference, tol in (
                (kind, ref, item.variant.vs_torch),
                (f"{kind} vs fp32", base, item.variant.vs_fp32),
            ):
                result = check(name, "cpu", batch, label, out, reference, tol, ms)
                report.results.append(_bounded(result, item.variant))
    return report


def check_manifest_files(
    model: torch.nn.Module,
    folder: Path,
    images: np.ndarray | None,
    batch_sizes: Sequence[int],
    sizes: Sequence[tuple[int, int]] | None = None,
) -> ParityReport:
    """Parity of every variant file the folder's manifest lists: the fixed-size model's roles on its input
    kinds, or (`sizes` given: an any-size model) its denoiser at each parity size."""
    files = manifest_files(folder)
    if not files:
        return ParityReport(providers={"cpu": "ok"})
    if sizes is not None:
        return check_any_size_variant_files(model, files, folder, sizes, batch_sizes)
    return check_variant_files(model, files, folder, images, batch_sizes)


def manifest_files(folder: Path) -> list[VariantFile]:
    """The model files a folder's manifest lists, except the fp32 `.onnx` files (run_parity checks those)."""
    manifest = load_manifest(folder)
    if manifest is None:
        return []
    return [
        VariantFile(e["role"], VARIANTS[e["variant"]], folder / e["file"])
        for e in manifest["files"]
        if e.get("kind") == "model" and e["variant"] != FP32_VARIANT.name and (folder / e["file"]).is_file()
    ]


def integrity_problems(folder: Path) -> list[str]:
    """Files the manifest lists that are missing or differ from it (size, sha256): one line each."""
    manifest = load_manifest(folder)
    if manifest is None:
        return []
    problems = []
    for entry in manifest["files"]:
        path = folder / entry["file"]
        if "sha256" not in entry:  # parity.json: rewritten by every `ae-export parity`, listed unhashed
            continue
        if not path.is_file():
            problems.append(f"{path}: listed in {MANIFEST_FILE} but missing")
        elif path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
            problems.append(
                f"{path}: differs from {MANIFEST_FILE} (size {path.stat().st_size} vs {entry['size']} bytes, "
                "sha256 differs): the file was changed after export"
            )
    return problems


def merge(into: ParityReport, other: ParityReport) -> ParityReport:
    into.results.extend(other.results)
    return into
