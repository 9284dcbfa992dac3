"""`ae-export`: export a checkpoint to ONNX and prove parity; `ae-export parity` checks existing files.

    ae-export [--checkpoint artifacts/checkpoint.pt] [--out artifacts/onnx] [--opset 18] [--graph fast]
              [--variants fp16,int8,ort] [--psnr-budget int8=0.1]
    ae-export parity [--checkpoint artifacts/checkpoint.pt] [--onnx-dir artifacts/onnx]
    ae-export triton [--onnx-dir artifacts/onnx] [--out artifacts/model_repository] [--check REPO]

Thin: the work is in ae_export.export, ae_export.deploy (variants) and ae_export.parity. Exit codes:
0 the fp32 files and every requested variant were written and passed; 1 parity failed (nothing written),
or a requested variant missed its PSNR budget or its parity (that variant is not written, the rest is);
2 bad input (missing/corrupt checkpoint, unwritable folder, unsupported opset, export fault); 130
interrupted (Ctrl-C: one line names the files written or removed so far, each whole).
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from runtimes.extras import extra_hint, require_extra

require_extra("ae-export", "train", ("torch", "onnx"))  # before the imports that need them

from ae_export.cliargs import HelpFormatter, parse_batch_sizes, parse_csv, parse_sizes
from ae_export.cpu import AUTO, CPU_TARGETS
from ae_export.deploy import export_variants
from ae_export.export import (
    DEFAULT_GRAPH,
    GRAPHS,
    ExportError,
    check_folder_holds,
    check_opset,
    check_out_dir,
    export_all,
    max_supported_opset,
)
from ae_export.parity import (
    BATCH_SIZES,
    PROVIDERS,
    ParityError,
    ParityReport,
    run_parity,
    run_parity_any_size,
)
from ae_export.photo_variants import (
    PHOTO_INT8_BUDGET_DB,
    PHOTO_VARIANTS,
    export_photo_int8,
    training_photos_folder,
)
from ae_export.specs import (
    ANY_SIZE_PARITY_SIZES,
    DEFAULT_OPSET,
    DEFAULT_VARIANTS,
    PARITY_JSON,
    REJECTED_JSON,
    VARIANT_CHOICES,
)
from ae_export.variant_parity import check_manifest_files, integrity_problems
from ae_export.variants import check_int8_opset, check_standard_test
from runtimes.manifest import ManifestError
from train.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from train.data import DataError, Dataset, load_dataset

COMMANDS = ("export", "parity", "triton", "compat")
# Subcommands with a parser of their own, imported when called: each needs an extra (`triton`, `compat`)
# that exporting does not, so a missing extra fails only the subcommand that needs it, naming the extra.
TOOLS = {"triton": ("ae_export.triton_repo", "triton"), "compat": ("ae_export.compat", "compat")}
PARITY_IMAGES = 1000
SIZES_DEFAULT = ",".join(f"{h}x{w}" for h, w in ANY_SIZE_PARITY_SIZES)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ae-export",
        description="Export encoder, decoder and denoiser to ONNX (dynamic batch) and check parity.",
        formatter_class=HelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--checkpoint", default="artifacts/checkpoint.pt", help="checkpoint.pt written by ae-train"
    )
    common.add_argument(
        "--providers", default=",".join(PROVIDERS), help=f"comma-separated subset of {', '.join(PROVIDERS)}"
    )
    common.add_argument(
        "--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="comma-separated parity batch sizes"
    )
    common.add_argument("--data-dir", default=None, help="where the checkpoint's dataset lives, if moved")
    common.add_argument(
        "--sizes",
        default=None,
        help="comma-separated HxW parity image sizes, for a model with dynamic height and width (the photo "
        f"model; a fixed-size model refuses the flag) (default: {SIZES_DEFAULT})",
    )
    exp = sub.add_parser(
        "export",
        parents=[common],
        help="export and check parity (the default command)",
        formatter_class=HelpFormatter,
    )
    exp.add_argument("--out", default="artifacts/onnx", help="folder for the .onnx files and parity.json")
    exp.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"18..{max_supported_opset()}")
    exp.add_argument(
        "--graph",
        default=DEFAULT_GRAPH,
        choices=GRAPHS,
        help="fast: ConvTranspose rewritten into Conv + Col2Im (faster in ONNX Runtime); portable: "
        "standard ops only, for consumers without Col2Im (OpenCV DNN, some mobile EPs)",
    )
    exp.add_argument(
        "--cpu-target",
        default=AUTO,
        choices=(AUTO, *CPU_TARGETS),
        help="the CPU the fast graph is tuned for: avx512 stacks the encoder's 8-channel first Conv with "
        "the next one (1.09x there, 1.08x slower on AVX2); auto: this machine's. Export on a build "
        "machine for other CPUs with their target",
    )
    exp.add_argument("--no-parity", action="store_true", help="skip parity (not recommended)")
    exp.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated subset of {', '.join(VARIANT_CHOICES)} ('ort': an .ort file for fp32 and each "
        f"precision written), or 'none' for the fp32 .onnx files only (default: "
        f"{','.join(DEFAULT_VARIANTS)}; for the any-size photo model: int8 only, judged on the validation "
        "photographs)",
    )
    exp.add_argument(
        "--psnr-budget",
        action="append",
        default=[],
        metavar="VARIANT=DB",
        help="override a variant's PSNR budget (dB it may lose vs fp32 on the standard test; for the photo "
        "model, at any sigma on the validation photographs), e.g. int8=0.2",
    )
    par = sub.add_parser(
        "parity", parents=[common], help="check parity of existing files", formatter_class=HelpFormatter
    )
    par.add_argument("--onnx-dir", default="artifacts/onnx", help="the export folder (ae-export --out)")
    sub.add_parser("triton", help="write or --check a Triton model repository (see ae-export triton -h)")
    sub.add_parser("compat", help="OpenVINO / OpenCV DNN vs ONNX Runtime matrix (see ae-export compat -h)")
    return p


def checkpoint_data(checkpoint: Checkpoint, data_dir: str | None) -> Dataset | None:
    """The checkpoint's dataset, or None with a warning (then parity uses random inputs only).

    From `data_dir` if given, else from the folder the checkpoint recorded; Fashion-MNIST from Debian's
    package where that folder is gone (a machine without the package trains on torchvision's download or
    a --data-dir, and only the recorded folder holds its files)."""
    name = checkpoint.dataset.get("name", "fashion-mnist")
    source = data_dir or checkpoint.dataset.get("source")
    if data_dir is None and name == "fashion-mnist" and source is not None and not Path(source).is_dir():
        source = None
    try:
        return load_dataset(name, source, download=False)
    except DataError as err:
        print(f"warning: no real images for parity ({err}); using random inputs only", file=sys.stderr)
        return None


def parity_images(data: Dataset | None) -> np.ndarray | None:
    """Real held-out images of the checkpoint's dataset, or None."""
    return None if data is None else data.val.images[:PARITY_IMAGES].numpy()


def _variants(text: str) -> list[str]:
    """--variants: a subset of VARIANT_CHOICES, or 'none' alone (the fp32 files only)."""
    if text.strip() == "none":
        return []
    values = parse_csv(text, str, "variants")
    bad = [v for v in values if v not in VARIANT_CHOICES]
    if bad:
        raise ValueError(
            f"--variants: {bad} not valid; choose from {', '.join(VARIANT_CHOICES)}, or none alone (the fp32 "
            "files only)"
        )
    return values


def _budgets(items: list[str]) -> dict[str, float]:
    budgets = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in ("fp16", "int8"):
            raise ValueError(f"--psnr-budget {item!r}: variant must be fp16 or int8 (e.g. int8=0.1)")
        try:
            budgets[name] = float(value)
        except ValueError:
            raise ValueError(f"--psnr-budget {item!r}: expected VARIANT=DB with DB a number") from None
        if not math.isfinite(budgets[name]):  # nan: no loss is within it; inf: no search, no gate
            raise ValueError(f"--psnr-budget {item!r}: DB must be a finite number of dB (e.g. int8=0.2)")
    return budgets


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv.insert(0, "export")
    if argv[0] in TOOLS:
        module, extra = TOOLS[argv[0]]
        try:
            tool = importlib.import_module(module)
        except ModuleNotFoundError as err:
            print(f"ae-export {argv[0]}: {extra_hint(extra, err)}", file=sys.stderr)
            return 2
        return tool.main(argv[1:])
    args = build_parser().parse_args(argv)
    target = Path(args.onnx_dir if args.command == "parity" else args.out)
    before = _files_in(target)
    try:
        providers = parse_csv(args.providers, str, "providers", PROVIDERS)
        batch_sizes = parse_batch_sizes(args.batch_sizes)
        checkpoint = load_checkpoint(args.checkpoint)
        sizes = parse_sizes(args.sizes if args.sizes is not None else SIZES_DEFAULT)
        model = checkpoint.build_model()
        any_size = checkpoint.model_config.arch == "fcn"
        if args.sizes is not None and not any_size:  # its parity runs at the one size the model takes
            raise ValueError(
                f"--sizes applies to a model with dynamic height and width (the photo model); "
                f"{args.checkpoint} is a fixed-size {checkpoint.model_config.arch} model (28x28 images): "
                "drop --sizes"
            )
        # The photo model's parity uses its own sizes and inputs; Fashion-MNIST is no data of its.
        data = None if any_size else checkpoint_data(checkpoint, args.data_dir)
        images = None if any_size else parity_images(data)
        report = ParityReport()

        def verify(onnx_dir: Path, integrity: Sequence[str] = ()) -> ParityReport:
            nonlocal report
            if any_size:
                report = run_parity_any_size(model, onnx_dir, sizes, batch_sizes, providers)
            else:
                report = run_parity(model, onnx_dir, images, batch_sizes, providers)
            report.integrity = list(integrity)
            print(report.table())
            if not report.checks_passed:
                raise ParityError(report)
            return report

        if args.command == "parity":
            warning = check_folder_holds(checkpoint, Path(args.onnx_dir))
            if warning:
                print(warning, file=sys.stderr)
            variant_sizes = sizes if any_size else None
            return _parity_command(
                Path(args.onnx_dir),
                verify,
                lambda folder: check_manifest_files(model, folder, images, batch_sizes, variant_sizes),
            )
        out = Path(args.out)
        check_out_dir(out)  # before the checks and exports that take minutes
        default = PHOTO_VARIANTS if any_size else DEFAULT_VARIANTS
        variants = _variants(args.variants if args.variants is not None else ",".join(default))
        budgets = _budgets(args.psnr_budget)
        # A typed flag that would change nothing is an error naming it, as in ae-train (these were accepted
        # and silently ignored).
        ignored = [
            f"--psnr-budget {name}=...: {name} is not among the variants exported "
            f"({','.join(variants) or 'none'}); drop it, or add {name} to --variants"
            for name in budgets
            if name not in variants
        ]
        if args.graph == "portable" and args.cpu_target != AUTO:
            ignored.append("--cpu-target tunes the fast graph; --graph portable has nothing to tune")
        if args.no_parity and args.providers != ",".join(PROVIDERS):  # not the default: typed
            ignored.append("--providers names parity's providers, and --no-parity skips parity (drop one)")
        if ignored:
            raise ValueError("; ".join(ignored))
        if any_size and set(variants) - set(PHOTO_VARIANTS):
            raise ValueError(
                f"--variants {','.join(variants)}: the photo model offers {', '.join(PHOTO_VARIANTS)} (or "
                "none): fp16 ran slower than fp32 on the CPU, and the .ort and portable files are the "
                "Fashion-MNIST model's"
            )
        if data is None and not any_size:
            raise ValueError(
                "the variants and manifest need the checkpoint's real images (calibration and the quality "
                "gate); pass --data-dir"
            )
        if data is not None:
            check_standard_test(data)  # before export_all replaces anything
        if any_size and variants:
            training_photos_folder(checkpoint, args.data_dir)  # likewise: the int8 twin's photographs
        if "int8" in variants:
            check_opset(args.opset)  # the opsets an export takes at all, named first
            check_int8_opset(args.opset)  # as early: the fp32 export alone would run
        paths = export_all(
            checkpoint,
            out,
            args.opset,
            verify=None if args.no_parity else verify,
            graph=args.graph,
            cpu_target=args.cpu_target,
        )
        if not args.no_parity:
            report.write_json(out / PARITY_JSON)
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
        if any_size:  # int8 judged on the validation photographs (ae_export.photo_variants)
            if not variants:
                return 0
            int8 = export_photo_int8(
                checkpoint,
                out,
                budgets.get("int8", PHOTO_INT8_BUDGET_DB),
                args.data_dir,
                parity_sizes=None if args.no_parity else sizes,
                batch_sizes=batch_sizes,
            )
            if int8.parity is not None:  # the int8 file vs PyTorch and fp32, beside the fp32 checks
                print(int8.parity.table())
                report.results.extend(int8.parity.results)
                report.write_json(out / PARITY_JSON)
            if int8.rejected:
                print(f"ae-export: variant int8 not written: {int8.rejected}", file=sys.stderr)
                return 1
            return 0
        result = export_variants(
            checkpoint, out, variants, data, budgets, images, batch_sizes, parity=not args.no_parity
        )
        if result.parity.results:
            print(result.parity.table())
        print(f"wrote {result.manifest}")
        for o in result.rejected:
            print(f"ae-export: variant {o.variant.name} not written: {o.rejected}", file=sys.stderr)
        return 1 if result.rejected else 0
    except ParityError as err:
        target = Path(args.onnx_dir if args.command == "parity" else args.out)
        name = PARITY_JSON if args.command == "parity" else REJECTED_JSON
        if target.is_dir():
            err.report.write_json(target / name)
        print(f"ae-export: {err}", file=sys.stderr)
        if args.command == "export":
            print(f"ae-export: export rejected; files in {target} left as they were", file=sys.stderr)
        return 1
    except (CheckpointError, ExportError, ManifestError, FileNotFoundError, ValueError, OSError) as err:
        print(f"ae-export: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nae-export: interrupted: {_changes(target, before, args.command)}", file=sys.stderr)
        return 130


def _files_in(folder: Path) -> dict[str, tuple[int, int]]:
    """The files in `folder` (not the hidden temporaries of atomic writes): name -> (mtime_ns, size)."""
    try:
        stats = {p.name: p.stat() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    except OSError:
        return {}
    return {name: (st.st_mtime_ns, st.st_size) for name, st in stats.items()}


def _changes(folder: Path, before: dict[str, tuple[int, int]], command: str) -> str:
    """What an interrupted run changed in `folder`: each file it wrote whole or removed, by name."""
    after = _files_in(folder)
    written = sorted(name for name, stat in after.items() if before.get(name) != stat)
    removed = sorted(set(before) - set(after))
    again = f"the {'export' if command == 'export' else 'check'} did not finish: run the same command again"
    if not written and not removed:
        return f"nothing in {folder} was written or removed; {again}"
    done = "; ".join(
        f"{verb} {', '.join(names)}" for verb, names in (("wrote", written), ("removed", removed)) if names
    )
    return f"in {folder} it {done} (each whole); every other file is as it was; {again}"


def _parity_command(
    folder: Path,
    verify: Callable[[Path, Sequence[str]], ParityReport],
    check_variants: Callable[[Path], ParityReport],
) -> int:
    """fp32 files vs PyTorch (raises ParityError), then every other file the manifest lists.

    The files that differ from the manifest are found first, so every table and parity.json count them:
    a run that exits 1 on one never says PASS."""
    problems = integrity_problems(folder)
    report = verify(folder, problems)
    checked = check_variants(folder)
    if checked.results:
        checked.integrity = problems
        print(checked.table())
        report.results.extend(checked.results)
    report.write_json(folder / PARITY_JSON)
    print(f"wrote {folder / PARITY_JSON}")
    for line in problems:
        print(f"ae-export: integrity FAILED: {line}", file=sys.stderr)
    if not report.checks_passed:
        raise ParityError(report)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
