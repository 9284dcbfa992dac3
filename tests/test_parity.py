"""Parity of ONNX Runtime against PyTorch, per artifact x batch size; and proof the check can fail."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ae_export.parity import BATCH_SIZES, CheckResult, compare, provider_status, run_parity
from ae_export.specs import SPECS, Tolerance
from tests.helpers import run_cli
from train.checkpoint import load_checkpoint

ARTIFACTS = [*SPECS, "decoder(encoder)"]


@pytest.fixture(scope="module")
def cpu_report(onnx_dir, trained_checkpoint, fmnist_test):
    model = load_checkpoint(trained_checkpoint).build_model()
    return run_parity(model, onnx_dir, fmnist_test[:1000], BATCH_SIZES, providers=("cpu",))


def _rows(report, artifact: str, provider: str, batch: int) -> list[CheckResult]:
    return [
        r for r in report.results if (r.artifact, r.provider, r.batch_size) == (artifact, provider, batch)
    ]


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_cpu_parity(cpu_report, artifact, batch) -> None:
    rows = _rows(cpu_report, artifact, "cpu", batch)
    kinds = {r.inputs for r in rows}
    expected = {"latent-real", "latent-random"} if artifact == "decoder" else {"clean", "noisy", "uniform"}
    assert kinds == expected
    for r in rows:
        assert r.passed, f"{artifact} cpu batch {batch} {r.inputs}: max abs {r.max_abs:.2e}"
        assert r.max_abs <= 1e-5 and (r.atol, r.rtol) == (1e-5, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_cuda_parity(onnx_dir, trained_checkpoint, fmnist_test, artifact) -> None:
    status = provider_status(onnx_dir / "denoiser.onnx")["cuda"]
    if status != "ok":
        pytest.skip(f"cuda: {status}")
    model = load_checkpoint(trained_checkpoint).build_model()
    report = run_parity(model, onnx_dir, fmnist_test[:1000], BATCH_SIZES, providers=("cuda",))
    rows = [r for r in report.results if r.artifact == artifact]
    assert rows and all(r.passed for r in rows), report.failure_summary()


def test_report_shape(cpu_report) -> None:
    data = cpu_report.to_dict()
    assert data["passed"] is True
    assert set(data["providers"]) == {"cpu"}
    table = cpu_report.table()
    assert "overall: PASS" in table and "denoiser" in table


def test_compare_polygraphy_rule() -> None:
    ref = np.array([1.0, 100.0, 0.0], dtype=np.float32)
    tol = Tolerance(atol=1e-3, rtol=1e-3)
    # abs 5e-2 but rel 5e-4 on 100: passes; abs 5e-4 on 0: passes (abs within atol)
    assert compare(ref + np.array([0, 5e-2, 5e-4], dtype=np.float32), ref, tol)[3] == 0
    # abs 5e-2 on 1.0: both exceeded -> one failure
    assert compare(ref + np.array([5e-2, 0, 0], dtype=np.float32), ref, tol)[3] == 1
    assert compare(np.array([np.nan, 100, 0], dtype=np.float32), ref, tol)[3] >= 1


def _damage(src, dst, role: str, nudge: float = 1e-2) -> None:
    """Copy the ONNX files, nudging one weight of `role` by `nudge` (1e-2; NaN makes that weight NaN)."""
    shutil.copytree(src, dst)
    path = dst / SPECS[role].file_name
    proto = onnx.load(str(path))
    init = max(proto.graph.initializer, key=lambda i: int(np.prod(i.dims)))
    weights = numpy_helper.to_array(init).copy()
    weights.flat[0] += nudge
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    onnx.save(proto, str(path))


@pytest.mark.parametrize("role", ["denoiser", "encoder"])
def test_damaged_model_fails_parity(onnx_dir, trained_checkpoint, tmp_path, role) -> None:
    damaged = tmp_path / "damaged"
    _damage(onnx_dir, damaged, role)
    done = run_cli(
        "ae_export.cli",
        "parity",
        "--checkpoint",
        str(trained_checkpoint),
        "--onnx-dir",
        str(damaged),
        "--batch-sizes",
        "1,64",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"parity FAILED: {role} on cpu at batch" in done.stderr
    assert "tolerance atol 1e-05, rtol 1e-05" in done.stderr
    report = json.loads((damaged / "parity.json").read_text())
    assert report["passed"] is False
    failed = {(r["artifact"], r["batch_size"]) for r in report["results"] if not r["passed"]}
    assert (role, 1) in failed or (role, 64) in failed


def _strict_json(text: str) -> dict:
    """json.loads that refuses the NaN/Infinity tokens, as JavaScript's JSON.parse, jq and serde do."""

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_parity_json_with_nan_figures_is_strict_json(onnx_dir, trained_checkpoint, tmp_path) -> None:
    """A file whose outputs are NaN fails parity with NaN errors; parity.json once held the bare token
    `NaN`, which Python reads but strict JSON readers refuse. NaN and Inf figures are now null."""
    damaged = tmp_path / "damaged"
    _damage(onnx_dir, damaged, "denoiser", nudge=float("nan"))
    args = ("--checkpoint", str(trained_checkpoint), "--onnx-dir", str(damaged), "--batch-sizes", "1")
    done = run_cli("ae_export.cli", "parity", *args)
    assert done.returncode == 1, done.stdout + done.stderr
    report = _strict_json((damaged / "parity.json").read_text())
    failed = [r for r in report["results"] if not r["passed"]]
    assert failed and all(r["artifact"] == "denoiser" and r["max_abs"] is None for r in failed)


def test_parity_cli_passes_on_good_files(onnx_dir, trained_checkpoint, tmp_path) -> None:
    copy = tmp_path / "good"
    shutil.copytree(onnx_dir, copy)
    done = run_cli(
        "ae_export.cli",
        "parity",
        "--checkpoint",
        str(trained_checkpoint),
        "--onnx-dir",
        str(copy),
        "--batch-sizes",
        "2",
    )
    assert done.returncode == 0, done.stderr
    assert (
        "cuda: not available" in done.stdout
        or "cuda" in json.loads((copy / "parity.json").read_text())["providers"]
    )


def test_unloadable_model_fails_parity(onnx_dir, trained_checkpoint, tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(onnx_dir, broken)
    (broken / "denoiser.onnx").write_bytes(b"not an onnx model")
    done = run_cli(
        "ae_export.cli",
        "parity",
        "--checkpoint",
        str(trained_checkpoint),
        "--onnx-dir",
        str(broken),
        "--batch-sizes",
        "1",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no check could run" in done.stderr and "cpu: not available" in done.stderr


def test_max_rel_covers_references_above_atol_and_failures_count_every_element() -> None:
    """A reference of exactly 0 must not print a 1e+300 "relative error"; it is judged by abs error."""
    tol = Tolerance(atol=1e-5, rtol=1e-5)
    ref = np.array([0.0, 1e-7, 0.5, 1.0], dtype=np.float32)
    got = ref + np.array([1e-7, 1e-7, 0.5 * 2e-6, 0.0], dtype=np.float32)
    max_abs, max_rel, _mean, failed = compare(got, ref, tol)
    assert failed == 0 and 0.9e-6 < max_abs < 1.1e-6
    assert 1.5e-6 < max_rel < 2.5e-6  # 1e-6 / 0.5; the references 0 and 1e-7 are below atol
    got[0] = 1e-3  # a real fault where the reference is 0: caught by abs and rel together
    assert compare(got, ref, tol)[3] == 1
