"""Ctrl-C in `ae-export`: exit 130 with one line naming what the run wrote, no traceback, whole files."""

from __future__ import annotations

import time
from pathlib import Path

import onnx

from tests.helpers import running_cli, stop_cli


def test_ctrl_c_names_the_files_written_so_far(trained_checkpoint: Path, tmp_path: Path) -> None:
    """Interrupted after the fp32 files went in, during the variants: a KeyboardInterrupt traceback
    said nothing of which files were new and whether the export was whole."""
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "notes.txt").write_text("keep\n")
    args = ["--checkpoint", str(trained_checkpoint), "--out", str(out), "--variants", "fp16,int8"]
    with running_cli("ae_export.cli", *args, "--batch-sizes", "7", "--providers", "cpu") as proc:
        deadline = time.monotonic() + 300
        for line in proc.stdout:  # the fp32 files are in place once it says so
            if line.startswith("wrote ") or time.monotonic() > deadline:
                break
        stderr = stop_cli(proc, timeout=120).stderr
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip() == (
        f"ae-export: interrupted: in {out} it wrote decoder.onnx, denoiser.onnx, encoder.onnx, parity.json "
        "(each whole); every other file is as it was; the export did not finish: run the same command again"
    )
    assert not (out / "manifest.json").exists(), (
        "the run was not interrupted mid-way; the test proves nothing"
    )
    for name in ("encoder.onnx", "decoder.onnx", "denoiser.onnx"):
        onnx.checker.check_model(onnx.load(out / name))
    assert (out / "notes.txt").read_text() == "keep\n"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
