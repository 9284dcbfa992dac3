"""Photo section of the benchmark: the any-size ONNX denoiser vs NL-means and BM3D on photographs.

What is measured, all in one run on one machine: the validation photographs (train/photos.py: camera,
coins, astronaut, clock, chelsea; never trained on) with 8-bit clipped Gaussian noise of sigma 15, 25 and
50 (/255) from fixed seeds; each method's output rounded to 8 bits (what a saved file holds); PSNR and
SSIM as scikit-image computes them (data range 1), averaged per image; and wall time per megapixel.

* ours: the exported denoiser run by the torch-free runtime (`runtimes.Denoiser`), the path
  `ae-denoise` takes. One model for every sigma (it was trained on a range and is told nothing). Where
  the export folder holds the int8 twin (`ae_export.photo_variants`), it gets a row of its own.
* NL-means: scikit-image's `denoise_nl_means` told the true sigma, h = 0.8 sigma, 7x7 patches within
  23x23 (patch_distance 11), fast mode: the parameters scikit-image's own documentation recommends.
* BM3D: the `bm3d` package (`bm3d.bm3d(noisy, sigma_psd=sigma)`), told the true sigma; skipped with a
  note when the package is not installed.

Timing: each method runs once per image (a warm-up run of ours first); ms per megapixel is total time
over total pixels. Speed ratios are against NL-means measured in the same run, since absolute times
depend on the machine and on its load.

A section of `ae-bench` (`--photo-onnx DIR`, default artifacts/photo/onnx; without a model there the
section reports that instead of failing, since the photo model is an optional `make photo`). In tiny mode
it measures sigma 25 on a centre crop of the smallest validation photograph and skips BM3D (seconds, not
minutes; the numbers mean nothing). Standalone, for the Makefile's photo-bench and photo-picture:

    python -m bench.photo --onnx artifacts/photo/onnx --out artifacts/bench/photo.json [--picture PNG]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from bench.machine import cpu_flags
from bench.section import DENOISER_FILE, BenchContext
from bench.tables import Column, Result, Table, print_and_write, render_table
from runtimes.denoiser import Denoiser
from runtimes.fileio import atomic_save
from runtimes.fitting import from_model, to_model, to_uint8
from runtimes.images import load_image8
from runtimes.manifest import variants_present
from runtimes.sessions import physical_cores
from train.photos import VALIDATION_PHOTOS, PhotoSet, bundled_photos, noisy_8bit, skimage_data_dir

NEEDS_DATA = False

SIGMAS_255 = (15, 25, 50)
NOISE_SEED = 2024
PICTURE_PHOTO = "camera"
PICTURE_SIGMA_255 = 25
PICTURE_BOX = (40, 150, 296, 406)  # (top, left, bottom, right) of camera: face, camera and grass
TINY_SIGMA_255 = 25
TINY_CROP = 128  # side of the centre crop tiny mode measures


def _nl_means(noisy: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(
        noisy, h=0.8 * sigma, sigma=sigma, patch_size=7, patch_distance=11, fast_mode=True
    )


def _bm3d() -> Callable[[np.ndarray, float], np.ndarray] | None:
    try:
        import bm3d
    except ImportError:
        return None
    return lambda noisy, sigma: bm3d.bm3d(noisy, sigma_psd=sigma)


def _to8(values: np.ndarray) -> np.ndarray:
    """float [0, 1] -> float [0, 1] on the 8-bit grid: what a saved result holds."""
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0) / 255.0


def _scores(denoised: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM (data range 1) of (H, W) or, over its channels, (H, W, 3) images."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    channel_axis = -1 if clean.ndim == 3 else None
    return (
        float(peak_signal_noise_ratio(clean, denoised, data_range=1.0)),
        float(structural_similarity(clean, denoised, data_range=1.0, channel_axis=channel_axis)),
    )


Method = Callable[[np.ndarray, float], np.ndarray]


def _measure(
    methods: dict[str, Method], cleans: Sequence[np.ndarray], noisy_set: Sequence[np.ndarray], sigma_255: int
) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """One row per method at one sigma (mean PSNR/SSIM of its 8-bit outputs, ms per megapixel of image),
    and each method's per-image PSNRs. `cleans` are uint8, (H, W) or (H, W, 3)."""
    sigma = sigma_255 / 255.0
    rows, per_image = [], {}
    for name, method in methods.items():
        psnrs, ssims, seconds, pixels = [], [], 0.0, 0
        for image, noisy in zip(cleans, noisy_set, strict=True):
            started = time.perf_counter()
            out = method(noisy, sigma)
            seconds += time.perf_counter() - started
            pixels += image.shape[0] * image.shape[1]
            psnr, ssim = _scores(_to8(np.asarray(out, dtype=np.float64)), image.astype(np.float64) / 255.0)
            psnrs.append(psnr)
            ssims.append(ssim)
        per_image[name] = psnrs
        rows.append({
            "sigma_255": sigma_255, "method": name, "psnr": float(np.mean(psnrs)),
            "ssim": float(np.mean(ssims)),
            "ms_per_mp": 1e3 * seconds / (pixels / 1e6) if name != "noisy input" else None,
        })  # fmt: skip
    return rows, per_image


def tiny_photos() -> PhotoSet:
    """A centre crop of the smallest validation photograph: tiny mode's whole test set."""
    val = bundled_photos("val")
    index = min(range(len(val.images)), key=lambda i: val.images[i].size)
    image = val.images[index]
    top, left = (image.shape[0] - TINY_CROP) // 2, (image.shape[1] - TINY_CROP) // 2
    crop = image[top : top + TINY_CROP, left : left + TINY_CROP]  # (TINY_CROP, TINY_CROP)
    name = f"{val.names[index]} (centre {TINY_CROP}x{TINY_CROP} crop)"
    return PhotoSet(source=val.source, names=(name,), images=(crop,))


# The validation photographs whose files are in colour: the colour table denoises their RGB originals.
COLOUR_PHOTOS = ("astronaut", "chelsea")


def run_colour_rows(denoiser: Denoiser, sigmas_255: Sequence[int]) -> list[dict[str, Any]]:
    """Rows per sigma x method on the colour originals of COLOUR_PHOTOS: the noise drawn per channel,
    ours run the way `ae-denoise` runs a colour file (each RGB channel a sample, `runtimes.fitting.to_model`),
    NL-means on all three channels at once (scikit-image's colour mode); PSNR and SSIM over RGB."""
    from skimage.restoration import denoise_nl_means

    root = skimage_data_dir()
    cleans = [load_image8(root / VALIDATION_PHOTOS[name]) for name in COLOUR_PHOTOS]  # (H, W, 3) uint8

    def ours(noisy: np.ndarray, _sigma: float) -> np.ndarray:
        samples, plan = to_model(to_uint8(noisy), None)  # (3, 1, H, W)
        return from_model(denoiser.run_batch(samples), plan).astype(np.float64) / 255.0

    def nl_means(noisy: np.ndarray, sigma: float) -> np.ndarray:
        return denoise_nl_means(noisy, h=0.8 * sigma, sigma=sigma, patch_size=7, patch_distance=11,
                                fast_mode=True, channel_axis=-1)  # fmt: skip

    methods: dict[str, Method] = {
        "noisy input": lambda noisy, _s: noisy, "NL-means (scikit-image)": nl_means, "ours": ours,
    }  # fmt: skip
    rows = []
    for sigma_255 in sigmas_255:
        noisy_set = [
            noisy_8bit(
                rgb / np.float32(255.0), sigma_255 / 255.0, np.random.default_rng(NOISE_SEED + 100 + i)
            )
            for i, rgb in enumerate(cleans)
        ]  # (H, W, 3) each, the noise independent per channel
        rows += _measure(methods, cleans, noisy_set, sigma_255)[0]
    return rows


def run_photo_bench(
    onnx: str | Path,
    sigmas_255: Sequence[int] = SIGMAS_255,
    threads: int | None = None,
    photos: PhotoSet | None = None,
    with_bm3d: bool = True,
    with_colour: bool = True,
) -> dict[str, Any]:
    """Rows per sigma x method: mean PSNR/SSIM over the photographs (default: the validation set) and ms
    per megapixel. `with_bm3d=False` leaves BM3D out (seconds per photograph) with a note saying so;
    `with_colour` adds the colour table (`run_colour_rows`)."""
    photos = photos or bundled_photos("val")
    denoiser = Denoiser(onnx, provider="cpu", threads=threads or physical_cores())
    methods: dict[str, Method] = {
        "noisy input": lambda noisy, _s: noisy,
        "NL-means (scikit-image)": _nl_means,
        "ours (ONNX Runtime)": lambda noisy, _s: denoiser.denoise(noisy.astype(np.float32)),
    }
    folder = Path(onnx) if Path(onnx).is_dir() else Path(onnx).parent
    if "int8" in variants_present(folder):  # the export's int8 twin (ae_export.photo_variants)
        int8 = Denoiser(folder, provider="cpu", threads=threads or physical_cores(), variant="int8")
        int8.denoise(np.zeros((64, 64), dtype=np.float32))
        methods["ours int8 (ONNX Runtime)"] = lambda noisy, _s: int8.denoise(noisy.astype(np.float32))
    notes = []
    bm3d = _bm3d() if with_bm3d else None
    if not with_bm3d:
        notes.append("BM3D skipped in tiny mode (seconds per photograph)")
    elif bm3d is None:
        notes.append("BM3D skipped: the `bm3d` package is not installed (pip install bm3d)")
    else:
        methods["BM3D (bm3d package)"] = bm3d
    denoiser.denoise(np.zeros((64, 64), dtype=np.float32))  # warm-up outside the timed runs
    rows = []
    per_image: dict[str, dict[str, list[float]]] = {}
    for sigma_255 in sigmas_255:
        sigma = sigma_255 / 255.0
        noisy_set = [
            noisy_8bit(
                image.astype(np.float32)[None, None] / 255.0, sigma, np.random.default_rng(NOISE_SEED + i)
            )[0, 0]
            for i, image in enumerate(photos.images)
        ]
        sigma_rows, psnrs = _measure(methods, photos.images, noisy_set, sigma_255)
        rows += sigma_rows
        per_image[f"{sigma_255}"] = {name: [round(v, 3) for v in values] for name, values in psnrs.items()}
    colour_rows = run_colour_rows(denoiser, sigmas_255) if with_colour else []
    for table in (rows, colour_rows):
        for sigma_255 in sigmas_255:
            group = [r for r in table if r["sigma_255"] == sigma_255]
            base = next((r for r in group if r["method"].startswith("NL-means")), None)
            for row in group:
                row["speed_vs_nl_means"] = (
                    base["ms_per_mp"] / row["ms_per_mp"] if base is not None and row["ms_per_mp"] else None
                )
    return {
        "colour_photos": list(COLOUR_PHOTOS) if with_colour else [],
        "colour_rows": colour_rows,
        "photos": list(photos.names),
        "pixels": photos.pixels(),
        "noise": f"clip(x + sigma * N(0, 1), 0, 1) rounded to 8 bits, seed {NOISE_SEED} + image index",
        "onnx": str(denoiser.path),
        "threads": denoiser.model.threads,
        "cpu_flags": cpu_flags(),
        "rows": rows,
        "per_image_psnr": per_image,
        "notes": notes,
    }


def draw_picture(onnx: str | Path, path: str | Path, threads: int | None = None) -> None:
    """clean | noisy | NL-means | ours (| BM3D when installed) on a crop of `camera` at sigma 25/255."""
    photos = bundled_photos("val")
    image = photos.images[photos.names.index(PICTURE_PHOTO)]
    sigma = PICTURE_SIGMA_255 / 255.0
    clean = image.astype(np.float32) / 255.0
    noisy = noisy_8bit(clean[None, None], sigma, np.random.default_rng(NOISE_SEED))[0, 0]
    denoiser = Denoiser(onnx, provider="cpu", threads=threads or physical_cores())
    panels = [
        ("clean", clean),
        (f"noisy (sigma {PICTURE_SIGMA_255}/255)", noisy),
        ("NL-means", _nl_means(noisy, sigma)),
        ("ours", denoiser.denoise(noisy)),
    ]
    bm3d = _bm3d()
    if bm3d is not None:
        panels.append(("BM3D", bm3d(noisy, sigma)))
    top, left, bottom, right = PICTURE_BOX
    height, width = bottom - top, right - left
    gap, label_h = 6, 16
    canvas = Image.new("L", (len(panels) * (width + gap) + gap, height + label_h + 2 * gap), 255)
    draw = ImageDraw.Draw(canvas)
    for i, (label, values) in enumerate(panels):
        x = gap + i * (width + gap)
        crop = np.rint(np.clip(values[top:bottom, left:right], 0, 1) * 255).astype(np.uint8)
        psnr = "" if label == "clean" else f" {_scores(_to8(values.astype(np.float64)), clean)[0]:.2f} dB"
        draw.text((x, gap), label + psnr, fill=0)
        canvas.paste(Image.fromarray(crop), (x, gap + label_h))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_save(Path(path), lambda handle: canvas.save(handle, format="PNG"))


def run(ctx: BenchContext) -> Result:
    """The section: the photo model named by `ae-bench --photo-onnx`, or a status note when there is none."""
    folder = ctx.photo_onnx
    path = folder if folder is not None and folder.is_file() else (folder or Path()) / DENOISER_FILE
    if folder is None or not path.is_file():
        status = (
            f"no photo model at {folder}: run `make photo` first"
            if folder is not None
            else "no photo model given: pass `ae-bench --photo-onnx DIR`"
        )
        return {"threads": ctx.threads, "rows": [{"method": "-", "status": status}], "notes": [status]}
    if ctx.budget.mode == "tiny":
        return run_photo_bench(
            path, (TINY_SIGMA_255,), ctx.threads, tiny_photos(), with_bm3d=False, with_colour=False
        )
    return run_photo_bench(path, SIGMAS_255, ctx.threads)


def heading(result: Result) -> str:
    if "photos" not in result:
        return f"Photographs: the any-size denoiser vs NL-means and BM3D ({result['threads']} threads)"
    return (
        f"Photographs: the any-size denoiser vs NL-means and BM3D on {', '.join(result['photos'])} "
        f"({result['pixels'] / 1e6:.2f} MP), 8-bit clipped Gaussian noise; ONNX Runtime threads "
        f"{result['threads']}; CPU flags: {' '.join(result['cpu_flags']) or 'unknown'}"
    )


def _fixed(digits: int, suffix: str = "") -> Callable[[Any], str]:
    return lambda v: "-" if v is None else f"{v:.{digits}f}{suffix}"


COLUMNS = (
    Column("sigma", "sigma_255", lambda v: "-" if v is None else f"{v}/255"),
    Column("method", "method"),
    Column("PSNR dB", "psnr", _fixed(2)),
    Column("SSIM", "ssim", _fixed(3)),
    Column("ms / MP", "ms_per_mp", _fixed(0)),
    Column("speed vs NL-means", "speed_vs_nl_means", _fixed(2, "x")),
)
TABLES = (
    Table(columns=COLUMNS, notes=lambda r: list(r["notes"])),
    Table(
        title=lambda r: (
            f"Colour: {', '.join(r['colour_photos'])} in RGB, noise per channel; ours denoises each channel "
            "as a grayscale image (what `ae-denoise` does with a colour file)"
            if r.get("colour_rows")
            else "Colour photographs: not measured in this run (tiny mode, or no photo model)"
        ),
        columns=COLUMNS,
        rows=lambda r: list(r.get("colour_rows") or []),
    ),
)


def render_result(result: Result) -> str:
    """The standalone run's Markdown: the heading line, then the section's tables."""
    return "\n\n".join([heading(result), *(render_table(table, result) for table in TABLES)])


def _sigmas(text: str) -> list[int]:
    """--sigmas: one or more noise levels x255 in 1..255; anything else measures nothing or nonsense."""
    try:
        sigmas = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sigmas = []
    if not sigmas or not all(1 <= s <= 255 for s in sigmas):
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers in 1..255 like 15,25,50")
    return sigmas


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.photo",
        description="Photographs: the any-size denoiser vs NL-means and BM3D (PSNR/SSIM, ms per megapixel).",
    )
    p.add_argument(
        "--onnx", default="artifacts/photo/onnx", help="the exported denoiser or its export folder"
    )
    p.add_argument("--out", default="artifacts/bench/photo.json", help="JSON results")
    p.add_argument(
        "--sigmas",
        type=_sigmas,
        default=list(SIGMAS_255),
        help="comma-separated sigmas x255 (default 15,25,50)",
    )
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: cores)")
    p.add_argument("--picture", default=None, help="also draw clean/noisy/NL-means/ours to this PNG")
    p.add_argument("--picture-only", action="store_true", help="only draw the picture (needs --picture)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.picture_only and not args.picture:
        parser.error("--picture-only draws only the picture: give its path with --picture PNG")
    sigmas = args.sigmas
    try:
        if args.picture:
            draw_picture(args.onnx, args.picture, args.threads)
            print(f"wrote {args.picture}")
        if args.picture_only:
            return 0
        result = run_photo_bench(args.onnx, sigmas, args.threads)
    except (FileNotFoundError, ValueError) as err:
        print(f"bench.photo: error: {err}", file=sys.stderr)
        return 2
    print_and_write(render_result(result), result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
