"""`ae-bench`: the FLOP count against a hand calculation and torch's counter, the CLI's option errors, and a
smoke run of every section at tiny sizes on a real trained checkpoint. No timing asserts: benchmarks are
not tests; only that each number exists and is finite."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import photo
from bench.cli import main
from bench.concurrency import bench_microbatcher
from bench.flops import count_flops
from bench.report import SECTIONS, render, resolve_models
from bench.section import BenchContext
from bench.tables import Column, Table, markdown_table, render_table
from bench.timing import BUDGETS, latency_stats, time_calls
from bench.training import torchvision_root
from runtimes.denoiser import Denoiser
from runtimes.fileio import json_ready
from tests.helpers import conv_model, run_cli, run_script, train_tiny_photo_model
from train.checkpoint import load_checkpoint
from train.model import DenoisingAutoencoder, ModelConfig

# Fields that may legitimately be null: no seed reference for an unusual latent size.
NULLABLE = {"reference_psnr_db"}


def _conv(cin: int, cout: int, out_hw: int) -> int:
    return 2 * cin * 3 * 3 * cout * out_hw * out_hw


def _deconv(cin: int, cout: int, in_hw: int) -> int:
    return 2 * cin * 3 * 3 * cout * in_hw * in_hw


def test_count_flops_matches_hand_calculation() -> None:
    model = DenoisingAutoencoder(ModelConfig(latent_dim=4, hidden_dim=128))
    expected = {
        "encoder.cnn.0": _conv(1, 8, 14),  # 28 -> 14
        "encoder.cnn.2": _conv(8, 16, 7),  # 14 -> 7
        "encoder.cnn.5": _conv(16, 32, 3),  # 7 -> 3
        "encoder.lin.0": 2 * 288 * 128,
        "encoder.lin.2": 2 * 128 * 4,
        "decoder.lin.0": 2 * 4 * 128,
        "decoder.lin.2": 2 * 128 * 288,
        "decoder.cnn.0": _deconv(32, 16, 3),  # 3 -> 7
        "decoder.cnn.3": _deconv(16, 8, 7),  # 7 -> 14
        "decoder.cnn.6": _deconv(8, 1, 14),  # 14 -> 28
    }
    flops = count_flops(model)
    assert flops["layers"] == expected
    assert flops["total"] == sum(expected.values()) == 597_632
    assert flops["conv"] + flops["linear"] == flops["total"]
    assert model.training  # the count leaves the module's mode as it was


@pytest.mark.parametrize("latent,hidden", [(4, 128), (16, 64), (64, 256)])
def test_count_flops_matches_torch_flop_counter(latent: int, hidden: int) -> None:
    model = DenoisingAutoencoder(ModelConfig(latent_dim=latent, hidden_dim=hidden)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    assert count_flops(model)["total"] == counter.get_total_flops()


def test_time_calls_meets_minimum_count_and_stats_are_consistent() -> None:
    calls = []
    times = time_calls(lambda: calls.append(1), BUDGETS["tiny"])
    budget = BUDGETS["tiny"]
    assert len(times) >= budget.min_calls and len(calls) == len(times) + budget.warmup_calls
    stats = latency_stats(np.array([1_000_000, 2_000_000, 3_000_000]), batch=10)  # 1, 2, 3 ms
    assert stats["p50_ms"] == 2.0 and stats["mean_ms"] == 2.0 and stats["images_per_s"] == 5000.0


def test_latency_stats_with_wall_time_gives_the_callers_throughput() -> None:
    stats = latency_stats(np.array([2_000_000] * 4), batch=1, wall_s=0.004)  # 4 overlapping 2 ms calls
    assert stats["calls"] == 4 and stats["images_per_s"] == 500.0 and stats["throughput_per_s"] == 1000.0


def test_table_declaration_renders_keys_derived_values_and_missing_cells() -> None:
    table = Table(
        title=lambda result: f"{result['threads']} threads",
        columns=(Column("name", "name"), Column("share %", lambda r: 100 * r["share"]), Column("n", "n")),
        notes=lambda result: ["a note"],
    )
    text = render_table(
        table, {"threads": 2, "rows": [{"name": "a", "share": 0.5, "n": 3}, {"name": "b", "share": 1.0}]}
    )
    assert text.split("\n\n") == [
        "2 threads",
        "| name | share % | n |\n|---|---:|---:|\n| a | 50.00 | 3 |\n| b | 100.00 | - |",
        "- a note",
    ]


def test_every_section_provides_the_interface() -> None:
    for name, section in SECTIONS.items():
        assert isinstance(section.NEEDS_DATA, bool), name
        assert callable(section.run) and callable(section.heading), name
        assert section.TABLES and all(isinstance(t, Table) for t in section.TABLES), name


def test_bench_draws_noise_and_opens_sessions_only_through_the_shared_code() -> None:
    import re

    package = Path(__file__).resolve().parent.parent / "bench"
    for path in package.glob("*.py"):
        text = path.read_text()
        noise = re.search(r"\*\s*[\w.]*(randn|standard_normal)", text)  # std * N(0, 1) written by hand
        assert noise is None, f"{path.name}: hand-written noise ({noise and noise.group(0)})"
        assert "InferenceSession(" not in text, f"{path.name}: opens a session itself (use open_session)"
        assert "denoiser.onnx" not in text and not re.search(r"\b28\b", text), f"{path.name}: literal"


def test_markdown_table() -> None:
    table = markdown_table(["name", "value"], [["a", 1234.5], ["b", 0.01234]])
    assert table.splitlines() == ["| name | value |", "|---|---:|", "| a | 1,234 |", "| b | 0.0123 |"]


def test_json_ready_gives_what_strict_json_holds() -> None:
    """The one JSON writer's conversion (runtimes.fileio): numpy scalars, NaN/Inf, paths, tuples."""
    value = {"x": np.float32(1.5), "y": float("nan"), "z": (Path("p"), -math.inf), 3: np.int64(7)}
    assert json_ready(value) == {"x": 1.5, "y": None, "z": ["p", None], "3": 7}
    assert json.dumps(json_ready(value), allow_nan=False)


def test_bad_sections_name_the_valid_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--sections", "inference,bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "bogus" in err and ", ".join(SECTIONS) in err


def test_missing_checkpoint_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--tiny", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "b.json")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_torchvision_root_is_what_torchvision_loads(fmnist, tmp_path: Path) -> None:
    from torchvision.datasets import FashionMNIST

    root = torchvision_root(Path(fmnist.source), tmp_path)
    dataset = FashionMNIST(str(root), train=True, download=False)
    assert len(dataset) == len(fmnist.train)
    assert torch.equal(dataset.data[:5], fmnist.train.images[:5])


@pytest.mark.slow
def test_resolve_models_uses_the_matching_export(
    trained_checkpoint: Path, onnx_dir: Path, tmp_path: Path
) -> None:
    checkpoint = load_checkpoint(trained_checkpoint)
    lines: list[str] = []
    (model,) = resolve_models([checkpoint], onnx_dir, tmp_path, log=lines.append)
    assert model.onnx_dir == onnx_dir and model.note == "" and lines == []  # not exported again


def test_microbatcher_benchmark_returns_numbers(onnx_dir: Path) -> None:
    result = bench_microbatcher(
        Denoiser(onnx_dir, provider="cpu"), concurrency=4, requests=200, max_batch_size=16
    )
    for key in ("direct", "batched"):
        stats = result[key]
        assert isinstance(stats, dict) and stats["calls"] == 200
        assert stats["throughput_per_s"] > 0 and stats["p99_ms"] >= stats["p50_ms"] > 0
    assert result["rounds"] == 4  # 50 requests per mode and round, pooled into the 200 above


def _assert_finite(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if item is None and key in NULLABLE:
                continue
            _assert_finite(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _assert_finite(item, f"{where}[{i}]")
    else:
        assert value is not None, f"{where} is null (a non-finite number?)"
        if isinstance(value, float):
            assert math.isfinite(value), f"{where} = {value}"


BLOCK_COMPAT = """
import sys
sys.modules["openvino"] = None  # the `compat` extra is not installed: importing it raises ImportError
sys.modules["cv2"] = None
from bench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sections_run_without_the_compat_extra_and_consumers_names_it(
    trained_checkpoint: Path, onnx_dir: Path, tmp_path: Path
) -> None:
    """OpenVINO/OpenCV are imported by the consumers section alone (a GPU box may lack them)."""
    common = ["--tiny", "--checkpoint", str(trained_checkpoint), "--onnx-dir", str(onnx_dir)]
    proc = run_script(BLOCK_COMPAT, *common, "--sections", "consumers", "--out", str(tmp_path / "c.json"))
    assert proc.returncode == 2 and not (tmp_path / "c.json").exists()
    assert "section consumers needs the `compat` extra" in proc.stderr, proc.stderr
    assert "pip install 'ae-export[compat]'" in proc.stderr
    proc = run_script(BLOCK_COMPAT, *common, "--sections", "inference", "--out", str(tmp_path / "i.json"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "i.json").read_text())["sections"]["inference"]["rows"]


@pytest.mark.slow
def test_ae_bench_tiny_smoke(trained_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run_cli(
        "bench.cli",
        "--tiny",
        "--checkpoint",
        str(trained_checkpoint),
        "--onnx-dir",
        str(tmp_path / "no-export-here"),  # so the run exports the checkpoint itself
        "--out",
        str(out),
        "--threads",
        "2",
        cwd=tmp_path,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["mode"] == "tiny" and report["machine"]["threads"] == 2
    assert report["machine"]["cpu"] and report["machine"]["torch"] and report["machine"]["onnxruntime"]
    assert list(report["sections"]) == list(SECTIONS)
    assert "exporting" in result.stderr and report["models"][0]["note"].startswith("exported for this run")
    for name, section in report["sections"].items():
        assert section["rows"], f"{name}: no rows"
        for row in section["rows"]:
            if row.get("status", "").startswith("not installed"):
                continue  # BM3D is optional
            _assert_finite(row, name)
    inference = report["sections"]["inference"]
    assert inference["flops_per_image"]["total"] == 597_632
    assert {r["batch"] for r in inference["rows"]} == {1, 8, 64, 256, 1024}
    assert {r["runtime"] for r in inference["rows"]} >= {
        "pytorch eager",
        "onnxruntime (spin off)",
        "onnxruntime (spin on)",
    }
    _assert_finite(inference["peak"], "peak")
    _assert_finite(inference["ort_variants"], "ort_variants")
    _assert_finite(inference["ort_profile"], "ort_profile")
    assert {r["kind"] for r in inference["ort_profile"]["rows"]} >= {"conv", "conv_transpose", "linear"}
    assert [r["callers"] for r in report["sections"]["concurrency"]["rows"]] == [1, 8, 32]
    assert report["sections"]["cli"]["rows"][0]["failed"] == 0
    assert report["sections"]["photo"]["notes"][0].startswith("no photo model at artifacts/photo/onnx")
    methods = " ".join(r["method"] for r in report["sections"]["quality"]["rows"])
    for method in ("noisy", "Gaussian", "median", "total variation", "non-local means", "BM3D", "ours"):
        assert method in methods
    consumers = report["sections"]["consumers"]
    names = {r["consumer"] for r in consumers["rows"]}
    assert {"onnxruntime", "openvino (f32 hint)"} <= names and {r["batch"] for r in consumers["rows"]} == {
        1,
        256,
    }
    assert "opencv dnn" in names or any("opencv dnn cannot load" in n for n in consumers["notes"])
    for number in range(1, 6):
        assert f"### {number}. " in result.stdout
    assert result.stdout.count("|---") >= 6  # one table per section, two in inference
    assert f"wrote {out}" in result.stdout


def _photo_context(photo_onnx: Path) -> BenchContext:
    """What the photo section reads: the budget, threads and the photo folder (it uses no lecture model)."""
    return BenchContext(BUDGETS["tiny"], 1, (), None, (1, 1, 1), photo_onnx=photo_onnx)


def test_photo_section_without_a_model_returns_a_status_note(tmp_path: Path) -> None:
    result = photo.run(_photo_context(tmp_path))  # a real, empty folder
    status = f"no photo model at {tmp_path}: run `make photo` first"
    assert result["rows"] == [{"method": "-", "status": status}] and result["notes"] == [status]
    markdown = render("photo", result)
    assert markdown.startswith(f"### {list(SECTIONS).index('photo') + 1}. Photographs") and status in markdown


@pytest.fixture(scope="module")
def tiny_photo_onnx(tmp_path_factory) -> Path:
    """A tiny fcn model trained 3 steps and exported; its folder."""
    from ae_export.export import export_all

    out = tmp_path_factory.mktemp("photo")
    export_all(load_checkpoint(train_tiny_photo_model(out)), out / "onnx", log=lambda _line: None)
    return out / "onnx"


@pytest.mark.slow
def test_photo_section_tiny_measures_the_real_model_against_nl_means(tiny_photo_onnx: Path) -> None:
    result = json_ready(photo.run(_photo_context(tiny_photo_onnx)))
    assert len(result["photos"]) == 1 and "crop" in result["photos"][0]
    assert [(r["sigma_255"], r["method"]) for r in result["rows"]] == [
        (25, "noisy input"),
        (25, "NL-means (scikit-image)"),
        (25, "ours (ONNX Runtime)"),
    ]
    assert result["notes"] == ["BM3D skipped in tiny mode (seconds per photograph)"]
    for row in result["rows"]:
        assert 0 < row["psnr"] < 100 and 0 < row["ssim"] <= 1, row
        if row["method"] != "noisy input":
            assert row["ms_per_mp"] > 0 and row["speed_vs_nl_means"] > 0, row
    markdown = render("photo", result)
    assert "| 25/255 | ours (ONNX Runtime) |" in markdown and "BM3D skipped" in markdown


@pytest.mark.slow
def test_photo_colour_rows_run_the_ae_denoise_path(tiny_photo_onnx: Path) -> None:
    from runtimes import Denoiser

    rows = photo.run_colour_rows(Denoiser(tiny_photo_onnx, provider="cpu"), (25,))
    assert [r["method"] for r in rows] == ["noisy input", "NL-means (scikit-image)", "ours"]
    for row in rows:
        assert 0 < row["psnr"] < 100 and 0 < row["ssim"] <= 1, row
    result = {"colour_photos": list(photo.COLOUR_PHOTOS), "colour_rows": rows}
    title = photo.TABLES[1].title
    assert title is not None and title(result).startswith("Colour: astronaut, chelsea in RGB")


@pytest.mark.slow
def test_photo_section_adds_the_int8_twin_where_the_export_has_one(
    tiny_photo_onnx: Path, tmp_path: Path
) -> None:
    import shutil

    from ae_export.photo_variants import export_photo_int8

    folder = tmp_path / "onnx"
    shutil.copytree(tiny_photo_onnx, folder)
    checkpoint = load_checkpoint(tiny_photo_onnx.parent / "checkpoint.pt")
    assert export_photo_int8(checkpoint, folder, budget_db=100.0, log=lambda _line: None).rejected is None
    result = json_ready(photo.run(_photo_context(folder)))
    methods = [r["method"] for r in result["rows"]]
    assert methods[-2:] == ["ours (ONNX Runtime)", "ours int8 (ONNX Runtime)"]
    int8_row = result["rows"][-1]
    assert 0 < int8_row["psnr"] < 100 and int8_row["ms_per_mp"] > 0


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_unwritable_out_is_refused_before_the_run(
    trained_checkpoint: Path, onnx_dir: Path, tmp_path: Path, where: str
) -> None:
    """--out naming a folder (or a path under a file) once ran every section and then lost the report to
    an IsADirectoryError / FileExistsError traceback; it is one line, exit 2, before anything is measured."""
    (tmp_path / "reports").mkdir()
    (tmp_path / "notes.txt").write_text("kept")
    out = tmp_path / "reports" if where == "a folder" else tmp_path / "notes.txt" / "bench.json"
    proc = run_cli(
        "bench.cli", "--tiny", "--sections", "concurrency", "--threads", "1", "--checkpoint",
        str(trained_checkpoint), "--onnx-dir", str(onnx_dir), "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"ae-bench: error: --out {out}: " in proc.stderr and "Traceback" not in proc.stderr
    assert "Concurrency" not in proc.stdout  # refused before the first section ran
    assert (tmp_path / "notes.txt").read_text() == "kept" and list((tmp_path / "reports").iterdir()) == []


def test_every_budget_can_run_on_fashion_mnist(fmnist) -> None:
    """Full mode's 235 training steps are one epoch of 60,000 images (the last batch 96), but the training
    section asked for 235 x 256 = 60,160 images, so `ae-bench --full` stopped there on Fashion-MNIST."""
    from bench.report import check_data

    for budget in BUDGETS.values():
        check_data(list(SECTIONS), budget, fmnist)


@pytest.mark.parametrize(
    "section,train_n,test_n,labels,message",
    [
        ("quality", 600, 100, True, "quality benchmark needs 2012 test images; the dataset has 100"),
        (
            "training",
            256,
            100,
            True,
            "training benchmark needs 257 training images for 2 batches of 256; the dataset has 256",
        ),
        ("training", 600, 100, False, "no train-labels-idx1-ubyte[.gz] for the lecture-style torchvision"),
    ],
)
def test_data_a_section_cannot_use_is_refused_before_the_first_section_runs(
    trained_checkpoint: Path,
    onnx_dir: Path,
    fmnist,
    tmp_path: Path,
    section,
    train_n,
    test_n,
    labels,
    message,
) -> None:
    """Too few images, or idx files missing, once stopped the run only when that section came, after the
    earlier sections had measured for minutes (and nothing was written); it is one line, exit 2, first."""
    from train.data import write_idx

    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", train_n), ("t10k", test_n)):
        source = fmnist.train if split == "train" else fmnist.val
        write_idx(data / f"{split}-images-idx3-ubyte", source.images[:n].numpy())
        if labels:
            write_idx(data / f"{split}-labels-idx1-ubyte", np.zeros(n, np.uint8))
    proc = run_cli(
        "bench.cli", "--tiny", "--sections", f"inference,{section}", "--threads", "1", "--checkpoint",
        str(trained_checkpoint), "--onnx-dir", str(onnx_dir), "--data-dir", str(data),
        "--out", str(tmp_path / "bench.json"), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "Inference" not in proc.stdout and not (tmp_path / "bench.json").exists()


@pytest.mark.parametrize("fault", ["not onnx", "no ae-export metadata"])
def test_unreadable_denoiser_in_onnx_dir_is_a_usage_error(
    trained_checkpoint: Path, tmp_path: Path, fault: str
) -> None:
    """A denoiser.onnx in --onnx-dir that ONNX Runtime cannot load, or that no ae-export wrote, was an
    InvalidModelError traceback; it is one line naming the file, exit 2."""
    folder = tmp_path / "onnx"
    folder.mkdir()
    path = folder / "denoiser.onnx"
    if fault == "not onnx":
        path.write_bytes(b"not a protobuf")
    else:
        relu = conv_model([onnx.helper.make_node("Relu", ["x"], ["y"])], ["n", 1, 28, 28], {})
        onnx.save(relu, path)
    proc = run_cli(
        "bench.cli", "--tiny", "--sections", "concurrency", "--threads", "1", "--checkpoint",
        str(trained_checkpoint), "--onnx-dir", str(folder), "--out", str(tmp_path / "b.json"), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"ae-bench: error: {path}: " in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b.json").exists()


@pytest.fixture(scope="module")
def tiny_photo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_photo_model(tmp_path_factory.mktemp("photo-ckpt"))


@pytest.mark.parametrize("section", ["concurrency", "cli"])
def test_photo_checkpoint_is_refused_naming_the_photo_section(
    tiny_photo_checkpoint: Path, tmp_path: Path, section: str
) -> None:
    """--checkpoint artifacts/photo/checkpoint.pt was measured as if it were a 28x28 model: the concurrency
    section died ('cannot unpack non-iterable NoneType'), the cli section reported its Fashion-MNIST rate
    under the models of bench.json. It is one line pointing at the photo section, exit 2."""
    proc = run_cli(
        "bench.cli", "--tiny", "--sections", section, "--threads", "1", "--checkpoint",
        str(tiny_photo_checkpoint), "--onnx-dir", str(tmp_path / "none"), "--out", str(tmp_path / "b.json"),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"ae-bench: error: {tiny_photo_checkpoint}: the photo model (arch fcn)" in proc.stderr
    assert "--photo-onnx" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sigmas", ","], "argument --sigmas: ',': expected integers in 1..255"),
        (["--sigmas", "0"], "argument --sigmas: '0': expected integers in 1..255"),
        (["--sigmas", "25,300"], "argument --sigmas: '25,300': expected integers in 1..255"),
        (["--picture-only"], "--picture-only draws only the picture: give its path with --picture"),
    ],
    ids=["no sigma", "sigma 0", "sigma over 255", "picture-only without picture"],
)
def test_photo_bench_refuses_options_that_measure_nothing(
    tiny_photo_onnx: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    """--sigmas ',' measured no sigma and replaced photo.json with empty tables (exit 0); --picture-only
    without --picture did nothing (exit 0). Both are argparse errors now, and the earlier report stays."""
    out = tmp_path / "photo.json"
    out.write_text('{"rows": ["the earlier run"]}\n')
    proc = run_cli("bench.photo", "--onnx", str(tiny_photo_onnx), "--out", str(out), *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_text() == '{"rows": ["the earlier run"]}\n'
