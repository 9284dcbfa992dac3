"""`make gpu-check` on a machine without a GPU: says so, writes a report that nothing ran, exits 0."""

from __future__ import annotations

import json
import shutil

import onnxruntime as ort
import pytest
import torch

from tests.helpers import run_cli


@pytest.mark.skipif(
    torch.cuda.is_available()
    or "CUDAExecutionProvider" in ort.get_available_providers()
    or bool(shutil.which("nvidia-smi")),
    reason="a GPU stack is present: `make gpu-check` itself runs every CUDA path there",
)
def test_without_a_gpu_it_says_so_and_runs_nothing(tmp_path) -> None:
    out = tmp_path / "report"
    result = _gpu_check_without_files(tmp_path, out)
    assert result.returncode == 0, result.stderr
    assert "NOT RUN: no GPU on this machine" in result.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["gpu"] == "none" and report["steps"] == []
    assert "CPUExecutionProvider" in report["probe"]
    assert (out / "gpu_check.txt").read_text().rstrip().endswith("no CUDA path was exercised.")


def test_placement_reads_where_each_node_ran(onnx_dir, portable_onnx_dir, tmp_path) -> None:
    """The placement step's profile reader, on the CPU: it finds the fast graph's Col2Im, finds none in the
    portable graph (torch's ConvTranspose), and leaves no profile file behind."""
    from ae_export.gpu_check import placement

    fast = placement(onnx_dir / "denoiser.onnx", "cpu", tmp_path)
    assert list(fast) == ["CPUExecutionProvider"]
    assert {"Col2Im", "Conv"} <= set(fast["CPUExecutionProvider"])
    portable = placement(portable_onnx_dir / "denoiser.onnx", "cpu", tmp_path)["CPUExecutionProvider"]
    assert "ConvTranspose" in portable and "Col2Im" not in portable
    assert not list(tmp_path.glob("placement*"))


def test_photo_comparison_allows_one_level_and_names_what_differs(tmp_path) -> None:
    """The photo step's judge, on real PNGs: CUDA output within one 8-bit level of the CPU's passes; two
    levels, a missing file or another size fails and names the file."""
    import numpy as np
    from PIL import Image

    from ae_export.gpu_check import photo_compare_step

    rng = np.random.default_rng(0)
    base = rng.integers(1, 254, size=(40, 30, 3), dtype=np.uint8)
    (tmp_path / "photos-cpu").mkdir()
    (tmp_path / "photos-cuda").mkdir()
    Image.fromarray(base).save(tmp_path / "photos-cpu" / "a.png")
    Image.fromarray(base).save(tmp_path / "photos-cpu" / "a.noisy.png")  # inputs are not compared
    Image.fromarray(base + 1).save(tmp_path / "photos-cuda" / "a.png")
    step = photo_compare_step(tmp_path)
    assert step.status == "passed" and "a.png RGB 40x30: max 1" in step.detail

    Image.fromarray(base + 2).save(tmp_path / "photos-cuda" / "a.png")
    Image.fromarray(base[:, :, 0]).save(tmp_path / "photos-cpu" / "b.png")
    Image.fromarray(base[:20, :, 0]).save(tmp_path / "photos-cuda" / "b.png")
    Image.fromarray(base).save(tmp_path / "photos-cpu" / "c.png")
    step = photo_compare_step(tmp_path)
    assert step.status == "failed" and step.returncode == 1
    assert "a.png: differs by 2 levels" in step.detail
    assert "b.png: L (30, 40) on cpu, L (30, 20) on cuda" in step.detail
    assert "c.png: no CUDA output" in step.detail


def test_photo_inputs_are_real_photographs_and_one_is_tiled(tmp_path) -> None:
    from PIL import Image

    from ae_export.gpu_check import LARGE_PHOTO, write_photos
    from runtimes.denoiser import DEFAULT_TILE_PIXELS

    names = write_photos(tmp_path)
    assert names == ["astronaut.png", "camera_12mp.png", "chelsea.png"]
    with Image.open(tmp_path / "astronaut.png") as im:
        assert im.mode == "RGB"
    with Image.open(tmp_path / "camera_12mp.png") as im:
        assert (im.height, im.width) == LARGE_PHOTO and im.height * im.width > DEFAULT_TILE_PIXELS


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA may start here: the bench runs"
)
def test_conv_search_bench_without_cuda_says_why(onnx_dir, tmp_path) -> None:
    result = run_cli("bench.cuda_conv_search", "--onnx-dir", str(onnx_dir), "--photo-onnx", str(onnx_dir))
    assert result.returncode == 2
    assert "this bench needs CUDA: CUDA execution provider not available" in result.stderr


@pytest.mark.parametrize("kind", ["file", "dangling link"])
def test_an_out_that_is_not_a_folder_is_refused_before_any_probe(tmp_path, kind) -> None:
    out = tmp_path / "report"
    if kind == "file":
        out.write_text("keep\n")
    else:
        out.symlink_to(tmp_path / "gone")
    result = _gpu_check_without_files(tmp_path, out)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"gpu-check: error: --out {out} must be a folder (an existing one or a new path): {out} is not one"
    )
    assert "probe" not in result.stdout and "Traceback" not in result.stderr
    if kind == "file":
        assert out.read_text() == "keep\n"
    else:
        assert out.is_symlink() and not out.exists()


def _gpu_check_without_files(tmp_path, out):
    """gpu-check with no checkpoint and no export: only a machine without a GPU, or --out, gets past them."""
    return run_cli(
        "ae_export.gpu_check",
        "--checkpoint",
        str(tmp_path / "none.pt"),
        "--onnx-dir",
        str(tmp_path),
        "--out",
        str(out),
    )
