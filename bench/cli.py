"""`ae-bench`: one command, one run; prints a Markdown table per section and writes bench.json.

    ae-bench [--full | --tiny] [--sections inference,concurrency,cli,training,quality,consumers,variants,
             frontier,photo]
             [--threads N]
             [--checkpoint PATH ...] [--onnx-dir DIR] [--photo-onnx DIR] [--out bench.json]
             [--cli-images N] [--quality-images N] [--data-dir DIR]

Thin: the measurements are in the section modules, the orchestration in bench.report. Quick mode is the
default (a few minutes on 2 cores); --full measures longer; --tiny runs every path in seconds (the smoke
test; its numbers mean nothing). Exit codes: 0 ok, 2 bad input (missing checkpoint or data, data too
small for a chosen section, bad option, an --out that cannot be written: checked before the first section
runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtimes.extras import require_extra

require_extra("ae-bench", "train", ("torch", "onnx"))  # before the imports that need them

from ae_export.export import ExportError
from bench.machine import machine_info
from bench.quality import TUNE_START
from bench.report import (
    SECTIONS,
    check_data,
    check_extras,
    load_fashion,
    needs_data,
    render,
    render_header,
    resolve_models,
    run_bench,
)
from bench.timing import BUDGETS
from runtimes.cli import positive_int
from runtimes.fileio import atomic_write_json, unwritable_file
from runtimes.sessions import InvalidModelError, physical_cores
from train.checkpoint import CheckpointError, load_checkpoint
from train.data import DataError
from train.model import ARCHS

PROG = "ae-bench"
DEFAULT_CHECKPOINT = "artifacts/checkpoint.pt"
EXIT_OK, EXIT_USAGE = 0, 2


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [s for s in names if s not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(bad) or '(none given)'}; valid: {', '.join(SECTIONS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Benchmark ONNX Runtime against PyTorch and the hardware, the serving paths, training, "
        "and denoising quality against classical filters, all in one run on this machine.",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--full", action="store_true", help="longer runs and bigger tuning sets (quick is default)"
    )
    size.add_argument("--tiny", action="store_true", help="seconds, not minutes: proves it runs (smoke test)")
    p.add_argument(
        "--sections",
        type=_sections,
        default=tuple(SECTIONS),
        metavar="LIST",
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="threads for PyTorch and ONNX Runtime alike (default: physical cores)",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"checkpoint.pt of a 28x28 model to benchmark; repeat for several models (default "
        f"{DEFAULT_CHECKPOINT}; the photo model is measured from --photo-onnx)",
    )
    p.add_argument(
        "--onnx-dir",
        type=Path,
        default=Path("artifacts/onnx"),
        help="export of the (first) checkpoint (default artifacts/onnx); exported to a temporary folder "
        "if absent or from another checkpoint",
    )
    p.add_argument(
        "--photo-onnx",
        type=Path,
        default=Path("artifacts/photo/onnx"),
        metavar="DIR",
        help="export of the any-size photo model, for the photo section (default artifacts/photo/onnx; "
        "without one the section notes it: `make photo` makes it)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("artifacts/bench.json"),
        help="JSON report path (default artifacts/bench.json)",
    )
    p.add_argument(
        "--cli-images",
        type=positive_int,
        default=None,
        metavar="N",
        help="PNG files for the CLI section (default: 10000; --tiny: 32)",
    )
    p.add_argument(
        "--quality-images",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"evaluate quality on test[:N], N <= {TUNE_START} (default {TUNE_START}; --tiny: 24)",
    )
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx files (default: the Debian package's)")
    return p


def _error(message: object) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    budget = BUDGETS["tiny" if args.tiny else "full" if args.full else "quick"]
    if args.cli_images is not None:
        budget = dataclasses.replace(budget, cli_images=args.cli_images)
    if args.quality_images is not None:
        if args.quality_images > TUNE_START:
            return _error(
                f"--quality-images {args.quality_images}: at most {TUNE_START} "
                f"(test[{TUNE_START}:] is the tuning slice)"
            )
        budget = dataclasses.replace(budget, quality_images=args.quality_images)
    try:
        check_extras(args.sections)
    except ValueError as err:
        return _error(err)
    threads = args.threads or physical_cores()
    paths = args.checkpoint or [Path(DEFAULT_CHECKPOINT)]
    try:
        checkpoints = [load_checkpoint(path) for path in paths]
        data = load_fashion(args.data_dir) if needs_data(args.sections) else None
        check_data(args.sections, budget, data)
    except (CheckpointError, DataError) as err:
        return _error(err)
    photo = next((c for c in checkpoints if c.model_config.arch not in ARCHS), None)
    if photo is not None:  # the any-size model: its sections are the photo ones, read from its export
        return _error(
            f"{photo.path}: the photo model (arch {photo.model_config.arch}) is measured by the photo "
            "section from its export (--photo-onnx DIR); --checkpoint takes the 28x28 models "
            f"({', '.join(ARCHS)})"
        )

    def show(name: str, result: dict[str, Any]) -> None:
        print(render(name, result) + f"\n\n({name}: {result['seconds']:.1f} s)\n", flush=True)

    unwritable = unwritable_file(args.out, "--out", "bench.json")
    if unwritable:
        return _error(unwritable)
    with tempfile.TemporaryDirectory(prefix="ae-bench-") as scratch:
        try:
            models = resolve_models(
                checkpoints, args.onnx_dir, Path(scratch), log=lambda line: print(line, file=sys.stderr)
            )
        except ExportError as err:
            return _error(err)
        except InvalidModelError as err:  # a file there that is not a readable ae-export denoiser
            return _error(
                f"{err}; --onnx-dir needs an ae-export export (or none: the run exports the checkpoint)"
            )
        header = render_header({"mode": budget.mode, "machine": machine_info(threads)})
        print(f"{header}\n\nSections: {', '.join(args.sections)}\n", flush=True)
        try:
            report = run_bench(
                args.sections, budget, threads, models, data, on_section=show, photo_onnx=args.photo_onnx
            )
        except DataError as err:  # e.g. the lecture-style loop's idx files are not beside the dataset
            return _error(err)
    print(f"total: {report['seconds']['total']:.1f} s")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, report)
    except OSError as err:  # e.g. the disk filled during the run: the tables above are the report
        return _error(f"--out {args.out}: not written ({err}); the tables above are this run's report")
    print(f"wrote {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
