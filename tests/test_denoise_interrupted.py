"""A killed `ae-denoise` run: outputs stay whole, and the next run removes the temporaries it left."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtimes.fileio import atomic_open, atomic_write_bytes, remove_stale_temps
from tests.helpers import exit_code_of_forked_child, run_cli, running_cli, stop_cli

CLI = "runtimes.cli"


def _images(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img_{i:05d}.png")


def _temps(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*.tmp"))


def test_rerun_removes_its_own_stale_temps_only(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path
) -> None:
    _images(tmp_path / "in", fmnist_test[:4])
    out = tmp_path / "out"
    out.mkdir()
    # What SIGKILL mid-write leaves: `.<output name>.<8 random chars>.tmp` beside the outputs ...
    stale = [out / ".img_00000.png.k3j_x9Qa.tmp", out / ".img_00003.png.00000000.tmp"]
    # ... and files that only look similar, which belong to someone else and must stay.
    foreign = [
        out / ".notes.txt.abcdefgh.tmp",  # not one of this run's outputs
        out / ".img_00001.png.short.tmp",  # not mkstemp's 8 characters
        out / "img_00002.png.abcdefgh.tmp",  # not hidden
        out / "keep.txt",
    ]
    for path in stale + foreign:
        path.write_bytes(b"partial")
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "-o", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "removed 2 temporary file(s) left by an interrupted run" in proc.stderr
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"partial" for p in foreign)
    assert sorted(p.name for p in out.glob("img_*.png")) == [f"img_{i:05d}.png" for i in range(4)]


def test_remove_stale_temps_ignores_missing_folders(tmp_path: Path) -> None:
    assert remove_stale_temps([tmp_path / "nowhere" / "a.png"]) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
@pytest.mark.parametrize("length", [200, 241, 242, 255])
def test_temporaries_of_long_names_fit_and_are_found_again(tmp_path: Path, length: int) -> None:
    """A destination name of up to 255 bytes (NAME_MAX) is written, and the temporary a writer killed
    mid-write leaves beside it is within NAME_MAX too and is recognised as that destination's. Before,
    names over 241 bytes failed with "File name too long" (the temporary adds 14)."""
    dest = tmp_path / ("y" * (length - 4) + ".png")
    atomic_write_bytes(dest, b"whole")
    assert dest.read_bytes() == b"whole"

    def die_mid_write() -> bool:
        with atomic_open(dest) as handle:
            handle.write(b"partial")
            handle.flush()
            os._exit(0)  # what SIGKILL does: no cleanup
        return False

    assert exit_code_of_forked_child(die_mid_write) == 0
    (temp,) = [p for p in tmp_path.iterdir() if p != dest]
    assert temp.name.startswith(".") and temp.name.endswith(".tmp") and len(os.fsencode(temp.name)) <= 255
    assert remove_stale_temps([tmp_path / "other.png"]) == 0  # another destination's: left alone
    assert remove_stale_temps([dest]) == 1 and sorted(tmp_path.iterdir()) == [dest]


def test_sigkill_then_rerun_leaves_no_temporaries(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path
) -> None:
    """The real thing: kill -9 while outputs are being written, rerun, check the tree."""
    images = fmnist_test[:1500]  # enough files for the run to be mid-way when killed
    _images(tmp_path / "in", images)
    out = tmp_path / "out"
    _stop_mid_run(onnx_dir, tmp_path / "in", out, signal.SIGKILL)
    written = sorted(out.glob("*.png"))
    assert 0 < len(written) < len(images), "the run was not killed mid-way; the test proves nothing"
    for path in written:  # atomic writes: every output that exists is a whole PNG
        with Image.open(path) as image:
            image.load()
    rerun = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "-o", str(out), "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    assert _temps(out) == []
    assert len(list(out.glob("*.png"))) == len(images)


def _stop_mid_run(onnx_dir: Path, folder: Path, out: Path, sig: int) -> subprocess.CompletedProcess:
    """Run ae-denoise on `folder` and send it `sig` once 100 outputs exist."""
    args = ["--onnx", str(onnx_dir), str(folder), "-o", str(out), "-q"]
    with running_cli(CLI, *args, stdout=subprocess.DEVNULL) as proc:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.is_dir() and sum(1 for _ in out.glob("*.png")) >= 100:
                break
            time.sleep(0.01)
        return stop_cli(proc, sig)


def test_ctrl_c_is_one_line_and_a_rerun_goes_on(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path
) -> None:
    """Ctrl-C mid-run: exit 130 with one line saying how far it got, no traceback, whole outputs only,
    and the same command run again finishes the rest. Before, a KeyboardInterrupt traceback; and the
    files whose writes the interruption let finish were left out of the count."""
    images = fmnist_test[:1500]
    _images(tmp_path / "in", images)
    out = tmp_path / "out"
    result = _stop_mid_run(onnx_dir, tmp_path / "in", out, signal.SIGINT)
    stderr = result.stderr
    written = sorted(out.glob("*.png"))
    assert 0 < len(written) < len(images), "the run was not interrupted mid-way; the test proves nothing"
    assert result.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"interrupted after {len(written)} of {len(images)} file(s)" in stderr  # each output counted
    assert _temps(out) == []
    rerun = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "-o", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(written)} skipped" in rerun.stderr
    assert len(list(out.glob("*.png"))) == len(images)


def test_output_folder_that_cannot_be_listed_fails_each_file_by_name(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path
) -> None:
    """An output folder that cannot be listed (here the default sibling `<input>_denoised` of a 250-byte
    folder name: past NAME_MAX) fails each file with the reason, exit 1. Before, the look for an earlier
    run's temporaries raised it: a traceback."""
    folder = tmp_path / ("d" * 250)
    _images(folder, fmnist_test[:2])
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(folder))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("img_00000.png", "img_00001.png"):
        assert f"{folder / name}: cannot create output folder" in proc.stderr
    assert proc.stderr.count("File name too long") == 2
    assert "0 done, 2 failed" in proc.stderr


def test_ctrl_c_while_a_large_tree_is_listed_is_one_line(onnx_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C before the first file is read (50,000 files take seconds to list and check): exit 130 with
    one line, nothing written. Before, a KeyboardInterrupt traceback from the planning, exit -2."""
    for d in range(100):  # empty files: listing them is the work; none is decoded
        (tmp_path / "in" / f"d{d:03d}").mkdir(parents=True)
        for i in range(500):
            (tmp_path / "in" / f"d{d:03d}" / f"f{i:03d}.png").touch()
    out = tmp_path / "out"
    with running_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "-o", str(out)) as proc:
        maps = Path(f"/proc/{proc.pid}/maps")
        deadline = time.monotonic() + 60  # past the imports: onnxruntime's library is loaded
        while time.monotonic() < deadline and "onnxruntime" not in maps.read_text(errors="replace"):
            time.sleep(0.01)
        time.sleep(1.0)  # the model opens in a fraction of this; the listing takes seconds more
        result = stop_cli(proc)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("interrupted") == 1
    if "before any file was written" in result.stderr:  # the case under test: stopped while listing
        assert not out.exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="file locks (flock) are POSIX-only")
@pytest.mark.parametrize("name", ["img.png", "y" * 251 + ".png"])  # the longest: a hashed temporary name
def test_a_second_run_leaves_a_live_writers_temporary_alone(
    onnx_dir: Path, fmnist_test: np.ndarray, tmp_path: Path, name: str
) -> None:
    """Another process mid-write in the output folder (a second run of the same command): its temporary
    is not taken for one a killed run left, and its write completes. Before, the second run deleted it,
    said it had removed a temporary 'left by an interrupted run', and the first run's write failed with
    'No such file or directory'."""
    (tmp_path / "in").mkdir()
    Image.fromarray(fmnist_test[0]).save(tmp_path / "in" / name)
    out = tmp_path / "out"
    out.mkdir()
    with atomic_open(out / name) as handle:  # a live writer of that output: its temporary, locked
        handle.write(b"whole")
        proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "-o", str(out))
        assert len(_temps(out)) == 1
    assert proc.returncode == 0, proc.stderr
    assert "removed" not in proc.stderr and "1 done" in proc.stderr
    assert _temps(out) == [] and (out / name).read_bytes() == b"whole"  # the last rename stands
