"""The Makefile's checkpoint target, run with real make and real training (a short run in tmp_path).

Before: Ctrl-C during the training that `make demo` starts printed 'interrupted: artifacts/checkpoint.pt
holds epoch 2', and then make deleted that file (make removes an interrupted recipe's target unless it is
.PRECIOUS). Now the epochs are kept, and the next `make` resumes the run instead of exporting it half-trained.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, default_sigint
from train.checkpoint import load_checkpoint

STAMPS = sorted((REPO / ".venv").glob(".installed-*"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed"),
    pytest.mark.skipif(
        not STAMPS,
        reason="no environment installed by `make setup` in .venv (the Makefile runs its ae-train)",
    ),
]


def _make(art: Path, epochs: int) -> list[str]:
    """The checkpoint target alone; `-o` keeps make from reinstalling the environment the tests run in."""
    return _make_target(art, art / "checkpoint.pt", f"TRAIN_ARGS=--epochs {epochs} --limit 1000 --quiet")


def _make_target(art: Path, target: Path, flags: str) -> list[str]:
    return ["make", "--no-print-directory", "-o", str(STAMPS[0]), f"ART={art}", str(target), flags]


def test_ctrl_c_keeps_the_checkpoint_and_the_next_make_resumes_it(tmp_path: Path) -> None:
    art = tmp_path / "artifacts"
    ckpt = art / "checkpoint.pt"
    # Its own process group, so the SIGINT reaches make and ae-train together, as Ctrl-C does.
    proc = subprocess.Popen(
        _make(art, 200),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # --quiet still prints one line per epoch
            if line.startswith("EPOCH 2/"):
                os.killpg(proc.pid, signal.SIGINT)
                break
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert f"interrupted: {ckpt} holds epoch" in output
    assert "Deleting file" not in output and ckpt.exists(), output
    kept = load_checkpoint(ckpt).epoch
    assert kept >= 2
    assert (art / "checkpoint.pt.unfinished").exists()

    resumed = subprocess.run(_make(art, kept + 1), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "--resume" in resumed.stdout and f"resuming from {ckpt} after epoch {kept}" in resumed.stdout
    assert load_checkpoint(ckpt).epoch == kept + 1
    assert not (art / "checkpoint.pt.unfinished").exists()

    again = subprocess.run(_make(art, kept + 1), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "ae-train" not in again.stdout, again.stdout


def test_a_run_interrupted_before_its_first_epoch_trains_afresh(tmp_path: Path) -> None:
    """No checkpoint to resume: the next make trains from the start (no --resume, which would refuse)."""
    art = tmp_path / "artifacts"
    art.mkdir()
    (art / "checkpoint.pt.unfinished").touch()  # what a Ctrl-C before epoch 1's checkpoint leaves
    done = subprocess.run(_make(art, 1), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "--resume" not in done.stdout and load_checkpoint(art / "checkpoint.pt").epoch == 1
    assert not (art / "checkpoint.pt.unfinished").exists()


def test_an_unfinished_photo_run_trains_afresh_as_photo_runs_cannot_resume(tmp_path: Path) -> None:
    """Photo runs are step budgets (`--resume` is refused for them): an interrupted one is retrained, not
    resumed, and not exported as it stands."""
    art = tmp_path / "artifacts"
    ckpt = art / "photo" / "checkpoint.pt"
    photo = _make_target(art, ckpt, "PHOTO_TRAIN_ARGS=--steps 3 --quiet")
    assert subprocess.run(photo, cwd=REPO, capture_output=True, text=True, timeout=300).returncode == 0
    (art / "photo" / "checkpoint.pt.unfinished").touch()  # what a Ctrl-C after a saved step leaves
    done = subprocess.run(photo, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ae-train --preset photo" in done.stdout and "--resume" not in done.stdout
    assert not (art / "photo" / "checkpoint.pt.unfinished").exists() and ckpt.exists()


def test_a_failed_export_is_run_again_not_taken_as_done(tmp_path: Path) -> None:
    """ae-export exits 1 when a variant misses its quality budget but keeps denoiser.onnx (the fp32 files
    are good). Make then took the target as built: the next `make demo` skipped the export and exited 0.
    The export is marked unfinished until it exits 0, so the next make exports again."""
    art = tmp_path / "artifacts"
    train = "TRAIN_ARGS=--epochs 1 --limit 1000 --quiet"
    denoiser = art / "onnx" / "denoiser.onnx"
    mark = art / "onnx" / "denoiser.onnx.unfinished"

    def make(export_args: str) -> subprocess.CompletedProcess:
        command = [*_make_target(art, denoiser, train), f"EXPORT_ARGS={export_args}"]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)

    # A negative budget no variant can meet: fp16 is not written, exit 1, denoiser.onnx is.
    failed = make("--variants fp16 --psnr-budget fp16=-1 --batch-sizes 1")
    assert failed.returncode != 0 and "variant fp16 not written" in failed.stdout + failed.stderr
    assert denoiser.exists() and mark.exists()
    fixed = make("--variants none --batch-sizes 1")
    assert fixed.returncode == 0, fixed.stderr
    assert "ae-export" in fixed.stdout and "ae-train" not in fixed.stdout and not mark.exists()
    again = make("--variants none --batch-sizes 1")
    assert again.returncode == 0 and "ae-export" not in again.stdout, again.stdout
