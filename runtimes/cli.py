"""`ae-denoise`: denoise image files and folders with an exported ONNX model (no torch needed).

Thin by design: it parses arguments, builds the plan and the model, and reports. The work is in
`runtimes.pipeline`. Exit codes: 0 all done (skips included), 1 some files failed (each named on stderr
with a reason), 2 usage error, unsafe output plan, or missing/invalid model (nothing written), 130
interrupted (Ctrl-C: every output written is whole, and a re-run of the same command skips them; while
the model loads or the inputs are listed, nothing is written yet).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from runtimes.denoiser import DEFAULT_TILE_PIXELS, Denoiser
from runtimes.fitting import SIZE_MODES
from runtimes.images import DEFAULT_MAX_PIXELS
from runtimes.manifest import DEFAULT_VARIANT, VARIANT_SUFFIXES, ManifestError
from runtimes.pipeline import Outcome, run_pipeline
from runtimes.planning import PlanError, plan_jobs
from runtimes.sessions import (
    CONV_SEARCHES,
    DEFAULT_CONV_SEARCH,
    PROVIDERS,
    InvalidModelError,
    ProviderUnavailableError,
)

PROG = "ae-denoise"
COLOR_CHOICES = ("auto", "gray")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def int_at_least(low: int, expected: str) -> Callable[[str], int]:
    """An argparse `type` for integers >= low; its error says what was expected and what was given."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


positive_int = int_at_least(1, "a positive integer")
nonnegative_int = int_at_least(0, "an integer >= 0")
seed_int = nonnegative_int  # every --seed of every CLI


def float_at_least(low: float, expected: str, strict: bool = False) -> Callable[[str], float]:
    """An argparse `type` for finite numbers >= low (> low when `strict`): NaN and infinities are refused
    by the flag's own error, not deep inside the run (`ae-train --lr inf` once trained until it
    "diverged"; `--lr nan` was torch's "Invalid learning rate", naming no flag)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _threads(text: str) -> int:
    """--threads: 1 to this machine's CPU count. Each session holds its own buffers (~9 MB for the lecture
    model), and more sessions than CPUs add nothing: `--threads 99999999999999999999999` grew to 23 GB
    before anything ran."""
    value = positive_int(text)
    limit = os.cpu_count() or 1
    if value > limit:
        raise argparse.ArgumentTypeError(
            f"expected 1..{limit} (this machine's CPUs; each is one ONNX Runtime session), got {value}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Denoise images with an exported denoising autoencoder (ONNX Runtime): grayscale, "
        "and colour too with an any-size (photo) model. Results are 8-bit PNGs mirroring each input folder; "
        "inputs are never written.",
    )
    parser.add_argument(
        "inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders (recursive)"
    )
    parser.add_argument(
        "--onnx",
        required=True,
        type=Path,
        metavar="MODEL",
        help="denoiser.onnx (or any variant's file, .ort included) from `ae-export`, or the export folder "
        "holding it",
    )
    parser.add_argument(
        "--variant",
        default=DEFAULT_VARIANT,
        metavar="NAME",
        help=f"with a folder: which variant of its manifest to load: {', '.join(VARIANT_SUFFIXES)} "
        f"(default {DEFAULT_VARIANT})",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT",
        help="output folder (default: a sibling `<input>_denoised` per input folder, `<stem>_denoised.png` "
        "beside an input file); with several inputs, results go to OUT/<input name>/...",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=256, help="model samples per call (default 256)"
    )
    parser.add_argument(
        "--provider",
        choices=PROVIDERS,
        default="auto",
        help="auto: CUDA if it really starts, else CPU; cuda: fail rather than fall back",
    )
    parser.add_argument(
        "--threads",
        type=_threads,
        default=None,
        help="CPU inference: this many single-threaded ONNX Runtime sessions, each running a slice of a "
        "large batch side by side (default: physical cores; 1 where other work holds the cores; no "
        "effect on CUDA, where the batch runs whole)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="decode/encode threads (default: physical cores, at least 2)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="rewrite existing outputs (default: skip them)"
    )
    parser.add_argument(
        "--add-noise",
        type=float_at_least(0.0, "a finite number >= 0 (e.g. 0.3)"),
        default=0.0,
        metavar="STD",
        help="demo: add clip(x + STD*N(0,1), 0, 1) noise first, save it as <stem>.noisy.png "
        "beside the result, and denoise that",
    )
    parser.add_argument("--seed", type=seed_int, default=0, help="seed for --add-noise (default 0)")
    parser.add_argument(
        "--size-mode",
        choices=SIZE_MODES,
        default="exact",
        help="for fixed-size models: exact (default) refuses an image of another size (reported, exit 1, "
        "nothing written); resize: scale to the model size and back; tile: overlapping model-size tiles "
        "blended with a smooth window. Models with dynamic height/width take every size as it is",
    )
    parser.add_argument(
        "--color",
        choices=COLOR_CHOICES,
        default="auto",
        help="auto (default): with a model of dynamic height/width, colour images keep their colour (each "
        "RGB channel denoised as a grayscale image; an RGB PNG is written); gray: convert every image to "
        "grayscale first. Fixed-size models (grayscale Fashion-MNIST) always get grayscale",
    )
    parser.add_argument(
        "--tile-pixels",
        type=int_at_least(0, "an integer >= 0 (0: run every image whole)"),
        default=DEFAULT_TILE_PIXELS,
        help="models with dynamic height/width: run large images as exact halo tiles of at most this many "
        f"pixels, one per core at a time (default {DEFAULT_TILE_PIXELS}; lower it to use less memory; 0: "
        "every image whole, in one piece on one core)",
    )
    parser.add_argument(
        "--cuda-conv-search",
        choices=CONV_SEARCHES,
        default=DEFAULT_CONV_SEARCH,
        help=f"with --provider cuda/auto on a GPU: how cuDNN picks convolution algorithms at each new image "
        f"size (default {DEFAULT_CONV_SEARCH}: cheap for folders of mixed sizes; exhaustive: times every "
        "algorithm once per size, for many images of one size)",
    )
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images larger than this many pixels (default {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    return parser


def one_line(text: str) -> str:
    """`text` as one printable line whatever the file names in it hold: a newline in a name split an error
    over two lines, and a name that is not UTF-8 printed as `bad\\udcff.png`. Control characters become
    escapes (`\\n`), undecodable bytes `\\xNN`."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _say(text: str) -> None:
    print(one_line(text), file=sys.stderr)


def _open_model(args: argparse.Namespace) -> Denoiser | None:
    """The run's Denoiser, or None once the reason it cannot be had is on stderr."""
    try:
        # No spinning: intra-op threads that spin between runs would take the cores the decode/encode
        # threads need (measured on 2 cores, 2 intra-op threads: ~1000 vs ~1600 images/s).
        return Denoiser(
            args.onnx,
            provider=args.provider,
            threads=args.threads,
            max_batch=args.batch_size,
            spinning=False,
            variant=args.variant,
            tile_pixels=args.tile_pixels or None,
            conv_search=args.cuda_conv_search,
        )
    except (FileNotFoundError, InvalidModelError, ProviderUnavailableError, ManifestError) as err:
        _say(f"{PROG}: error: cannot use model: {err}")
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Every file past --max-pixels is reported by the run's own header check; Pillow's warning for a
    # file past its own (process-wide) limit would only repeat it, out of order, on stderr.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        denoiser = _open_model(args)
        if denoiser is None:
            return EXIT_USAGE
        plan = plan_jobs(args.inputs, args.output, with_noisy=args.add_noise > 0)
    except PlanError as err:
        _say(f"{PROG}: error: {err}")
        return EXIT_USAGE
    except KeyboardInterrupt:  # loading the model or listing the inputs (seconds for a large tree)
        print(f"{PROG}: interrupted before any file was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    for path, reason in plan.scan_errors:
        _say(f"{PROG}: {path}: {reason}")
    if plan.ignored and not args.quiet:
        _say(f"{PROG}: {plan.ignored_summary()}")
    if plan.folder_links and not args.quiet:
        _say(f"{PROG}: {plan.folder_links_summary()}")
    if plan.earlier_results and not args.quiet:
        _say(f"{PROG}: {plan.earlier_results_summary()}")
    if not plan.jobs and not args.quiet:
        _say(f"{PROG}: no images found in {', '.join(map(str, args.inputs))}")

    progress = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm  # only on a terminal: keep imports and output of batch jobs lean

        progress = tqdm(total=len(plan.jobs), unit="img", file=sys.stderr, dynamic_ncols=True)

    finished = [0]  # files done, failed or skipped so far: what an interruption reports

    def on_outcome(outcome: Outcome) -> None:
        finished[0] += 1
        if outcome.status == "failed":
            message = one_line(f"{PROG}: {outcome.job.source}: {outcome.reason}")
            if progress is not None:
                progress.write(message, file=sys.stderr)
            else:
                print(message, file=sys.stderr)
        if progress is not None:
            progress.update(1)

    try:
        result = run_pipeline(
            denoiser,
            plan.jobs,
            size_mode=args.size_mode,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
            noise_std=args.add_noise,
            seed=args.seed,
            max_pixels=args.max_pixels,
            workers=args.workers,
            on_outcome=on_outcome,
            color=args.color == "auto",
        )
    except KeyboardInterrupt:
        # The writes already under way have finished (the pipeline's pool waits for them), each atomic.
        if progress is not None:
            progress.close()
        print(
            f"{PROG}: interrupted after {finished[0]} of {len(plan.jobs)} file(s); every output written is "
            "whole, and running the same command again skips them and goes on",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:
        if progress is not None:
            progress.close()
    if result.stale_temps_removed:  # said even with --quiet: files were removed from the output tree
        print(
            f"{PROG}: removed {result.stale_temps_removed} temporary file(s) left by an interrupted run",
            file=sys.stderr,
        )
    if not args.quiet:
        print(f"{PROG}: {result.summary(len(plan.scan_errors))} on {denoiser.provider}", file=sys.stderr)
    return EXIT_FAILED if result.failed or plan.scan_errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
