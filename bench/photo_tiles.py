"""Large photographs: the any-size denoiser run whole vs in halo tiles (time, peak memory, same result).

What is measured, in one run: the bundled `camera` photograph scaled up (bicubic) to each size, with
8-bit Gaussian noise of sigma 25/255 from a fixed seed, denoised once through `runtimes.Denoiser` per
configuration: whole (`tile_pixels=None`, the behaviour before halo tiles), the default tiles, and
smaller tiles; on all cores and on one. Each configuration runs in its own process, so that its peak
resident memory (model and input included, see `peak_rss_mb`) is its own; the process warms the model on a
small image first, and the time is that of the one `denoise` call. Every tiled result is compared with
the whole one (max abs difference), and speed is a ratio to the whole run on all cores, same run.

`--provider cuda` runs the CUDA configurations instead (one slot, so tiles only bound memory there);
each is timed twice on the same image, since the first call at a new input shape includes cuDNN's
choice of convolution algorithms. Peak RSS is then the host's, not the GPU's.

Standalone: `python -m bench.photo_tiles --onnx artifacts/photo/onnx`; `make photo-bench` runs it after
the quality table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ae_export.cliargs import parse_sizes
from bench.tables import Column, Result, Table, print_and_write, render_table
from runtimes.denoiser import DEFAULT_TILE_PIXELS, Denoiser
from runtimes.sessions import physical_cores

# This module's top level imports no torch (bench.machine and train do, inside the functions that need
# them): a configuration's process is then what an application on an edge device holds, model and image.

SIZES = ((1024, 1536), (3000, 4000))  # (H, W): 1.6 MP and a 12 MP camera's frame
SIGMA_255 = 25
SEED = 7
# (label, tile_pixels or None for whole, threads or None for every core); the first is the baseline.
CONFIGS: tuple[tuple[str, int | None, int | None], ...] = (
    ("whole", None, None),
    (f"tiles <= {DEFAULT_TILE_PIXELS:,} px (default)", DEFAULT_TILE_PIXELS, None),
    (f"tiles <= {DEFAULT_TILE_PIXELS * 2:,} px", DEFAULT_TILE_PIXELS * 2, None),
    (f"tiles <= {DEFAULT_TILE_PIXELS // 2:,} px", DEFAULT_TILE_PIXELS // 2, None),
    ("whole, 1 thread", None, 1),
    (f"tiles <= {DEFAULT_TILE_PIXELS:,} px, 1 thread", DEFAULT_TILE_PIXELS, 1),
)
# On CUDA threads do not apply; larger tiles are the question (fewer calls vs bounded memory).
CUDA_CONFIGS: tuple[tuple[str, int | None, int | None], ...] = (
    ("whole", None, None),
    *((f"tiles <= {DEFAULT_TILE_PIXELS * k:,} px{' (default)' * (k == 1)}", DEFAULT_TILE_PIXELS * k, None)
      for k in (1, 4, 16)),
)  # fmt: skip


def large_photo(height: int, width: int) -> np.ndarray:
    """(H, W) float32 in [0, 1]: `camera` scaled to the size, with clipped 8-bit noise."""
    from train.photos import bundled_photos, noisy_8bit

    photos = bundled_photos("val")
    camera = photos.images[photos.names.index("camera")]
    scaled = np.asarray(Image.fromarray(camera).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    rng = np.random.default_rng(SEED)
    return noisy_8bit(scaled[None, None] / 255.0, SIGMA_255 / 255.0, rng)[0, 0].astype(np.float32)


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB: Linux's VmHWM, else `ru_maxrss`.

    Why not `ru_maxrss` alone: Linux carries the peak of the address space that `execve` replaced into
    it, and a child that Python starts with vfork + exec replaces its parent's. Every configuration then
    reported at least the parent's peak (~570 MB once the parent had imported torch). VmHWM is the
    peak of the process's own address space, the one exec made.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # "VmHWM:   123456 kB"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux and BSDs


def _child(
    onnx: str, image_path: str, out_path: str, tile_pixels: int | None, threads: int | None, provider: str
) -> None:
    """One configuration in this process: prints {"seconds", "again_seconds", "maxrss_mb"} as JSON and
    saves the result. "again_seconds" (CUDA only, else None) times a second call on the same image."""
    if "torch" in sys.modules:  # its ~450 MB would swamp the figures; an edge application has no torch
        raise RuntimeError("bench.photo_tiles --child imported torch: its peak memory is not the model's")
    denoiser = Denoiser(onnx, provider=provider, threads=threads, tile_pixels=tile_pixels)  # type: ignore[arg-type]
    denoiser.denoise(np.zeros((64, 64), np.float32))  # warm-up outside the timed call
    image = np.load(image_path)
    started = time.perf_counter()
    out = denoiser.denoise(image)
    seconds = time.perf_counter() - started
    again = None
    if provider == "cuda":
        started = time.perf_counter()
        denoiser.denoise(image)
        again = time.perf_counter() - started
    np.save(out_path, out)
    print(json.dumps({"seconds": seconds, "again_seconds": again, "maxrss_mb": peak_rss_mb()}))


def run_tile_bench(
    onnx: str | Path,
    sizes: Sequence[tuple[int, int]] = SIZES,
    configs: Sequence[tuple[str, int | None, int | None]] | None = None,
    timeout: float = 900,
    provider: str = "cpu",
) -> dict[str, Any]:
    """Rows per size x configuration: seconds, ms per megapixel, speed vs whole, peak RSS, max abs diff.

    `configs` defaults to the provider's (CONFIGS on the CPU, CUDA_CONFIGS on CUDA)."""
    if provider not in ("cpu", "cuda"):
        raise ValueError(f"provider {provider!r}; valid: cpu, cuda")
    configs = configs or (CUDA_CONFIGS if provider == "cuda" else CONFIGS)
    model = Denoiser(onnx, provider=provider, threads=1, warmup=False)  # type: ignore[arg-type]
    if model.metadata.receptive_radius is None:
        raise ValueError(
            f"{model.path} has no receptive radius in its metadata (exported before halo tiles), so it "
            "always runs whole: export it again (ae-export --checkpoint ... --out ...)"
        )
    rows = []
    with tempfile.TemporaryDirectory(prefix="ae-tiles-") as scratch:
        for height, width in sizes:
            image_path = Path(scratch) / "image.npy"
            np.save(image_path, large_photo(height, width))
            baseline: dict[str, Any] | None = None
            reference: np.ndarray | None = None
            for label, tile_pixels, threads in configs:
                out_path = Path(scratch) / "out.npy"
                command = [
                    sys.executable, "-m", "bench.photo_tiles", "--child", "--onnx", str(onnx),
                    "--image", str(image_path), "--result", str(out_path),
                    "--tile-pixels", str(tile_pixels or 0), "--threads", str(threads or 0),
                    "--provider", provider,
                ]  # fmt: skip
                proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
                if proc.returncode != 0:
                    raise RuntimeError(f"{label} at {height}x{width} failed:\n{proc.stderr}")
                measured = json.loads(proc.stdout.strip().splitlines()[-1])
                out = np.load(out_path)
                if reference is None:
                    reference = out
                row = {
                    "size": f"{height}x{width}",
                    "megapixels": height * width / 1e6,
                    "config": label,
                    "provider": provider,
                    "threads": threads or physical_cores(),
                    "seconds": measured["seconds"],
                    "again_seconds": measured.get("again_seconds"),
                    "ms_per_mp": 1e3 * measured["seconds"] / (height * width / 1e6),
                    "maxrss_mb": measured["maxrss_mb"],
                    "max_abs_diff": float(np.abs(out - reference).max()),
                }
                baseline = baseline or row
                row["speed_vs_whole"] = baseline["seconds"] / row["seconds"]
                row["memory_vs_whole"] = row["maxrss_mb"] / baseline["maxrss_mb"]
                rows.append(row)
    from bench.machine import cpu_flags

    return {
        "onnx": str(onnx),
        "provider": provider,
        "cpu_flags": cpu_flags(),
        "cores": physical_cores(),
        "rows": rows,
    }


def heading(result: Result) -> str:
    where = "CUDA" if result.get("provider") == "cuda" else f"{result['cores']} cores"
    return (
        f"Large photographs: whole vs halo tiles ({where}; CPU flags: "
        f"{' '.join(result['cpu_flags']) or 'unknown'})"
    )


def _columns(result: Result) -> list[Column]:
    """The CPU table's columns; on CUDA also the second call's time (the first includes cuDNN's search)."""
    columns = [
        Column("size", "size"),
        Column("run", "config"),
        Column("s", "seconds", lambda v: f"{v:.2f}"),
        Column("ms / MP", "ms_per_mp", lambda v: f"{v:.0f}"),
        Column("speed vs whole", "speed_vs_whole", lambda v: f"{v:.2f}x"),
        Column("peak RSS MB", "maxrss_mb", lambda v: f"{v:,.0f}"),
        Column("memory vs whole", "memory_vs_whole", lambda v: f"{v:.2f}x"),
        Column("max abs diff", "max_abs_diff", lambda v: f"{v:.1e}"),
    ]
    if result.get("provider") == "cuda":
        columns.insert(3, Column("s, same size again", "again_seconds", lambda v: f"{v:.3f}"))
    return columns


TABLES = (
    Table(
        columns=_columns,
        notes=lambda _r: [
            "each run in its own process (peak RSS includes the model and the image); speed and memory are "
            "ratios to the whole run on all cores at the same size; max abs diff is against that run's output"
        ],
    ),
)


def render_result(result: Result) -> str:
    return "\n\n".join([heading(result), *(render_table(table, result) for table in TABLES)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.photo_tiles",
        description="Large photographs through the any-size denoiser: whole vs halo tiles.",
    )
    p.add_argument("--onnx", default="artifacts/photo/onnx", help="the exported denoiser or its folder")
    p.add_argument("--out", default=None, help="also write the JSON results here")
    p.add_argument("--sizes", default=",".join(f"{h}x{w}" for h, w in SIZES), help="HxW,HxW,...")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="where the model runs")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one configuration
    p.add_argument("--image", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--tile-pixels", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        _child(
            args.onnx, args.image, args.result, args.tile_pixels or None, args.threads or None, args.provider
        )
        return 0
    try:
        result = run_tile_bench(args.onnx, parse_sizes(args.sizes), provider=args.provider)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"bench.photo_tiles: error: {err}", file=sys.stderr)
        return 2
    print_and_write(render_result(result), result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
