"""The demo's two ends around `ae-denoise`: real sample images in, quality measured out.

    python -m train.demo prepare --out artifacts/demo/clean --count 100
    ae-denoise --onnx artifacts/onnx/denoiser.onnx artifacts/demo/clean -o artifacts/demo/denoised \
        --add-noise 0.3 --seed 0
    python -m train.demo score --clean artifacts/demo/clean --denoised artifacts/demo/denoised

`prepare` writes clean Fashion-MNIST test images as PNGs (the user's "images/" folder); ae-denoise adds the
lecture's noise (saving `<name>.noisy.png`) and writes `<name>.png`; `score` compares both with the clean
originals (PSNR, SSIM, as scikit-image defines them) and draws a contact sheet for a person to look at.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from runtimes.cli import positive_int
from runtimes.fileio import atomic_save, atomic_write_json
from train.data import DATASETS, DataError, load_dataset
from train.metrics import SSIM_WIN, psnr_per_image, ssim_per_image


def prepare(out: Path, count: int, dataset: str, data_dir: str | None) -> int:
    data = load_dataset(dataset, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = data.val.images[:count].numpy()  # (N, 28, 28) uint8, the held-out split
    for i, image in enumerate(images):
        target = out / f"test_{i:05d}.png"
        atomic_save(
            target, lambda handle, im=image: Image.fromarray(im).save(handle, format="PNG"), fsync=False
        )
    print(f"wrote {len(images)} clean test images to {out}")
    return 0


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def _image_scores(clean: np.ndarray, noisy: np.ndarray, denoised: np.ndarray) -> list[float]:
    """[noisy PSNR, denoised PSNR, noisy SSIM, denoised SSIM] of one (H, W) image against its original."""
    c, n, d = (torch.from_numpy(a)[None, None] for a in (clean, noisy, denoised))  # (1, 1, H, W)
    return [float(f(x, c)[0]) for f in (psnr_per_image, ssim_per_image) for x in (n, d)]


def score(clean_dir: Path, denoised_dir: Path, sheet: Path | None) -> int:
    """Mean per-image PSNR/SSIM of each clean PNG's noisy and denoised versions; images of any size.

    Each image is scored on its own, so a folder of mixed sizes (ae-denoise keeps each file's size) works;
    a denoised or noisy file of another size than its original, or one under SSIM's 7x7 window, is a
    DataError naming it.
    """
    rows = []
    for clean_path in sorted(clean_dir.glob("*.png")):
        out = denoised_dir / clean_path.name
        noisy = denoised_dir / f"{clean_path.stem}.noisy.png"
        if out.is_file() and noisy.is_file():
            row = (_load(clean_path), _load(noisy), _load(out))
            for path, image in zip((noisy, out), row[1:], strict=True):
                if image.shape != row[0].shape:
                    raise DataError(
                        f"{path}: {image.shape[1]}x{image.shape[0]}, but its original {clean_path} is "
                        f"{row[0].shape[1]}x{row[0].shape[0]}"
                    )
            if min(row[0].shape) < SSIM_WIN:
                raise DataError(f"{clean_path}: under {SSIM_WIN}x{SSIM_WIN} pixels, SSIM's window")
            rows.append(row)
    if not rows:
        print(f"score: no denoised images in {denoised_dir} match {clean_dir}", file=sys.stderr)
        return 1
    per_image = np.array([_image_scores(*row) for row in rows])  # (N, 4)
    noisy_psnr, denoised_psnr, noisy_ssim, denoised_ssim = per_image.mean(axis=0).tolist()
    result = {
        "images": len(rows),
        "noisy_psnr": noisy_psnr,
        "denoised_psnr": denoised_psnr,
        "noisy_ssim": noisy_ssim,
        "denoised_ssim": denoised_ssim,
    }
    print(
        f"demo: {result['images']} images | noisy input PSNR {result['noisy_psnr']:.2f} dB, "
        f"SSIM {result['noisy_ssim']:.3f} -> denoised PSNR {result['denoised_psnr']:.2f} dB, "
        f"SSIM {result['denoised_ssim']:.3f} (gain {result['denoised_psnr'] - result['noisy_psnr']:+.2f} dB)"
    )
    atomic_write_json(denoised_dir / "demo_scores.json", result)
    if sheet is not None:
        cols = min(16, len(rows))
        canvas = Image.new("L", (cols * 58 + 2, 3 * 58 + 2), 255)
        for c in range(cols):
            for r, image in enumerate(rows[c]):
                tile = Image.fromarray((image * 255).round().astype(np.uint8)).resize((56, 56), Image.NEAREST)
                canvas.paste(tile, (2 + c * 58, 2 + r * 58))
        atomic_save(sheet, lambda handle: canvas.save(handle, format="PNG"))
        print(f"wrote {sheet} (rows: clean, noisy, denoised)")
    return 0 if result["denoised_psnr"] > result["noisy_psnr"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write clean test images as PNGs")
    prep.add_argument("--out", type=Path, default=Path("artifacts/demo/clean"))
    prep.add_argument("--count", type=positive_int, default=100, help="test images to write (default 100)")
    prep.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    prep.add_argument("--data-dir", default=None)
    sc = sub.add_parser("score", help="PSNR/SSIM of ae-denoise's outputs against the clean originals")
    sc.add_argument("--clean", type=Path, default=Path("artifacts/demo/clean"))
    sc.add_argument("--denoised", type=Path, default=Path("artifacts/demo/denoised"))
    sc.add_argument("--sheet", type=Path, default=Path("artifacts/demo/demo.png"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prepare":
            return prepare(args.out, args.count, args.dataset, args.data_dir)
        return score(args.clean, args.denoised, args.sheet)
    except (DataError, OSError) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
