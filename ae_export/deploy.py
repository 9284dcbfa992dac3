"""The edge variants of an export, behind a quality gate: build, score, check, convert, measure, list.

Runs after the fp32 files passed parity. For each requested precision (fp16, int8), and for the portable
twin (the fp32 model in torch's graph, for GPUs and OpenCV, where the fp32 files hold the fast graph), it
builds the three files (fp16 from the portable graph: see `_fp16`), scores the denoiser and the
encoder->decoder pair on the standard test against fp32, and rejects the variant (nothing written) when
it loses more than its PSNR budget or fails parity; then `.ort` files for fp32 and every accepted
precision (same gate and parity), the mobile usability report, throughput against fp32 in one run, and
`manifest.json` listing every file. All work happens in a staging folder; files move into place at the
end, and variant files of earlier exports that this one did not write are removed, so the folder never
mixes exports.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ae_export.export import drop_derived_files, export_artifact, staging_dir
from ae_export.fastgraph import graph_kind
from ae_export.manifest import (
    cpu_int8_support,
    file_entry,
    measure_throughput,
    opset_of,
    parity_summary,
    write_manifest,
)
from ae_export.ort_format import to_ort, usability_report
from ae_export.parity import BATCH_SIZES, ParityReport
from ae_export.specs import (
    FP32_VARIANT,
    PARITY_JSON,
    PORTABLE_VARIANT,
    REQUIRED_OPERATORS,
    SPECS,
    USABILITY_REPORT,
    VARIANTS,
    VariantSpec,
    variant_for,
)
from ae_export.variant_parity import VariantFile, check_variant_files
from ae_export.variants import (
    EvalSet,
    Quality,
    calibration_images,
    fp16_overflow,
    quantize_int8,
    run_file,
    score_denoiser,
    score_pair,
    search_int8,
    search_set,
    standard_test,
    tag_variant,
    to_fp16,
    weighted_layers,
    within_budget,
)
from runtimes.sessions import physical_cores
from train.checkpoint import Checkpoint
from train.data import Dataset


@dataclass
class Outcome:
    """One variant's verdict and figures (denoiser and encoder->decoder pair on the standard test)."""

    variant: VariantSpec
    budget_db: float
    quality: Quality | None = None
    pair: Quality | None = None
    excluded: list[str] = field(default_factory=list)
    rejected: str = ""  # why it was not written; "" when accepted

    def loss_db(self, fp32: Quality) -> float:
        return fp32.psnr_db - self.quality.psnr_db if self.quality else float("nan")

    def pair_loss_db(self, fp32: Quality) -> float:
        return fp32.psnr_db - self.pair.psnr_db if self.pair else float("nan")


@dataclass
class VariantsResult:
    outcomes: list[Outcome]
    parity: ParityReport
    manifest: Path

    @property
    def rejected(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.rejected]


def _fp16(
    fp32: Mapping[str, Path], portable: Mapping[str, onnx.ModelProto] | None
) -> tuple[dict[str, onnx.ModelProto], str]:
    """fp16 files, converted from the portable graph where the fp32 files hold the fast one, and "", or
    no files and why float16 cannot hold the model's weights (`fp16_overflow`).

    Why: float16 pays on GPUs and mobile accelerators, and neither runs the fast graph's Col2Im (ONNX
    Runtime's CUDA provider has no kernel for it: an fp16 fast graph ran its Col2Im and a Cast on the CPU
    with host copies, 5.6x slower than the fp16 portable graph at batch 256 on an H100). On the CPU, where
    the fast graph wins, float16 does not pay at all (its convolutions run through Casts).
    """
    sources = portable or {role: onnx.load(str(fp32[role])) for role in SPECS}
    for role, source in sources.items():
        if overflow := fp16_overflow(source):
            return {}, f"{role}: {overflow}"
    protos = {}
    for role, source in sources.items():
        proto = onnx.ModelProto()
        proto.CopyFrom(source)  # the converter edits its argument; the portable twin is written as well
        protos[role] = to_fp16(proto)
    return protos, ""


def _int8(
    fp32: Mapping[str, Path], calibration: np.ndarray, search: EvalSet, budget: float, log
) -> tuple[dict[str, onnx.ModelProto], list[str], dict[str, Any]]:
    found = search_int8(fp32["denoiser"], calibration, search, budget, log)
    latents = run_file(fp32["encoder"], calibration)  # the decoder is calibrated on real latents
    inputs = {"encoder": calibration, "decoder": latents, "denoiser": calibration}
    protos = {}
    with tempfile.TemporaryDirectory(prefix="ae-int8-") as tmp:
        for role in SPECS:
            protos[role] = quantize_int8(fp32[role], role, inputs[role], found.excluded, Path(tmp))
    record = {
        "search_loss_db": found.search_loss_db,
        "search_target_db": found.target_db,
        "trials": found.trials,
    }
    return protos, found.excluded, record


def _portable(checkpoint: Checkpoint, fp32: Mapping[str, Path]) -> dict[str, onnx.ModelProto]:
    """The fp32 model exported again in the portable graph, at the fp32 files' opset."""
    opset = opset_of(fp32["denoiser"])
    return {
        role: export_artifact(checkpoint, spec, opset=opset, graph="portable").proto
        for role, spec in SPECS.items()
    }


def _score(outcome: Outcome, folder: Path, test: EvalSet, fp32_q: Quality, fp32_pair: Quality) -> None:
    v = outcome.variant
    outcome.quality = score_denoiser(folder / v.file_name("denoiser"), test)
    outcome.pair = score_pair(folder / v.file_name("encoder"), folder / v.file_name("decoder"), test)
    if not within_budget((outcome.loss_db(fp32_q), outcome.pair_loss_db(fp32_pair)), outcome.budget_db):
        outcome.rejected = (
            f"loses {outcome.loss_db(fp32_q):.3f} dB (denoiser) / {outcome.pair_loss_db(fp32_pair):.3f} dB "
            f"(encoder->decoder) on the standard test; budget {outcome.budget_db:.3f} dB"
        )


def _parity(
    model, outcomes: Sequence[Outcome], staged: Path, fp32_dir: Path, images, batch_sizes
) -> ParityReport:
    """Check the outcomes' files (vs PyTorch and the fp32 files); reject those that fail, naming the worst."""
    files = [
        VariantFile(role, o.variant, staged / o.variant.file_name(role))
        for o in outcomes
        if not o.rejected
        for role in SPECS
    ]
    report = check_variant_files(model, files, fp32_dir, images, batch_sizes)
    for o in outcomes:
        names = {o.variant.file_name(r) for r in SPECS}
        failed = [r for r in report.failures() if r.artifact in names]
        if failed and not o.rejected:
            worst = max(failed, key=lambda r: r.max_abs)
            o.rejected = (
                f"parity failed: {worst.artifact} at batch {worst.batch_size} ({worst.inputs} inputs): "
                f"{worst.failed_elements} elements outside tolerance, max abs {worst.max_abs:.3e} "
                f"(atol {worst.atol:g}, rtol {worst.rtol:g})"
            )
    return report


def _remove(folder: Path, variant: VariantSpec) -> None:
    for role in SPECS:
        (folder / variant.file_name(role)).unlink(missing_ok=True)


def export_variants(
    checkpoint: Checkpoint,
    out_dir: Path,
    requested: Sequence[str],
    data: Dataset,
    budgets: Mapping[str, float] | None = None,
    parity_images: np.ndarray | None = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    parity: bool = True,
    log: Callable[[str], None] = print,
) -> VariantsResult:
    """Write the requested variants of the fp32 files in out_dir (see the module docstring)."""
    budgets = dict(budgets or {})
    drop_derived_files(out_dir, keep=(PARITY_JSON,))  # an earlier export's, if the caller left any
    noise_std = float(checkpoint.train_config.get("noise_factor", 0.3))
    model = checkpoint.build_model()
    fp32 = {role: out_dir / FP32_VARIANT.file_name(role) for role in SPECS}
    test = standard_test(data, noise_std)
    fp32_q = score_denoiser(fp32["denoiser"], test)
    fp32_pair = score_pair(fp32["encoder"], fp32["decoder"], test)
    log(f"fp32: {fp32_q.psnr_db:.3f} dB PSNR, SSIM {fp32_q.ssim:.4f} on the standard test ({test.name})")
    report = ParityReport(providers={"cpu": "ok"})
    outcomes: list[Outcome] = []
    extra_records: dict[str, Any] = {}
    with staging_dir(out_dir) as staged:
        calibration = calibration_images(data, noise_std)
        search = search_set(data, noise_std)
        # The portable twin only where the fp32 files hold the fast graph (else it would be the same file).
        fast = graph_kind(onnx.load(str(fp32["denoiser"]))) == "fast"
        if PORTABLE_VARIANT.name in requested and not fast:
            log("portable: not written: the fp32 files already hold the portable graph")
        wants_portable = {"fp16", PORTABLE_VARIANT.name} & set(requested)
        portable = _portable(checkpoint, fp32) if fast and wants_portable else None
        for name in ("fp16", "int8", PORTABLE_VARIANT.name):
            if name not in requested or (name == PORTABLE_VARIANT.name and not fast):
                continue
            variant = VARIANTS[name]
            outcome = Outcome(variant, budgets.get(name, variant.psnr_budget_db))
            outcomes.append(outcome)
            if variant is PORTABLE_VARIANT:
                protos = dict(portable)
            elif name == "fp16":
                protos, outcome.rejected = _fp16(fp32, portable)
                if outcome.rejected:
                    continue
            else:
                protos, outcome.excluded, extra_records[name] = _int8(
                    fp32, calibration, search, outcome.budget_db, log
                )
            for role, proto in protos.items():
                tag_variant(proto, variant, outcome.excluded)
                onnx.save(proto, str(staged / variant.file_name(role)))
            _score(outcome, staged, test, fp32_q, fp32_pair)
        if parity:
            report = _parity(model, outcomes, staged, out_dir, parity_images, batch_sizes)
        accepted = [o for o in outcomes if not o.rejected]
        # .ort files: one per precision; the portable twin has fp32's precision and gets none of its own.
        reduced = [o for o in accepted if o.variant is not PORTABLE_VARIANT]
        if "ort" in requested:
            sources = [fp32[r] for r in SPECS] + [
                staged / o.variant.file_name(r) for o in reduced for r in SPECS
            ]
            to_ort(sources, staged)
            ort_outcomes = []
            for precision in ("fp32", *(o.variant.precision for o in reduced)):
                ort_variant = variant_for(precision, "ort")
                base = next((o for o in reduced if o.variant.precision == precision), None)
                outcome = Outcome(ort_variant, budgets.get(precision, ort_variant.psnr_budget_db))
                outcome.excluded = base.excluded if base else []
                ort_outcomes.append(outcome)
                _score(outcome, staged, test, fp32_q, fp32_pair)
            if parity:
                report.results.extend(
                    _parity(model, ort_outcomes, staged, out_dir, parity_images, batch_sizes).results
                )
            outcomes.extend(ort_outcomes)
            kept_ort = [o for o in ort_outcomes if not o.rejected]
            if len(kept_ort) < len(ort_outcomes):  # the operator list must name only the files written
                onnx_dirs = {"fp32": out_dir}
                to_ort(
                    [
                        onnx_dirs.get(o.variant.precision, staged)
                        / VARIANTS[o.variant.precision].file_name(r)
                        for o in kept_ort
                        for r in SPECS
                    ],
                    staged,
                )
            (staged / USABILITY_REPORT).write_text(
                usability_report(
                    [fp32["denoiser"]] + [staged / o.variant.file_name("denoiser") for o in accepted]
                )
            )
        for o in outcomes:
            if o.rejected:
                log(f"{o.variant.name}: NOT written: {o.rejected}")
                _remove(staged, o.variant)
            else:
                log(
                    f"{o.variant.name}: {o.quality.psnr_db:.3f} dB "
                    f"({-o.loss_db(fp32_q):+.3f} vs fp32, budget "
                    f"{o.budget_db:.3f}), pair {-o.pair_loss_db(fp32_pair):+.3f} dB"
                    + (f"; kept in float: {', '.join(o.excluded)}" if o.excluded else "")
                )
        kept = [o for o in outcomes if not o.rejected]
        models = {
            "fp32": fp32["denoiser"],
            **{o.variant.name: staged / o.variant.file_name("denoiser") for o in kept},
        }
        speed = measure_throughput(models, test.noisy[:256])
        for path in sorted(staged.iterdir()):
            if path.is_file():
                path.replace(out_dir / path.name)
    fp32_outcome = Outcome(FP32_VARIANT, 0.0, fp32_q, fp32_pair)
    # Layer key ("encoder.cnn.0") -> node name, per role: the names the int8 files keep for float nodes.
    layers = {role: weighted_layers(onnx.load(str(fp32[role])), role) for role in SPECS}
    entries = []
    for o in [fp32_outcome, *kept]:
        for role in SPECS:
            name = o.variant.file_name(role)
            source = (
                name if o.variant.fmt == "onnx" else variant_for(o.variant.precision, "onnx").file_name(role)
            )
            entry = file_entry(
                out_dir,
                name,
                "model",
                role=role,
                variant=o.variant.name,
                precision=o.variant.precision,
                format=o.variant.fmt,
                opset=opset_of(out_dir / source),
                excluded_layers=[k for k in o.excluded if k in layers[role]],
                excluded_nodes=[node for k in o.excluded for node in layers[role].get(k, [])],
            )
            q = o.quality if role == "denoiser" else o.pair
            entry["quality"] = {
                "measured_on": "denoiser" if role == "denoiser" else "decoder(encoder(x)) of this variant",
                "psnr_db": q.psnr_db,
                "ssim": q.ssim,
                "loss_db": fp32_q.psnr_db - q.psnr_db
                if role == "denoiser"
                else fp32_pair.psnr_db - q.psnr_db,
                "budget_db": o.budget_db,
            }
            if o.variant is not FP32_VARIANT:
                entry["parity"] = parity_summary(report, name)
                entry["tolerance"] = {
                    "vs_torch": o.variant.vs_torch.to_dict(),
                    "vs_fp32": o.variant.vs_fp32.to_dict(),
                    "mean_abs_bound": o.variant.mean_abs_bound,
                }
            if role == "denoiser":
                entry["throughput"] = {
                    f"batch_{b}": {
                        "images_per_s": speed[o.variant.name][b],
                        "vs_fp32": speed[o.variant.name][b] / speed["fp32"][b],
                    }
                    for b in speed["fp32"]
                }
            entries.append(entry)
    for name, kind in (
        (REQUIRED_OPERATORS, "ort-required-operators"),
        (USABILITY_REPORT, "mobile-usability-report"),
    ):
        if (out_dir / name).is_file():
            entries.append(file_entry(out_dir, name, kind))
    if (out_dir / PARITY_JSON).is_file():  # rewritten by `ae-export parity`, so listed without a hash
        entries.append(
            {"file": PARITY_JSON, "kind": "parity-report", "note": "rewritten by ae-export parity"}
        )
    manifest = write_manifest(
        out_dir,
        entries,
        {
            "checkpoint_sha256": checkpoint.sha256,
            "standard_test": {
                "description": test.name,
                "images": len(test.clean),
                "metric": "mean per-image PSNR (dB) and SSIM vs the clean images",
                "fp32_psnr_db": fp32_q.psnr_db,
            },
            "requested": list(requested),
            "rejected": [
                {
                    "variant": o.variant.name,
                    "reason": o.rejected,
                    "loss_db": o.loss_db(fp32_q),
                    "budget_db": o.budget_db,
                }
                for o in outcomes
                if o.rejected
            ],
            "int8_search": extra_records.get("int8"),
            "cpu": cpu_int8_support(),
            "threads": physical_cores(),
        },
    )
    return VariantsResult(outcomes, report, manifest)
