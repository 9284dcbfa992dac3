"""Compatibility matrix: OpenVINO and OpenCV DNN load every exported file at batch 1, 8 and 256 and match
ONNX Runtime within the stated tolerance; a file a consumer cannot load is reported with its own error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

# The consumers are an optional extra: a machine without it (a GPU box set up with the `gpu` extra alone,
# where `make gpu-check` runs the gpu-marked tests) skips this file, saying so, instead of failing to collect.
COMPAT_MISSING = "the `compat` extra is not installed: pip install 'ae-export[compat]'"
for _module in ("openvino", "cv2"):
    pytest.importorskip(_module, reason=COMPAT_MISSING)

from ae_export.compat import BATCH_SIZES, CONSUMERS, TOLERANCES, check_file, run_compat
from ae_export.specs import SPECS
from ae_export.targets import ExportedFile, exported_files
from runtimes.manifest import ManifestError, sha256_file
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def matrix(onnx_dir) -> dict[tuple[str, str, int], object]:
    return {(r.consumer, r.model, r.batch): r for r in run_compat(onnx_dir)}


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("role", list(SPECS))
@pytest.mark.parametrize("consumer", CONSUMERS)
def test_consumer_matches_onnxruntime(matrix, onnx_dir, consumer, role, batch) -> None:
    row = matrix[(consumer, role, batch)]
    ops = {n.op_type for n in onnx.load(str(onnx_dir / row.file)).graph.node}
    # The fast encoder (stacked Convs only) runs everywhere; the fast decoder and denoiser hold Col2Im.
    assert row.graph == "fast" and ("Col2Im" in ops) == (role != "encoder")
    if consumer == "opencv" and "Col2Im" in ops:
        # OpenCV 5.0 has no Col2Im layer: such a file must be reported as not loadable, with its reason.
        assert row.status == "cannot load" and "Col2Im" in row.error, row
        return
    assert row.status == "ok", f"{consumer} {role} batch {batch}: {row.status} {row.max_abs} {row.error}"
    assert row.max_abs <= TOLERANCES["fp32"]


def _col2im_variant(source: Path, target: Path) -> None:
    """The denoiser followed by an exact Col2Im interleave (block 1x1: the identity), as the fast graph's
    decoder ends: a real graph using Col2Im, with the source's metadata."""
    model = onnx.load(str(source))
    graph = model.graph
    out = graph.output[0]
    graph.node[-1].output[0] = "pre_col2im"  # the last node produced the output
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0, 1, 784], np.int64), "col_shape"),
            numpy_helper.from_array(np.array([28, 28], np.int64), "image_shape"),
            numpy_helper.from_array(np.array([1, 1], np.int64), "block_shape"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Reshape", ["pre_col2im", "col_shape"], ["columns"]),  # (B, 1, 784)
            helper.make_node(
                "Col2Im", ["columns", "image_shape", "block_shape"], [out.name]
            ),  # (B, 1, 28, 28)
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(target))


@pytest.fixture(scope="module")
def variant_dir(onnx_dir, tmp_path_factory) -> Path:
    """The export plus a Col2Im variant that its manifest.json lists."""
    folder = tmp_path_factory.mktemp("variants")
    for spec in SPECS.values():
        shutil.copyfile(onnx_dir / spec.file_name, folder / spec.file_name)
    _col2im_variant(onnx_dir / "denoiser.onnx", folder / "denoiser.fast.onnx")
    files = [_entry(folder, s.file_name, r, "fp32") for r, s in SPECS.items()]
    files.append(_entry(folder, "denoiser.fast.onnx", "denoiser", "fast"))
    files.append({"file": "mobile_usability.txt", "kind": "report"})  # not a model: left alone
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "files": files}))
    return folder


def _entry(folder: Path, name: str, role: str, variant: str) -> dict:
    """A manifest model entry as ae-export writes it (the runtime's reader checks size and sha256)."""
    path = folder / name
    size, digest = path.stat().st_size, sha256_file(path)
    return {"file": name, "kind": "model", "role": role, "variant": variant, "size": size, "sha256": digest}


def test_unloadable_file_is_reported_with_the_consumers_error(variant_dir) -> None:
    fast = next(f for f in exported_files(variant_dir) if f.variant == "fast")
    rows = {(r.consumer, r.batch): r for r in check_file(fast, CONSUMERS, (1, 8))}
    for batch in (1, 8):
        opencv = rows[("opencv", batch)]
        assert opencv.status == "cannot load" and opencv.max_abs is None
        assert "Col2Im" in opencv.error and "OpenCV" in opencv.error  # OpenCV's own message
        openvino = rows[("openvino", batch)]
        assert openvino.status == "ok" and openvino.max_abs <= TOLERANCES["fast"]


def test_cli_lists_what_a_consumer_cannot_load(variant_dir, tmp_path) -> None:
    report = tmp_path / "compat.json"
    result = run_cli("ae_export.cli", "compat", "--onnx-dir", str(variant_dir), "--json", str(report))
    assert result.returncode == 0, result.stdout + result.stderr  # listed, not failed
    assert "| opencv | denoiser_fast (fast, fast) | no | - | - |" in result.stdout
    assert "Col2Im" in result.stdout
    rows = json.loads(report.read_text())["rows"]
    assert {r["model"] for r in rows} == {"encoder", "decoder", "denoiser", "denoiser_fast"}
    assert all(r["status"] == "ok" for r in rows if r["consumer"] == "openvino")


def test_triton_serves_manifest_variants(variant_dir, tmp_path) -> None:
    out = tmp_path / "repo"
    result = run_cli("ae_export.cli", "triton", "--onnx-dir", str(variant_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["decoder", "denoiser", "denoiser_fast", "encoder"]
    assert (out / "denoiser_fast" / "1" / "model.onnx").read_bytes() == (
        variant_dir / "denoiser.fast.onnx"
    ).read_bytes()
    assert run_cli("ae_export.cli", "triton", "--check", str(out)).returncode == 0


def test_manifest_errors_are_clear(variant_dir, tmp_path) -> None:
    folder = tmp_path / "export"
    shutil.copytree(variant_dir, folder)
    good = json.loads((folder / "manifest.json").read_text())
    entry = {"file": "x.onnx", "kind": "model", "role": "denoiser", "size": 1, "sha256": "0"}
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "files": [entry]}))
    with pytest.raises(ManifestError, match="variant"):
        exported_files(folder)
    entry = {**entry, "file": "gone.onnx", "variant": "int8"}
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "files": [entry]}))
    with pytest.raises(ManifestError, match="gone.onnx"):
        exported_files(folder)
    # A variant replaced after the export (its sha256 no longer the manifest's) is not offered to a target.
    (folder / "manifest.json").write_text(json.dumps(good))
    shutil.copyfile(folder / "denoiser.onnx", folder / "denoiser.fast.onnx")
    with pytest.raises(ManifestError, match=r"denoiser\.fast\.onnx: does not match"):
        exported_files(folder)
    assert ExportedFile("denoiser", "denoiser", "ort", folder / "denoiser.ort").onnx is False


@pytest.mark.parametrize("graphs", [("portable", "fast"), ("fast", "fast")])
def test_a_new_export_removes_the_earlier_compat_report(
    trained_checkpoint, portable_onnx_dir, onnx_dir, tmp_path, graphs
) -> None:
    """compat.json describes the files it ran: after a portable export it said OpenCV ran denoiser.onnx,
    and it stayed when a fast export (which OpenCV refuses) replaced that file."""
    first, second = graphs
    folder = tmp_path / "export"
    shutil.copytree(portable_onnx_dir if first == "portable" else onnx_dir, folder)
    checked = run_cli(
        "ae_export.cli", "compat", "--onnx-dir", str(folder), "--batch-sizes", "1", "--consumers", "opencv"
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (folder / "compat.json").is_file()
    exported = run_cli(
        "ae_export.cli",
        *("--checkpoint", str(trained_checkpoint), "--out", str(folder), "--graph", second),
        *("--variants", "none", "--no-parity"),
    )
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert not (folder / "compat.json").exists()
    assert "compat.json" in exported.stdout  # named among the files removed


@pytest.mark.parametrize(
    ("value", "named"), [("x", "expected comma-separated int values"), ("0", "[0] not valid")]
)
def test_a_batch_size_that_is_not_a_positive_integer_is_refused_naming_the_flag(
    tmp_path, value, named
) -> None:
    """'x' ended in int()'s bare "invalid literal for int() with base 10: 'x'", naming no flag."""
    result = run_cli("ae_export.cli", "compat", "--onnx-dir", str(tmp_path), "--batch-sizes", value)
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("ae-export compat: error: --batch-sizes") and named in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_a_json_path_that_cannot_be_written_is_refused_before_anything_runs(tmp_path, where) -> None:
    """--json naming a folder (or a path under a file) was found only when the report was written, after
    every consumer had run every file (minutes). The --onnx-dir here holds nothing: the --json error comes
    first, so it is checked before a single file is read."""
    (tmp_path / "reports").mkdir()
    (tmp_path / "notes.txt").write_text("kept")
    out = tmp_path / "reports" if where == "a folder" else tmp_path / "notes.txt" / "compat.json"
    empty = tmp_path / "onnx"
    empty.mkdir()
    result = run_cli("ae_export.cli", "compat", "--onnx-dir", str(empty), "--json", str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"ae-export compat: error: --json {out}: "
        + (
            f"is a folder; give the file's path, e.g. {out / 'compat.json'}"
            if where == "a folder"
            else f"{tmp_path / 'notes.txt'} is not a folder"
        )
    ]
    assert (tmp_path / "notes.txt").read_text() == "kept" and list((tmp_path / "reports").iterdir()) == []


def test_a_json_path_in_a_new_folder_is_written(onnx_dir, tmp_path) -> None:
    """The report's folder is made as it is written: a new one ended in FileNotFoundError after the run."""
    out = tmp_path / "reports" / "2026" / "compat.json"
    args = ("--onnx-dir", str(onnx_dir), "--batch-sizes", "1", "--consumers", "opencv", "--json", str(out))
    result = run_cli("ae_export.cli", "compat", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(out.read_text())["rows"] and f"wrote {out}" in result.stdout


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (",", "--consumers is empty"),  # ran no consumer and wrote an empty report, exit 0
        ("openvino,opencl", "--consumers: ['opencl'] not valid; choose from openvino, opencv"),
    ],
    ids=["empty", "unknown"],
)
def test_consumers_flag_is_checked_before_anything_runs(tmp_path, value, message) -> None:
    result = run_cli("ae_export.cli", "compat", "--onnx-dir", str(tmp_path), "--consumers", value)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == f"ae-export compat: error: {message}"
    assert list(tmp_path.iterdir()) == []


def test_consumers_flag_takes_spaces_after_commas(onnx_dir, tmp_path) -> None:
    """ "--consumers 'opencv, openvino'" was refused as "unknown consumer(s) [' openvino']", unlike every
    other list flag of ae-export."""
    out = tmp_path / "compat.json"
    args = ("--onnx-dir", str(onnx_dir), "--batch-sizes", "1", "--consumers", "opencv, openvino")
    result = run_cli("ae_export.cli", "compat", *args, "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert {row["consumer"] for row in json.loads(out.read_text())["rows"]} == {"opencv", "openvino"}
