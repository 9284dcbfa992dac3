"""Triton model repository: schema-valid configs that equal the ONNX graphs, byte-identical models, and a
check that catches a tampered config. The CLI runs as a subprocess, as a user runs it."""

from __future__ import annotations

import hashlib
import inspect
import re
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest
from google.protobuf import text_format

# An optional extra: without it (a GPU box set up with the `gpu` extra alone, where `make gpu-check` runs
# the gpu-marked tests) this file is skipped, saying so, instead of failing to collect.
TRITON_MISSING = "the `triton` extra is not installed: pip install 'ae-export[triton]'"
pytest.importorskip("tritonclient", reason=TRITON_MISSING)
from tritonclient.grpc import model_config_pb2 as mc

from ae_export.specs import SPECS
from ae_export.triton import Options, TritonConfigError, derive_config, parse_config, render_config
from runtimes.batching import MicroBatcher
from tests.helpers import run_cli, train_tiny_photo_model

ORT_TO_TRITON = {"tensor(float)": mc.TYPE_FP32, "tensor(float16)": mc.TYPE_FP16}
BATCHER = inspect.signature(MicroBatcher.__init__).parameters


@pytest.fixture(scope="module")
def repository(onnx_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "model_repository"
    result = run_cli("ae_export.cli", "triton", "--onnx-dir", str(onnx_dir), "--out", str(out), "--warmup")
    assert result.returncode == 0, result.stderr
    return out


def _config(repo: Path, role: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    text_format.Parse((repo / role / "config.pbtxt").read_text(), config)  # Triton's own schema
    return config


@pytest.mark.parametrize("role", list(SPECS))
def test_config_equals_the_onnx_graph(repository, onnx_dir, role) -> None:
    config = _config(repository, role)
    session = ort.InferenceSession(str(onnx_dir / SPECS[role].file_name), providers=["CPUExecutionProvider"])
    assert (config.name, config.platform) == (role, "onnxruntime_onnx")
    for tensors, graph in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [(t.name, t.data_type, list(t.dims)) for t in tensors] == [
            (g.name, ORT_TO_TRITON[g.type], list(g.shape[1:])) for g in graph
        ]
        assert all(g.shape[0] == "batch" for g in graph)  # batch axis symbolic -> Triton batching on
    assert config.max_batch_size == BATCHER["max_batch_size"].default
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == BATCHER["max_queue_delay_us"].default
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    assert [w.batch_size for w in config.model_warmup] == [1, config.max_batch_size]
    name = session.get_inputs()[0].name
    assert all(list(w.inputs[name].dims) == list(config.input[0].dims) for w in config.model_warmup)


@pytest.mark.parametrize("role", list(SPECS))
def test_model_file_is_byte_identical(repository, onnx_dir, role) -> None:
    exported = (onnx_dir / SPECS[role].file_name).read_bytes()
    served = (repository / role / "1" / "model.onnx").read_bytes()
    assert served == exported
    assert hashlib.sha256(exported).hexdigest() in (repository / role / "config.pbtxt").read_text()


def test_check_passes_on_the_written_repository(repository) -> None:
    result = run_cli("ae_export.cli", "triton", "--check", str(repository))
    assert result.returncode == 0, result.stderr
    assert "matches" in result.stdout


@pytest.mark.parametrize(
    "flags, named",
    [(["--kind", "gpu"], "--kind"), (["--max-batch-size", "0", "--warmup"], "--warmup, --max-batch-size")],
)
def test_check_refuses_the_flags_that_shape_a_written_repository(repository, flags, named) -> None:
    """`--check REPO --kind gpu` passed a CPU repository, and --max-batch-size 0 went unrefused: the write
    flags were silently ignored by --check."""
    result = run_cli("ae_export.cli", "triton", "--check", str(repository), *flags)
    assert result.returncode == 2 and f"{named}: not used with --check" in result.stderr, result.stderr


TAMPERS = [
    ("denoiser", "dims: [1, 28, 28]", "dims: [1, 28, 29]", "denoiser: input[0].dims"),
    ("encoder", 'name: "latent"', 'name: "latnet"', "encoder: output[0].name"),
    ("decoder", "data_type: TYPE_FP32", "data_type: TYPE_FP16", "decoder: input[0].data_type"),
    ("denoiser", "max_batch_size", "max_batch_sise", 'no field named "max_batch_sise"'),
    ("encoder", "count: 1", "count: 0", "encoder: instance_group[0].count"),
]


@pytest.mark.parametrize(("role", "old", "new", "named"), TAMPERS, ids=[t[3].split(":")[-1] for t in TAMPERS])
def test_check_names_a_tampered_field(repository, tmp_path, role, old, new, named) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository, repo)
    config = repo / role / "config.pbtxt"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new, 1))
    result = run_cli("ae_export.cli", "triton", "--check", str(repo))
    assert result.returncode == 1, result.stdout
    assert named in result.stderr


def test_check_catches_a_swapped_model_file(repository, onnx_dir, tmp_path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository, repo)
    shutil.copyfile(onnx_dir / "encoder.onnx", repo / "decoder" / "1" / "model.onnx")
    result = run_cli("ae_export.cli", "triton", "--check", str(repo))
    assert result.returncode == 1 and "decoder: input[0].name" in result.stderr


def test_check_catches_a_swapped_model_file_with_the_same_io(repository, portable_onnx_dir, tmp_path) -> None:
    """The portable graph has the fast graph's inputs and outputs, so the configs agree; the sha256 the
    header records, and the export's own file, do not."""
    repo = tmp_path / "repo"
    shutil.copytree(repository, repo)
    impostor = (portable_onnx_dir / "denoiser.onnx").read_bytes()
    (repo / "denoiser" / "1" / "model.onnx").write_bytes(impostor)
    result = run_cli("ae_export.cli", "triton", "--check", str(repo))
    found, recorded = hashlib.sha256(impostor).hexdigest(), _recorded_sha(repo, "denoiser")
    assert result.returncode == 1, result.stdout
    assert f"denoiser: 1/model.onnx: sha256 {found}, but config.pbtxt records {recorded}" in result.stderr
    assert "denoiser.onnx has" in result.stderr  # the export's file, compared too
    config = repo / "denoiser" / "config.pbtxt"  # a header made to agree: the export still disagrees
    config.write_text(config.read_text().replace(recorded, found))
    result = run_cli("ae_export.cli", "triton", "--check", str(repo))
    assert result.returncode == 1 and "config.pbtxt records" not in result.stderr
    assert f"denoiser: 1/model.onnx: sha256 {found}, but the export's" in result.stderr


def _recorded_sha(repo: Path, name: str) -> str:
    return re.search(r"sha256:? ([0-9a-f]{64})", (repo / name / "config.pbtxt").read_text())[1]


def test_rewrite_removes_an_earlier_exports_models_and_keeps_others(repository, onnx_dir, tmp_path) -> None:
    """A folder our writer made for a model this export lacks (a variant no longer exported) is removed;
    `--check` names it while it is there; a folder we did not write is never touched: the write is refused."""
    repo = tmp_path / "repo"
    shutil.copytree(repository, repo)
    shutil.copytree(repo / "denoiser", repo / "denoiser_fp16")  # as an export with variants left it
    stale = repo / "denoiser_fp16" / "config.pbtxt"
    stale.write_text(stale.read_text().replace('name: "denoiser"', 'name: "denoiser_fp16"'))
    result = run_cli("ae_export.cli", "triton", "--check", str(repo))
    assert result.returncode == 1
    assert "denoiser_fp16: model folder: not in the export" in result.stderr
    result = run_cli("ae_export.cli", "triton", "--onnx-dir", str(onnx_dir), "--out", str(repo))
    assert result.returncode == 0, result.stderr
    assert f"removed {repo / 'denoiser_fp16'}" in result.stdout
    assert sorted(p.name for p in repo.iterdir()) == sorted(SPECS)
    (repo / "theirs" / "1").mkdir(parents=True)
    (repo / "theirs" / "config.pbtxt").write_text('name: "theirs"\n')
    shutil.rmtree(repo / "encoder")  # a model missing from the repository: --check names it
    result = run_cli("ae_export.cli", "triton", "--check", str(repo))
    assert result.returncode == 1
    assert "theirs: model folder: not in the export" in result.stderr
    assert "encoder: model folder: missing" in result.stderr
    result = run_cli("ae_export.cli", "triton", "--onnx-dir", str(onnx_dir), "--out", str(repo))
    assert result.returncode == 2 and "did not write" in result.stderr and "theirs" in result.stderr
    assert (repo / "theirs" / "config.pbtxt").is_file() and not (repo / "encoder").exists()  # untouched


@pytest.mark.parametrize("version", ["2", "0"])
def test_a_version_folder_added_by_hand_is_named_and_kept(repository, onnx_dir, tmp_path, version) -> None:
    """Triton serves a model's highest numbered folder: a `denoiser/2/model.onnx` beside our `1/` passed
    --check and survived the rewrite, while Triton would serve it instead of the exported file."""
    repo = tmp_path / "repo"
    shutil.copytree(repository, repo)
    (repo / "denoiser" / version).mkdir()
    theirs = repo / "denoiser" / version / "model.onnx"
    shutil.copyfile(onnx_dir / "encoder.onnx", theirs)
    result = run_cli("ae_export.cli", "triton", "--check", str(repo))
    served = "version 2" if version == "2" else "them beside 1/"
    named = (
        f"{repo / 'denoiser'} holds version folders ae-export did not write ({version}/): Triton would serve"
    )
    assert result.returncode == 1, result.stdout
    assert (
        f"mismatch: denoiser: version folder: {named} {served}, not the exported 1/model.onnx"
        in result.stderr
    )
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    result = run_cli("ae_export.cli", "triton", "--onnx-dir", str(onnx_dir), "--out", str(repo))
    assert result.returncode == 2, result.stdout
    assert named in result.stderr and "nothing was written" in result.stderr
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("under", [False, True])
def test_an_out_that_is_a_file_is_refused_by_name(onnx_dir, tmp_path, under) -> None:
    """It stopped at the first mkdir with a bare '[Errno 20] Not a directory: .../decoder/1'."""
    blocker = tmp_path / "repo"
    blocker.write_text("keep\n")
    out = blocker / "models" if under else blocker
    result = run_cli("ae_export.cli", "triton", "--onnx-dir", str(onnx_dir), "--out", str(out))
    assert result.returncode == 2, result.stdout
    assert result.stderr.strip() == (
        f"ae-export triton: error: {out} must be a folder (an existing one or a new path): "
        f"{blocker} is not one"
    )
    assert blocker.read_text() == "keep\n" and sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_schema_and_load_rules_reject_invalid_configs(onnx_dir) -> None:
    config = derive_config(onnx_dir / "denoiser.onnx", "denoiser", Options())
    text = render_config(config, "0" * 64)
    assert parse_config(text) == config
    with pytest.raises(TritonConfigError, match="max_batch_sise"):
        parse_config(text.replace("max_batch_size", "max_batch_sise"))
    with pytest.raises(TritonConfigError, match=r"dims \[1, 0, 28\]"):
        parse_config(text.replace("dims: [1, 28, 28]", "dims: [1, 0, 28]", 1))
    config.instance_group[0].count = 0
    with pytest.raises(TritonConfigError, match="instance_group"):
        render_config(config, "0" * 64)  # refuses to render, so nothing invalid is ever written


def test_invalid_config_is_not_written(onnx_dir, tmp_path) -> None:
    out = tmp_path / "repo"
    result = run_cli(
        "ae_export.cli", "triton", "--onnx-dir", str(onnx_dir), "--out", str(out), "--max-batch-size", "0"
    )
    assert result.returncode == 2 and "--max-batch-size" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("60000000", True),
        ("60000001", False),
        ("120000000", False),
        ("18446744073709551616", False),
        ("-1", False),
    ],
)
def test_queue_delay_takes_microbatchers_range(onnx_dir, tmp_path, value, written) -> None:
    """--max-queue-delay-us took two minutes (120000000) into every config, a delay runtimes.MicroBatcher,
    whose meaning the configs carry, refuses past one minute; past 2**64 the run ended in protobuf's bare
    'Value out of range'. The flag takes MicroBatcher's range and names it."""
    out = tmp_path / "repo"
    args = ("--onnx-dir", str(onnx_dir), "--out", str(out), "--max-queue-delay-us", value)
    result = run_cli("ae_export.cli", "triton", *args)
    if written:
        assert result.returncode == 0, result.stderr
        config = parse_config((out / "denoiser" / "config.pbtxt").read_text())
        assert config.dynamic_batching.max_queue_delay_microseconds == 60_000_000
        return
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"ae-export triton: error: --max-queue-delay-us {value}: must be 0 to 60000000 (one minute), the "
        "range runtimes.MicroBatcher takes"
    )
    assert not out.exists()


def test_gpu_kind_and_missing_export(onnx_dir, tmp_path) -> None:
    out = tmp_path / "repo"
    result = run_cli(
        "ae_export.cli", "triton", "--onnx-dir", str(onnx_dir), "--out", str(out), "--kind", "gpu"
    )
    assert result.returncode == 0, result.stderr
    config = _config(out, "denoiser")
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    (cuda,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert cuda.name == "cuda"  # the runtime's CUDA options: what parity certified
    assert dict(cuda.parameters) == {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}
    assert run_cli("ae_export.cli", "triton", "--check", str(out)).returncode == 0
    config_text = (out / "denoiser" / "config.pbtxt").read_text()
    (out / "denoiser" / "config.pbtxt").write_text(config_text.replace('"0"', '"1"'))  # TF32 back on
    result = run_cli("ae_export.cli", "triton", "--check", str(out))
    assert result.returncode == 1 and "use_tf32" in result.stdout + result.stderr
    result = run_cli("ae_export.cli", "triton", "--onnx-dir", str(tmp_path / "none"), "--out", str(out))
    assert result.returncode == 2 and "not exported yet" in result.stderr


def test_gpu_kind_warns_when_the_export_has_no_portable_twins(onnx_dir, portable_onnx_dir, tmp_path) -> None:
    """Once silent: a fast-graph export without twins went into a GPU repository whose decoder and
    denoiser ran Col2Im on the CPU on every request, though --kind gpu is documented to serve the twins."""
    args = ("ae_export.cli", "triton", "--kind", "gpu")
    result = run_cli(*args, "--onnx-dir", str(onnx_dir), "--out", str(tmp_path / "fast"))
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "decoder runs Col2Im" in line and "denoiser runs Col2Im" in line and "encoder" not in line
    assert "--graph portable" in line
    result = run_cli(*args, "--onnx-dir", str(portable_onnx_dir), "--out", str(tmp_path / "portable"))
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr


def test_any_size_model_gets_variable_dims_and_concrete_warmup(repository, onnx_dir, tmp_path) -> None:
    """The fully convolutional model (denoiser only, height and width symbolic): dims -1, warmup at 28 px.
    Written over the lecture model's repository, it replaces it: no encoder/decoder is left to serve."""
    from ae_export.compat import run_compat
    from ae_export.export import export_all
    from train.checkpoint import load_checkpoint

    train_tiny_photo_model(tmp_path)
    export_all(load_checkpoint(tmp_path / "checkpoint.pt"), tmp_path / "onnx", log=lambda _line: None)
    out = tmp_path / "repo"
    shutil.copytree(repository, out)  # the lecture model's repository: its encoder/decoder must go
    result = run_cli(
        "ae_export.cli", "triton", "--onnx-dir", str(tmp_path / "onnx"), "--out", str(out), "--warmup"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["denoiser"]
    assert "removed" in result.stdout and "encoder" in result.stdout
    served = _config(out, "denoiser")
    assert list(served.input[0].dims) == [1, -1, -1] and list(served.output[0].dims) == [1, -1, -1]
    assert all(min(w.inputs["image"].dims) > 0 for w in served.model_warmup)
    assert run_cli("ae_export.cli", "triton", "--check", str(out)).returncode == 0
    result = run_cli("ae_export.cli", "triton", "--check", str(out), "--onnx-dir", str(onnx_dir))
    assert result.returncode == 1 and "denoiser: 1/model.onnx: sha256" in result.stderr  # not the lecture's
    rows = run_compat(tmp_path / "onnx", batches=(1, 8))
    assert rows and all(r.status == "ok" for r in rows), rows
