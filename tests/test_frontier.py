"""The frontier: `python -m bench.frontier_cli` measures trained presets, draws them and rewrites only the
README's frontier block; a stale export is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ae_export.export import export_all
from bench.frontier_cli import BEGIN, END, main
from tests.helpers import run_cli
from train.checkpoint import load_checkpoint
from train.loop import TrainConfig, train
from train.presets import preset_values

README = f"# project\n\nintro\n\n{BEGIN}\nold table\n{END}\n\nafter\n"


@pytest.fixture(scope="module")
def presets_dir(trained_checkpoint: Path, onnx_dir: Path, fmnist, tmp_path_factory) -> Path:
    """lecture: the session's trained model; balanced: a few real steps of the preset, exported."""
    root = tmp_path_factory.mktemp("presets")
    (root / "lecture").mkdir()
    shutil.copy(trained_checkpoint, root / "lecture" / "checkpoint.pt")
    shutil.copytree(onnx_dir, root / "lecture" / "onnx")
    values = {**preset_values("balanced"), "epochs": 1, "limit": 256, "batch_size": 64}
    out = root / "balanced"
    train(TrainConfig(out=str(out), device="cpu", **values), quiet=True, dataset=fmnist, log=lambda _: None)
    export_all(load_checkpoint(out / "checkpoint.pt"), out / "onnx", log=lambda _line: None)
    return root


@pytest.mark.slow
def test_frontier_table_picture_and_readme(presets_dir: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    picture = tmp_path / "docs" / "frontier.png"
    args = ["--presets-dir", str(presets_dir), "--presets", "lecture,balanced", "--tiny", "--threads", "1"]
    code = main([*args, "--out", str(tmp_path / "out"), "--picture", str(picture), "--readme", str(readme)])
    assert code == 0
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    rows = report["sections"]["frontier"]["rows"]
    assert [r["preset"] for r in rows] == ["lecture", "balanced"]
    lecture, balanced = rows
    assert lecture["params"] == 87_125 and lecture["flops_vs_baseline"] == 1.0
    assert balanced["arch"] == "spatial" and balanced["mflop"] > lecture["mflop"]
    for row in rows:
        assert 0 < row["psnr_db"] < 40 and row["images_per_s"]["1"] > 0 and row["denoiser_bytes"] > 0
    text = readme.read_text()
    assert text.startswith("# project\n\nintro\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert "old table" not in text and "| balanced |" in text and "](docs/frontier.png)" in text
    with Image.open(picture) as im:
        assert im.mode == "L" and im.height > 4 * 28 * 3  # clean, noisy and two presets


def test_stale_export_and_missing_markers_are_refused(presets_dir: Path, tmp_path: Path, capsys) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(presets_dir, mixed)
    shutil.rmtree(mixed / "lecture" / "onnx")
    shutil.copytree(presets_dir / "balanced" / "onnx", mixed / "lecture" / "onnx")
    assert main(["--presets-dir", str(mixed), "--presets", "lecture", "--out", str(tmp_path / "o")]) == 2
    assert "exported from another checkpoint" in capsys.readouterr().err
    readme = tmp_path / "README.md"
    readme.write_text("# no block\n")
    args = ["--presets-dir", str(presets_dir), "--presets", "lecture", "--tiny", "--threads", "1"]
    out = ["--out", str(tmp_path / "o2"), "--picture", str(tmp_path / "p.png"), "--readme", str(readme)]
    assert main([*args, *out]) == 2
    assert "no frontier block" in capsys.readouterr().err and readme.read_text() == "# no block\n"
    assert not (tmp_path / "p.png").exists()  # refused before measuring
    assert main(["--presets", "best", "--presets-dir", str(presets_dir)]) == 2
    assert "valid presets" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("picture", "link"),
    [("repo/docs/f.png", "docs/f.png"), ("pictures/f.png", "../pictures/f.png")],
    ids=["under the README's folder", "outside it"],
)
def test_picture_link_is_relative_to_the_readme_wherever_it_is(
    presets_dir: Path, tmp_path: Path, picture: str, link: str
) -> None:
    """A --picture outside the README's folder once failed after the whole measurement with pathlib's
    "is not in the subpath of", writing neither bench.json nor the README; the link is now relative."""
    readme = tmp_path / "repo" / "README.md"
    readme.parent.mkdir()
    readme.write_text(README)
    args = ["--presets-dir", str(presets_dir), "--presets", "lecture", "--tiny", "--threads", "1"]
    out = ["--out", str(tmp_path / "out"), "--picture", str(tmp_path / picture), "--readme", str(readme)]
    proc = run_cli("bench.frontier_cli", *args, *out)
    assert proc.returncode == 0, proc.stderr
    assert f"]({link})" in readme.read_text() and (tmp_path / picture).is_file()
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["sections"]["frontier"]["rows"]
