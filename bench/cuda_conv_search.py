"""cuDNN's convolution algorithm choice on ONNX Runtime CUDA: "heuristic" vs "exhaustive", in one run.

    python -m bench.cuda_conv_search --onnx-dir artifacts/onnx --photo-onnx artifacts/photo/onnx

Why: cuDNN picks each convolution's algorithm once per new input shape. ONNX Runtime's default search
times every algorithm, so the first call at every new shape is slow: for the fixed-size (Fashion-MNIST)
model every new batch size (a micro-batcher sends many), for the photo model every new photograph size.
The runtime's default (`runtimes.sessions.DEFAULT_CONV_SEARCH`) rests on this bench's figures.

What is measured, through `runtimes.Denoiser` as users call it, per setting:
- the fixed-size model: the first call at each batch size 1..32 in turn (all of them: the cost of the
  searches), then p50 of repeated calls at batch 1 and 256;
- photo model (default halo tiles): one pass over photographs of eight sizes (each size new to the
  session), then a second pass over the same ones (every shape known), and a 12 MP photograph twice.

Each setting runs in its own process, twice, in the order exhaustive, heuristic, heuristic, exhaustive,
so that neither is favoured by the GPU warming up; a table cell is the better of a setting's two runs,
and the ratio is exhaustive's time over heuristic's (above 1: heuristic is faster). The outputs of the
two settings are compared (max abs difference), since the algorithms sum in different orders.
Needs a CUDA execution provider that starts: elsewhere it says why and exits 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.tables import Column, Result, Table, print_and_write, render_table
from runtimes.denoiser import Denoiser
from runtimes.sessions import ProviderUnavailableError

SETTINGS = ("exhaustive", "heuristic")
ORDER = ("exhaustive", "heuristic", "heuristic", "exhaustive")
BATCH_SWEEP = range(1, 33)
# (H, W): eight sizes a folder of mixed photographs might hold; the larger ones run as halo tiles.
PHOTO_SIZES = (
    (333, 500),
    (480, 640),
    (500, 375),
    (600, 800),
    (768, 1024),
    (900, 1200),
    (1080, 1440),
    (1200, 1600),
)
LARGE = (3000, 4000)
STEADY_CALLS = 30


def _seconds(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _child(onnx_dir: str, photo_onnx: str, conv_search: str, out_dir: str) -> dict[str, float]:
    """One setting in this process: {workload: seconds}; saves two outputs for the comparison."""
    rng = np.random.default_rng(0)
    lecture = Denoiser(onnx_dir, provider="cuda", conv_search=conv_search)  # type: ignore[arg-type]
    if lecture.image_shape is None:
        raise ValueError(f"{onnx_dir}: expected the fixed-size model's export, got an any-size model")
    size = "x".join(map(str, lecture.image_shape))
    images = rng.random((256, 1, *lecture.image_shape), dtype=np.float32)
    sweep = sum(_seconds(lambda b=b: lecture(images[:b])) for b in BATCH_SWEEP)
    figures = {f"{size}: first call at batch {BATCH_SWEEP[0]}..{BATCH_SWEEP[-1]}": sweep}
    for batch in (1, 256):
        times = [_seconds(lambda b=batch: lecture(images[:b])) for _ in range(STEADY_CALLS)]
        figures[f"{size}: batch {batch}, p50"] = float(np.median(times))
    np.save(Path(out_dir) / "lecture.npy", lecture(images[:32]))
    photo = Denoiser(photo_onnx, provider="cuda", conv_search=conv_search)  # type: ignore[arg-type]
    photos = [rng.random(size, dtype=np.float32) for size in PHOTO_SIZES]
    figures["photos of 8 sizes: first pass"] = sum(_seconds(lambda p=p: photo(p)) for p in photos)
    figures["photos of 8 sizes: second pass"] = sum(_seconds(lambda p=p: photo(p)) for p in photos)
    np.save(Path(out_dir) / "photo.npy", photo(photos[-1]))
    large = rng.random(LARGE, dtype=np.float32)
    figures["12 MP photograph: first call"] = _seconds(lambda: photo(large))
    figures["12 MP photograph: again"] = _seconds(lambda: photo(large))
    return figures


def run_conv_search_bench(
    onnx_dir: str | Path, photo_onnx: str | Path, timeout: float = 600
) -> dict[str, Any]:
    """Rows per workload: each setting's best of two runs (seconds) and exhaustive / heuristic."""
    for folder in (onnx_dir, photo_onnx):  # a missing file or no CUDA fails here, before any child
        Denoiser(folder, provider="cuda", warmup=False)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ae-convsearch-") as scratch:
        outputs: dict[str, Path] = {}
        for index, setting in enumerate(ORDER):
            out_dir = Path(scratch) / f"{index}-{setting}"
            out_dir.mkdir()
            outputs.setdefault(setting, out_dir)
            command = [
                sys.executable, "-m", "bench.cuda_conv_search", "--child", setting,
                "--onnx-dir", str(onnx_dir), "--photo-onnx", str(photo_onnx), "--child-out", str(out_dir),
            ]  # fmt: skip
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"conv_search={setting} failed:\n{proc.stderr[-3000:]}")
            runs.append({"setting": setting, "seconds": json.loads(proc.stdout.strip().splitlines()[-1])})
        diffs = {
            name: float(
                np.abs(
                    np.load(outputs["heuristic"] / f"{name}.npy")
                    - np.load(outputs["exhaustive"] / f"{name}.npy")
                ).max()
            )
            for name in ("lecture", "photo")
        }
    rows = []
    for workload in runs[0]["seconds"]:
        best = {s: min(r["seconds"][workload] for r in runs if r["setting"] == s) for s in SETTINGS}
        rows.append(
            {
                "workload": workload,
                **best,
                "exhaustive_over_heuristic": best["exhaustive"] / best["heuristic"],
            }
        )
    return {"order": list(ORDER), "runs": runs, "rows": rows, "max_abs_diff": diffs}


def _ms(value: float) -> str:
    return f"{value * 1e3:,.3f}" if value < 1e-2 else f"{value * 1e3:,.1f}"


TABLES = (
    Table(
        columns=(
            Column("workload", "workload"),
            Column("exhaustive ms", "exhaustive", _ms),
            Column("heuristic ms", "heuristic", _ms),
            Column("exhaustive / heuristic", "exhaustive_over_heuristic", lambda v: f"{v:.2f}x"),
        ),
        notes=lambda r: [
            f"each setting in its own process, run in the order {', '.join(r['order'])}; a cell is the "
            "better of its setting's two runs; through runtimes.Denoiser on CUDA (TF32 off)",
            "max abs difference heuristic vs exhaustive: "
            + ", ".join(f"{name} {value:.1e}" for name, value in r["max_abs_diff"].items()),
        ],
    ),
)


def render_result(result: Result) -> str:
    heading = "cuDNN convolution algorithm search on ONNX Runtime CUDA: heuristic vs exhaustive"
    return "\n\n".join([heading, *(render_table(table, result) for table in TABLES)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.cuda_conv_search", description=__doc__.splitlines()[0])
    p.add_argument("--onnx-dir", default="artifacts/onnx", help="the fixed-size model's export folder")
    p.add_argument("--photo-onnx", default="artifacts/photo/onnx", help="the photo model's export folder")
    p.add_argument("--out", default=None, help="also write the JSON results here")
    p.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)  # one setting, in this process
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.onnx_dir, args.photo_onnx, args.child, args.child_out)))
        return 0
    try:
        result = run_conv_search_bench(args.onnx_dir, args.photo_onnx)
    except ProviderUnavailableError as err:
        print(f"bench.cuda_conv_search: error: this bench needs CUDA: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"bench.cuda_conv_search: error: {err}", file=sys.stderr)
        return 2
    print_and_write(render_result(result), result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
