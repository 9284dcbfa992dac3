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
    result = run_cli(
        "ae_export.gpu_check",
        "--checkpoint",
        str(tmp_path / "none.pt"),
        "--onnx-dir",
        str(tmp_path),
        "--out",
        str(out),
    )
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
