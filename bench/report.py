"""The report: the section registry, running the chosen sections in order, the header, bench.json's body.

`SECTIONS` maps each section's name (what `--sections` accepts) to its module; the report runs them in
this order, one at a time, and numbers their tables the same way.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ae_export.export import export_all
from bench import cli_io, concurrency, consumers, edge_variants, frontier, inference, photo, quality, training
from bench.machine import machine_info
from bench.section import DENOISER_FILE, BenchContext, ModelUnderTest, Section
from bench.tables import render_section
from bench.timing import Budget
from runtimes.extras import extra_hint
from runtimes.fileio import json_ready
from runtimes.onnx_model import OnnxModel
from train.checkpoint import Checkpoint
from train.data import Dataset, load_dataset

SECTIONS: dict[str, Section] = {
    "inference": inference,
    "concurrency": concurrency,
    "cli": cli_io,
    "training": training,
    "quality": quality,
    "consumers": consumers,
    "variants": edge_variants,
    "frontier": frontier,
    "photo": photo,
}


def needs_data(sections: Sequence[str]) -> bool:
    return any(SECTIONS[name].NEEDS_DATA for name in sections)


def check_extras(sections: Sequence[str]) -> None:
    """Fail before anything runs when a chosen section needs an extra that is not installed, naming it.

    A section that needs one declares `EXTRA = (extra, module)` and imports the module only when it runs.
    """
    for name in sections:
        extra, module = getattr(SECTIONS[name], "EXTRA", (None, None))
        if module is None:
            continue
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            raise ValueError(f"section {name} {extra_hint(extra, err)}") from err


def check_data(sections: Sequence[str], budget: Budget, data: Dataset | None) -> None:
    """Fail before anything runs when the data cannot serve a chosen section (too few images, files
    missing), with the section's own DataError; a section declares the check as `check_data(data, budget)`.
    """
    for name in sections:
        check = getattr(SECTIONS[name], "check_data", None)
        if check is not None and data is not None:
            check(data, budget)


def render(name: str, result: dict[str, Any]) -> str:
    """One section's Markdown: its numbered heading and its tables."""
    section = SECTIONS[name]
    return render_section(list(SECTIONS).index(name) + 1, section.heading(result), section.TABLES, result)


def render_header(report: dict[str, Any]) -> str:
    m = report["machine"]
    return (
        f"## ae-bench ({report['mode']} mode), {m['date'][:10]}\n\n"
        f"Machine: {m['cpu']} (SIMD: {' '.join(m['cpu_flags']) or 'unknown'}), {m['usable_cpus']} usable "
        f"CPUs ({m['physical_cores']} physical cores), {m['threads']} threads; torch {m['torch']}, "
        f"onnxruntime {m['onnxruntime']}, numpy {m['numpy']}" + (f"; CUDA: {m['cuda']}" if m["cuda"] else "")
    )


def _open_denoiser(onnx_dir: Path) -> OnnxModel | None:
    path = onnx_dir / DENOISER_FILE
    return OnnxModel(path, provider="cpu", threads=1, warmup=False) if path.is_file() else None


def resolve_models(
    checkpoints: Sequence[Checkpoint], onnx_dir: Path, scratch: Path, log: Callable[[str], None]
) -> list[ModelUnderTest]:
    """Pair each checkpoint with an ONNX export of exactly its weights.

    `onnx_dir` is used for the checkpoint it was exported from (checked by the sha256 in its metadata);
    any other checkpoint, or all of them when `onnx_dir` holds no export, is exported into `scratch`.
    """
    existing_model = _open_denoiser(onnx_dir)
    sha = existing_model.metadata.provenance.get("checkpoint_sha256") if existing_model else None
    existing = str(sha) if sha else None
    models = []
    for i, checkpoint in enumerate(checkpoints):
        path = checkpoint.path
        label = f"{path.parent.name}/{path.name}" if path else f"model {i + 1}"
        if existing is not None and existing == checkpoint.sha256:
            models.append(ModelUnderTest(label, checkpoint, onnx_dir))
            continue
        target = scratch / f"onnx-{i}"
        reason = "no export there" if existing is None else "it holds another checkpoint's export"
        log(f"exporting {checkpoint.path} to a temporary folder ({onnx_dir}: {reason})")
        export_all(checkpoint, target, log=lambda _line: None)
        models.append(ModelUnderTest(label, checkpoint, target, note=f"exported for this run ({reason})"))
    return models


def load_fashion(data_dir: str | None) -> Dataset:
    """Fashion-MNIST without downloading (the benchmark must not depend on the network)."""
    return load_dataset("fashion-mnist", data_dir, download=False)


def run_bench(
    sections: Sequence[str],
    budget: Budget,
    threads: int,
    models: Sequence[ModelUnderTest],
    data: Dataset | None,
    on_section: Callable[[str, dict[str, Any]], None] | None = None,
    photo_onnx: Path | None = None,
) -> dict[str, Any]:
    """Run the chosen sections in registry order (never two at once); returns bench.json's body.

    `photo_onnx` is the photo model's export folder; the photo section notes its absence and goes on.

    `on_section(name, result)` is called as each section finishes, so tables appear as the run goes.
    """
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown sections {unknown}; valid: {', '.join(SECTIONS)}")
    if not models:
        raise ValueError("at least one model (checkpoint + ONNX export) is needed")
    if data is None and needs_data(sections):
        wanting = [s for s in sections if SECTIONS[s].NEEDS_DATA]
        raise ValueError(f"sections {', '.join(wanting)} need Fashion-MNIST")
    check_data(sections, budget, data)
    first = _open_denoiser(models[0].onnx_dir)
    if first is None:
        raise ValueError(f"{models[0].onnx_dir}: no {DENOISER_FILE}")
    ctx = BenchContext(budget, threads, tuple(models), data, first.input_sample_shape, photo_onnx)
    del first
    torch.set_num_threads(threads)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "tool": "ae-bench",
        "mode": budget.mode,
        "machine": machine_info(threads),
        "budget": dict(vars(budget)),
        "models": [
            {
                "label": m.label,
                "checkpoint": str(m.checkpoint.path),
                "sha256": m.checkpoint.sha256,
                "latent_dim": m.checkpoint.model_config.latent_dim,
                "epoch": m.checkpoint.epoch,
                "onnx_dir": str(m.onnx_dir),
                "note": m.note,
            }
            for m in models
        ],
        "sample_shape": list(ctx.sample_shape),
        "photo_onnx": str(photo_onnx) if photo_onnx is not None else None,
        "sections": {},
        "seconds": {},
    }
    for name, section in SECTIONS.items():
        if name not in sections:
            continue
        t0 = time.perf_counter()
        result = section.run(ctx)
        result["seconds"] = time.perf_counter() - t0
        report["sections"][name] = result
        report["seconds"][name] = result["seconds"]
        if on_section is not None:
            on_section(name, result)
    report["seconds"]["total"] = time.perf_counter() - started
    return json_ready(report)
