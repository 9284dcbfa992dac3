"""`python -m train.demo score` on real ae-denoise outputs: folders of any image sizes, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio

from tests.helpers import run_cli


def _clean_folder(folder: Path, fmnist_test: np.ndarray, sizes: tuple[int, ...]) -> None:
    folder.mkdir(parents=True)
    camera = skdata.camera()  # (512, 512) uint8
    for i, side in enumerate(sizes):
        image = fmnist_test[i] if side == 28 else camera[: side * 4 : 4, : side * 4 : 4]
        Image.fromarray(np.ascontiguousarray(image)).save(folder / f"img_{i}.png")


def _gray(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


@pytest.mark.parametrize("sizes", [(28, 28, 28), (28, 64, 40)], ids=["all 28x28", "mixed sizes"])
def test_score_measures_each_image_at_its_own_size(onnx_dir, fmnist_test, tmp_path, sizes) -> None:
    """A clean folder of mixed sizes (ae-denoise keeps each file's size) once died in np.stack with
    'all input arrays must have the same shape'; each image is scored on its own."""
    clean, denoised = tmp_path / "clean", tmp_path / "denoised"
    _clean_folder(clean, fmnist_test, sizes)
    denoise = ("--add-noise", "0.3", "--seed", "0", "--size-mode", "resize")
    proc = run_cli(
        "runtimes.cli", "--onnx", str(onnx_dir / "denoiser.onnx"), str(clean), "-o", str(denoised), *denoise
    )
    assert proc.returncode == 0, proc.stderr
    sheet = tmp_path / "sheet.png"
    proc = run_cli(
        "train.demo", "score", "--clean", str(clean), "--denoised", str(denoised), "--sheet", str(sheet)
    )
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr  # 1: no PSNR gain
    scores = json.loads((denoised / "demo_scores.json").read_text())
    names = sorted(p.name for p in clean.glob("*.png"))
    expected = np.mean(
        [peak_signal_noise_ratio(_gray(clean / n), _gray(denoised / n), data_range=1.0) for n in names]
    )
    assert scores["images"] == len(sizes)
    assert scores["denoised_psnr"] == pytest.approx(expected, abs=1e-3)
    assert sheet.is_file()


def test_score_names_an_output_of_another_size(fmnist_test, tmp_path) -> None:
    clean, denoised = tmp_path / "clean", tmp_path / "denoised"
    _clean_folder(clean, fmnist_test, (28, 28))
    denoised.mkdir()
    for name in ("img_0", "img_1"):
        Image.fromarray(fmnist_test[0]).save(denoised / f"{name}.noisy.png")
        Image.fromarray(fmnist_test[0]).save(denoised / f"{name}.png")
    Image.fromarray(fmnist_test[1]).resize((30, 28)).save(denoised / "img_1.png")
    sheet = tmp_path / "sheet.png"
    proc = run_cli(
        "train.demo", "score", "--clean", str(clean), "--denoised", str(denoised), "--sheet", str(sheet)
    )
    assert proc.returncode == 2, proc.stderr
    assert f"demo: error: {denoised / 'img_1.png'}: 30x28, but its original" in proc.stderr
    assert "Traceback" not in proc.stderr and not (denoised / "demo_scores.json").exists()
    assert not sheet.exists()


@pytest.mark.parametrize("count", ["0", "-190", "ten"])
def test_prepare_refuses_a_count_that_is_not_positive(tmp_path, count) -> None:
    """--count -190 once wrote test[:-190] (all but the last 190 images: 9,810 files) and --count 0
    wrote none, both with exit 0; the count is a positive integer, checked by argparse (exit 2)."""
    out = tmp_path / "clean"
    proc = run_cli("train.demo", "prepare", "--out", str(out), "--count", count)
    assert proc.returncode == 2, proc.stderr
    assert "argument --count: expected a positive integer, got" in proc.stderr and count in proc.stderr
    assert not out.exists()
