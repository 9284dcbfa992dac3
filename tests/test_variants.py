"""Edge variants (fp16, int8, .ort): real files from the session's trained model, real sessions, no mocks.

The variants are built once per session from the small trained model with budgets wide enough for it (it
trains for seconds, so its int8 loss says nothing about the default model's; the README's figures come
from the default training). The budget tests force a rejection with an impossible budget instead.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from ae_export.specs import SPECS, VARIANTS
from ae_export.stackconv import STACK_MARK
from runtimes.manifest import (
    MANIFEST_FILE,
    VARIANT_SUFFIXES,
    ManifestError,
    load_manifest,
    resolve_model,
    sha256_file,
)
from tests.helpers import run_cli, run_script

ALL_VARIANTS = list(VARIANTS)  # fp32, portable, fp16, int8, fp32.ort, fp16.ort, int8.ort
WIDE_BUDGETS = {"fp16": 0.1, "int8": 1.0}


@pytest.fixture(scope="session")
def variants_dir(trained_checkpoint, onnx_dir, fmnist, tmp_path_factory) -> Path:
    from ae_export.deploy import export_variants
    from train.checkpoint import load_checkpoint

    out = tmp_path_factory.mktemp("variants")
    for spec in SPECS.values():
        shutil.copy(onnx_dir / spec.file_name, out / spec.file_name)
    result = export_variants(
        load_checkpoint(trained_checkpoint),
        out,
        ["fp16", "int8", "ort", "portable"],
        fmnist,
        budgets=WIDE_BUDGETS,
        parity_images=fmnist.val.images[:64].numpy(),
        batch_sizes=(1, 7),
        log=lambda _line: None,
    )
    assert not result.rejected, [o.rejected for o in result.rejected]
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_a_precisions_onnx_and_ort_files_are_judged_alike(precision: str) -> None:
    """The .ort file holds the same graph: the same parity bounds (int8.onnx once lacked the mean-abs
    bound that catches a sign-flipped weight tensor, which only int8.ort had)."""
    onnx_file, ort_file = VARIANTS[precision], VARIANTS[f"{precision}.ort"]
    for attribute in ("vs_torch", "vs_fp32", "parity_inputs", "mean_abs_bound"):
        assert getattr(onnx_file, attribute) == getattr(ort_file, attribute), attribute
    if precision == "int8":
        assert onnx_file.mean_abs_bound is not None


def test_a_layer_has_one_name_in_every_file_and_graph(onnx_dir: Path, portable_onnx_dir: Path) -> None:
    """int8's exclusion list names layers by `layer_key`; the fast graph's rewritten weights once took
    their node's name, so a layer the search kept in float in the denoiser was quantized in the decoder."""
    from ae_export.variants import weighted_layers

    keys = {
        (folder.name, role): set(weighted_layers(onnx.load(str(folder / spec.file_name)), role))
        for folder in (onnx_dir, portable_onnx_dir)
        for role, spec in SPECS.items()
    }
    for folder in (onnx_dir, portable_onnx_dir):
        denoiser = keys[folder.name, "denoiser"]
        assert keys[folder.name, "encoder"] | keys[folder.name, "decoder"] == denoiser
        assert all(key.startswith(("encoder.", "decoder.")) for key in denoiser)
    assert keys[onnx_dir.name, "denoiser"] == keys[portable_onnx_dir.name, "denoiser"]


def test_quality_gate_rejects_a_variant_whose_outputs_are_nan(onnx_dir: Path, fmnist, tmp_path: Path) -> None:
    """A NaN loss once passed the gate (NaN > budget is False); with --no-parity the gate is all there is."""
    from onnx import helper, numpy_helper

    from ae_export.deploy import Outcome, _score
    from ae_export.variants import score_denoiser, score_pair, standard_test

    fp16 = VARIANTS["fp16"]
    for role, spec in SPECS.items():
        proto = onnx.load(str(onnx_dir / spec.file_name))
        if role == "denoiser":  # the output times NaN
            out = proto.graph.output[0].name
            for node in proto.graph.node:
                node.output[:] = [f"{out}.pre" if name == out else name for name in node.output]
            proto.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan"))
            proto.graph.node.append(helper.make_node("Mul", [f"{out}.pre", "nan"], [out]))
        onnx.save(proto, str(tmp_path / fp16.file_name(role)))
    test = standard_test(fmnist, 0.3)
    fp32_q = score_denoiser(onnx_dir / "denoiser.onnx", test)
    fp32_pair = score_pair(onnx_dir / "encoder.onnx", onnx_dir / "decoder.onnx", test)
    outcome = Outcome(fp16, budget_db=100.0)
    _score(outcome, tmp_path, test, fp32_q, fp32_pair)
    assert outcome.rejected and "nan dB (denoiser)" in outcome.rejected


def _fp16_overflowing_checkpoint(trained: Path, out: Path) -> Path:
    """The same fp32 function with the decoder's second Linear output beyond float16's 65504.

    ReLU is positively homogeneous: scaling a Linear + ReLU by `a` and the next layer's weight by 1/a
    changes no fp32 output, but the fp16 file's activations overflow to Inf and its outputs hold NaN."""
    import torch

    from train.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(trained)
    state, model = checkpoint.model_state, checkpoint.build_model()
    with torch.no_grad():
        peak = float(model.decoder.lin(model.encoder(torch.rand(64, 1, 28, 28))).abs().max())
    a, b = 100.0, 3e5 / peak  # the weights stay under the converter's clamp of 1e4
    state["decoder.lin.0.weight"] *= a
    state["decoder.lin.0.bias"] *= a
    state["decoder.lin.2.weight"] *= b / a
    state["decoder.lin.2.bias"] *= b
    state["decoder.cnn.0.weight"] /= b
    checkpoint.optimizer_state = None
    save_checkpoint(checkpoint, out)
    return out


@pytest.mark.slow
def test_a_variant_whose_outputs_are_nan_is_recorded_in_the_manifest(
    trained_checkpoint: Path, tmp_path: Path
) -> None:
    """JSON has no NaN: the rejection's NaN loss once stopped the manifest (exit 2, "Out of range float
    values are not JSON compliant", no manifest.json); now it is null and the export ends as a rejection."""
    checkpoint = _fp16_overflowing_checkpoint(trained_checkpoint, tmp_path / "overflow.pt")
    out = tmp_path / "onnx"
    proc = run_cli(
        "ae_export.cli",
        *("--checkpoint", str(checkpoint), "--out", str(out), "--variants", "fp16,ort"),
        *("--batch-sizes", "7", "--providers", "cpu"),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "variant fp16 not written: loses nan dB" in proc.stderr
    assert not list(out.glob("*.fp16.*"))
    manifest = load_manifest(out)
    assert manifest["rejected"] == [
        {"variant": "fp16", "reason": manifest["rejected"][0]["reason"], "loss_db": None, "budget_db": 0.02}
    ]
    assert {e["variant"] for e in manifest["files"] if e["kind"] == "model"} == {"fp32", "fp32.ort"}


@pytest.mark.slow
def test_fp16_is_refused_when_a_weight_is_past_float16s_range(
    trained_checkpoint: Path, tmp_path: Path
) -> None:
    """The converter clamps a weight past 65504 in silence: with --no-parity (the quality gate alone, which
    a saturated output passes) such an fp16 file was written and listed in the manifest, computing another
    function than the model. It is refused now, the weight named, and recorded like any rejection."""
    from train.checkpoint import load_checkpoint, save_checkpoint

    checkpoint = load_checkpoint(trained_checkpoint)
    checkpoint.model_state["encoder.lin.0.weight"][0, 0] = 1e5
    checkpoint.optimizer_state = None
    save_checkpoint(checkpoint, tmp_path / "large.pt")
    out = tmp_path / "onnx"
    proc = run_cli(
        "ae_export.cli",
        *("--checkpoint", str(tmp_path / "large.pt"), "--out", str(out), "--variants", "fp16,ort"),
        "--no-parity",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (
        "variant fp16 not written: encoder: weight lin.0.weight holds 100000, past float16's" in proc.stderr
    )
    assert not list(out.glob("*.fp16.*"))
    manifest = load_manifest(out)
    assert [r["variant"] for r in manifest["rejected"]] == ["fp16"]
    assert {e["variant"] for e in manifest["files"] if e["kind"] == "model"} == {"fp32", "fp32.ort"}


@pytest.mark.parametrize("variants", ["int8", "fp16,int8,ort"])
def test_an_opset_int8_cannot_run_at_is_refused_before_anything_is_written(
    trained_checkpoint: Path, onnx_dir: Path, tmp_path: Path, variants: str
) -> None:
    """onnx offers opsets onnxruntime has no QuantizeLinear for (onnx 1.23: 28, onnxruntime 1.32): the
    export once replaced the fp32 files there and then stopped in the int8 search, exit 2 naming a
    temporary file."""
    from ae_export.export import max_supported_opset
    from ae_export.variants import int8_runs_at

    opset = next((o for o in range(18, max_supported_opset() + 1) if not int8_runs_at(o)), None)
    if opset is None:
        pytest.skip("this onnxruntime runs int8 at every opset the installed onnx offers")
    stderr = _refused_before_anything_is_written(
        onnx_dir, trained_checkpoint, tmp_path, "--opset", str(opset), "--variants", variants
    )
    assert f"int8 at opset {opset}: onnxruntime" in stderr
    assert f"--opset {opset - 1} or lower, or --variants without int8" in stderr


@pytest.mark.parametrize("budget", ["int8=nan", "fp16=inf", "int8=-inf"])
def test_a_budget_that_is_not_a_finite_number_is_refused(
    trained_checkpoint: Path, onnx_dir: Path, tmp_path: Path, budget: str
) -> None:
    """int8=nan once ran the whole export: a search aiming at nan dB, then a gate that no loss passes
    (exit 1, "budget nan dB"); inf turned the search and the gate off. Bad input loses nothing."""
    stderr = _refused_before_anything_is_written(
        onnx_dir, trained_checkpoint, tmp_path, "--psnr-budget", budget, "--variants", "fp16,int8"
    )
    assert f"--psnr-budget {budget!r}: DB must be a finite number of dB" in stderr


def _refused_before_anything_is_written(onnx_dir: Path, checkpoint: Path, tmp_path: Path, *args: str) -> str:
    """Run ae-export with `args` over a copy of an export; assert exit 2 and every file unchanged; stderr."""
    out = tmp_path / "onnx"
    out.mkdir()
    for spec in SPECS.values():
        shutil.copy(onnx_dir / spec.file_name, out / spec.file_name)
    before = {p.name: sha256_file(p) for p in out.iterdir()}
    proc = run_cli(
        "ae_export.cli",
        *(
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            *args,
            "--batch-sizes",
            "7",
            "--providers",
            "cpu",
        ),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert {p.name: sha256_file(p) for p in out.iterdir()} == before
    return proc.stderr


def test_suffix_tables_agree() -> None:
    """The runtime's file-name table (torch-free) is the exporter's, variant for variant."""
    assert VARIANT_SUFFIXES == {name: spec.suffix for name, spec in VARIANTS.items()}


def test_manifest_lists_every_file_with_matching_sha256_and_size(variants_dir: Path) -> None:
    manifest = load_manifest(variants_dir)
    assert manifest is not None
    listed = {e["file"] for e in manifest["files"]}
    on_disk = {p.name for p in variants_dir.iterdir() if p.is_file()} - {MANIFEST_FILE}
    assert listed == on_disk
    for entry in manifest["files"]:
        if "sha256" in entry:
            path = variants_dir / entry["file"]
            assert entry["size"] == path.stat().st_size, entry["file"]
            assert entry["sha256"] == sha256_file(path), entry["file"]
    models = [e for e in manifest["files"] if e["kind"] == "model"]
    assert {(e["role"], e["variant"]) for e in models} == {(r, v) for r in SPECS for v in ALL_VARIANTS}
    for entry in models:
        assert entry["quality"]["loss_db"] <= entry["quality"]["budget_db"] + 1e-9, entry
        if entry["variant"] != "fp32":
            assert entry["parity"]["vs_torch"]["passed"] and entry["parity"]["vs_fp32"]["passed"]
        if entry["role"] == "denoiser":
            assert set(entry["throughput"]) == {"batch_1", "batch_256"}
    int8 = next(e for e in models if e["role"] == "denoiser" and e["variant"] == "int8")
    fp32 = next(e for e in models if e["role"] == "denoiser" and e["variant"] == "fp32")
    assert int8["size"] <= 0.4 * fp32["size"]
    assert (variants_dir / "required_operators.config").read_text().count("ai.onnx;") >= 2
    assert "NNAPI" in (variants_dir / "mobile_usability.txt").read_text()


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_variant_file_carries_its_metadata(variants_dir: Path, variant: str) -> None:
    """.ort files keep metadata_props: the runtime reads the same ae_export.* keys from either format."""
    path = resolve_model(variants_dir, "denoiser", variant)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["ae_export.role"]) == "denoiser"
    artifacts = json.loads(meta["ae_export.artifacts"])
    assert artifacts == {role: f"{role}{VARIANT_SUFFIXES[variant]}" for role in SPECS}
    if variant != "fp32":
        assert json.loads(meta["ae_export.variant"])["precision"] == VARIANTS[variant].precision


NO_TORCH = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    import numpy as np
    from runtimes import Denoiser

    denoiser = Denoiser(sys.argv[1], variant=sys.argv[2])
    image = (np.arange(28 * 28).reshape(28, 28) % 256).astype(np.uint8)
    out = denoiser(image)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert denoiser.decode(denoiser.encode(image)).shape == (28, 28)
    print(denoiser.path.name, denoiser._encoder.path.name, denoiser._decoder.path.name)
    """
)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_every_variant_loads_through_denoiser_without_torch(variants_dir: Path, variant: str) -> None:
    proc = run_script(NO_TORCH, str(variants_dir), variant)
    assert proc.returncode == 0, proc.stderr
    suffix = VARIANT_SUFFIXES[variant]
    assert proc.stdout.split() == [f"denoiser{suffix}", f"encoder{suffix}", f"decoder{suffix}"]


def test_missing_variant_names_the_variants_present(
    onnx_dir: Path, variants_dir: Path, tmp_path: Path
) -> None:
    from runtimes import Denoiser

    with pytest.raises(FileNotFoundError, match=r"variant 'int8'.*present: fp32"):
        Denoiser(onnx_dir, variant="int8")  # an export without variants (and without a manifest)
    with pytest.raises(
        FileNotFoundError, match=r"variant 'int4'.*present: fp32, fp16, int8, portable, fp32.ort"
    ):
        Denoiser(variants_dir, variant="int4")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    proc = run_cli("runtimes.cli", "--onnx", str(onnx_dir), "--variant", "fp16", str(tmp_path / "x.png"))
    assert proc.returncode == 2
    assert "variant 'fp16'" in proc.stderr and "present: fp32" in proc.stderr


@pytest.mark.parametrize("role", ["encoder", "decoder", "denoiser"])
def test_portable_twin_holds_torchs_graph_and_the_same_function(variants_dir: Path, role: str) -> None:
    """The twin has no Col2Im (ORT's CUDA provider lacks it) and computes what the fast file computes."""
    twin, fast = variants_dir / f"{role}.portable.onnx", variants_dir / f"{role}.onnx"
    twin_graph, fast_graph = (onnx.load(str(p)).graph for p in (twin, fast))
    assert "Col2Im" not in {n.op_type for n in twin_graph.node}
    assert not any(n.name.endswith(STACK_MARK) for n in twin_graph.node)
    if role != "encoder":  # the encoder has no transposed convolution
        assert "ConvTranspose" in {n.op_type for n in twin_graph.node}
        assert "Col2Im" in {n.op_type for n in fast_graph.node}
    if role != "decoder":  # the decoder has no narrow strided Conv to stack
        assert any(n.name.endswith(STACK_MARK) for n in fast_graph.node)
    meta = ort.InferenceSession(str(twin), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert json.loads(meta.custom_metadata_map["ae_export.graph"]) == "portable"
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (twin, fast))
    shape = [7 if not isinstance(d, int) else d for d in a.get_inputs()[0].shape]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    name = a.get_inputs()[0].name
    np.testing.assert_allclose(a.run(None, {name: x})[0], b.run(None, {name: x})[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("role", ["encoder", "decoder", "denoiser"])
def test_fp16_holds_the_portable_graph(variants_dir: Path, role: str) -> None:
    """fp16 is for GPUs and mobile accelerators, which have no Col2Im: it is converted from the twin."""
    half = onnx.load(str(variants_dir / f"{role}.fp16.onnx"))
    twin = onnx.load(str(variants_dir / f"{role}.portable.onnx"))
    assert [n.op_type for n in half.graph.node if n.op_type != "Cast"] == [n.op_type for n in twin.graph.node]
    meta = {p.key: p.value for p in half.metadata_props}
    assert json.loads(meta["ae_export.graph"]) == "portable"
    assert json.loads(meta["ae_export.artifacts"])[role] == f"{role}.fp16.onnx"


@pytest.mark.parametrize(
    ("variant", "provider", "present", "expected"),
    [
        ("fp32", "cuda", ["fp32", "portable"], True),
        ("fp32", "cpu", ["fp32", "portable"], False),
        ("fp32", "cuda", ["fp32"], False),  # a --graph portable export: fp32 is already portable
        ("int8", "cuda", ["fp32", "int8", "portable"], False),  # an explicit variant is what it says
    ],
)
def test_portable_twin_is_chosen_only_for_cuda_and_the_default_variant(
    variant: str, provider: str, present: list[str], expected: bool
) -> None:
    from runtimes.denoiser import use_portable_twin

    assert use_portable_twin(variant, provider, present) is expected


def test_auto_without_cuda_keeps_the_fast_graph(variants_dir: Path) -> None:
    from runtimes import Denoiser
    from runtimes.sessions import CUDA_EP

    if CUDA_EP in ort.get_available_providers():
        pytest.skip("this onnxruntime offers CUDA: 'auto' picks the twin there (the gpu test covers it)")
    denoiser = Denoiser(variants_dir)
    assert denoiser.path.name == "denoiser.onnx" and denoiser.metadata.graph == "fast"


@pytest.mark.gpu
def test_cuda_opens_the_portable_twin_and_warns_on_the_fast_graph(variants_dir: Path) -> None:
    from runtimes import Denoiser
    from runtimes.onnx_model import OnnxModel
    from runtimes.sessions import ProviderUnavailableError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the twin must open without the fast-graph warning
            denoiser = Denoiser(variants_dir, provider="cuda")
    except ProviderUnavailableError as err:
        pytest.skip(str(err))
    assert denoiser.provider == "cuda" and denoiser.path.name == "denoiser.portable.onnx"
    image = np.random.default_rng(0).random((28, 28), dtype=np.float32)
    assert denoiser.decode(denoiser.encode(image)).shape == (28, 28)
    assert denoiser._decoder is not None and denoiser._decoder.path.name == "decoder.portable.onnx"
    np.testing.assert_allclose(denoiser(image), Denoiser(variants_dir, provider="cpu")(image), atol=1e-4)
    with pytest.warns(RuntimeWarning, match="no CUDA kernel"):
        OnnxModel(variants_dir / "denoiser.onnx", provider="cuda")


def test_the_gpu_bench_times_the_default_file_the_twin_and_fp16(variants_dir: Path, tmp_path: Path) -> None:
    """The bench's CUDA rows cover what a GPU user may run: the default file, the twin and fp16."""
    from bench.inference import _cuda_files

    picked = [p.name for p in _cuda_files(variants_dir / "denoiser.onnx")]
    assert picked == ["denoiser.onnx", "denoiser.portable.onnx", "denoiser.fp16.onnx"]
    shutil.copy(variants_dir / "denoiser.onnx", tmp_path / "denoiser.onnx")  # a folder of one file
    assert _cuda_files(tmp_path / "denoiser.onnx") == [tmp_path / "denoiser.onnx"]


@pytest.mark.gpu
def test_every_node_of_the_gpu_files_runs_on_cuda(variants_dir: Path, tmp_path: Path) -> None:
    """What `make gpu-check`'s placement step checks: ORT moves a node with no CUDA kernel to the CPU."""
    from ae_export.gpu_check import cpu_nodes
    from runtimes.sessions import CUDA_EP

    if CUDA_EP not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    found = cpu_nodes(variants_dir, tmp_path)
    assert {"denoiser.portable.onnx", "denoiser.fp16.onnx", "decoder.fp16.onnx"} <= set(found)
    assert found == {name: [] for name in found}


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_triton_gpu_instances_serve_the_portable_twins(variants_dir: Path, tmp_path: Path, kind: str) -> None:
    out = tmp_path / "repo"
    proc = run_cli(
        "ae_export.cli", "triton", "--onnx-dir", str(variants_dir), "--out", str(out), "--kind", kind
    )
    assert proc.returncode == 0, proc.stderr
    for role in SPECS:
        served = (out / role / "1" / "model.onnx").read_bytes()
        twin = f"{role}.portable.onnx" if kind == "gpu" else f"{role}.onnx"
        assert served == (variants_dir / twin).read_bytes(), role
        assert (out / f"{role}_portable").is_dir() is (kind == "cpu")  # never served twice
    assert run_cli("ae_export.cli", "triton", "--check", str(out)).returncode == 0


def test_portable_export_gets_no_twin(
    trained_checkpoint: Path, portable_onnx_dir: Path, fmnist, tmp_path: Path
) -> None:
    """With --graph portable the fp32 files are the portable graph already: no second copy is written."""
    from ae_export.deploy import export_variants
    from train.checkpoint import load_checkpoint

    folder = tmp_path / "onnx"
    shutil.copytree(portable_onnx_dir, folder)  # export_variants writes its manifest into the folder
    lines: list[str] = []
    result = export_variants(
        load_checkpoint(trained_checkpoint),
        folder,
        ["portable"],
        fmnist,
        parity_images=None,
        batch_sizes=(1,),
        log=lines.append,
    )
    assert result.outcomes == [] and not list(folder.glob("*.portable.onnx"))
    assert "portable: not written: the fp32 files already hold the portable graph" in lines


def test_fp16_alone_is_converted_from_the_portable_graph_without_writing_it(
    trained_checkpoint: Path, onnx_dir: Path, fmnist, tmp_path: Path
) -> None:
    """`--variants fp16` on a fast export: fp16 still comes from the portable graph, no twin is written."""
    from ae_export.deploy import export_variants
    from ae_export.fastgraph import graph_kind
    from train.checkpoint import load_checkpoint

    folder = tmp_path / "onnx"
    folder.mkdir()
    for spec in SPECS.values():
        shutil.copy(onnx_dir / spec.file_name, folder / spec.file_name)
    result = export_variants(
        load_checkpoint(trained_checkpoint),
        folder,
        ["fp16"],
        fmnist,
        budgets=WIDE_BUDGETS,
        parity_images=None,
        batch_sizes=(1,),
        log=lambda _line: None,
    )
    assert [o.variant.name for o in result.outcomes] == ["fp16"] and not result.rejected
    assert not list(folder.glob("*.portable.onnx"))
    assert graph_kind(onnx.load(str(folder / "denoiser.onnx"))) == "fast"
    assert graph_kind(onnx.load(str(folder / "denoiser.fp16.onnx"))) == "portable"


def test_denoise_cli_with_a_variant(variants_dir: Path, tmp_path: Path) -> None:
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(tmp_path / "x.png")
    proc = run_cli(
        "runtimes.cli", "--onnx", str(variants_dir), "--variant", "int8.ort", str(tmp_path / "x.png")
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "x_denoised.png").is_file()


def test_changed_file_is_refused_by_the_manifest(variants_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(variants_dir, folder)
    path = folder / "denoiser.fp16.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="does not match"):
        resolve_model(folder, "denoiser", "fp16")


@pytest.mark.parametrize(
    ("variant", "role"), [("fp32", "encoder"), ("fp32", "decoder"), ("int8.ort", "encoder")]
)
def test_a_replaced_sibling_is_refused_by_the_manifest(
    variants_dir: Path, tmp_path: Path, variant: str, role: str
) -> None:
    """A folder's encoder or decoder is checked against its manifest like the denoiser: one replaced by
    another variant's file (a real, loadable model of the same role) gave that model's latents or images
    from encode/decode in silence. The file opened by its path still runs, as the message says."""
    from runtimes import Denoiser

    folder = tmp_path / "copy"
    shutil.copytree(variants_dir, folder)
    sibling = folder / f"{role}{VARIANT_SUFFIXES[variant]}"
    other = "fp16" if variant == "fp32" else "fp32.ort"
    shutil.copy(folder / f"{role}{VARIANT_SUFFIXES[other]}", sibling)
    denoiser = Denoiser(folder, provider="cpu", variant=variant, warmup=False)
    image = np.full((28, 28), 0.5, np.float32)
    denoiser(image)  # the denoiser itself matches its manifest entry
    latent_dim = denoiser.metadata.model_config["latent_dim"]
    with pytest.raises(ManifestError, match=rf"{sibling.name}: does not match .*manifest\.json"):
        denoiser.encode(image) if role == "encoder" else denoiser.decode(np.zeros(latent_dim, np.float32))
    by_path = Denoiser(folder / f"denoiser{VARIANT_SUFFIXES[variant]}", provider="cpu", warmup=False)
    assert by_path.encode(image).shape == (latent_dim,)


@pytest.mark.parametrize(("key", "value"), [("sha256", None), ("size", "12 KiB"), ("variant", None)])
def test_a_damaged_manifest_entry_is_a_clear_error(
    variants_dir: Path, tmp_path: Path, key: str, value: object
) -> None:
    """A model entry without its sha256 (or with a size that is not a number) was a KeyError traceback
    from ae-denoise and Denoiser; it is a ManifestError naming the file and the key, exit 2."""
    folder = tmp_path / "copy"
    shutil.copytree(variants_dir, folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    for entry in manifest["files"]:
        if entry.get("file") == "denoiser.int8.onnx":
            entry.pop(key) if value is None else entry.update({key: value})
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(tmp_path / "x.png")
    proc = run_cli("runtimes.cli", "--onnx", str(folder), "--variant", "int8", str(tmp_path / "x.png"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"model entry 'denoiser.int8.onnx' lacks a valid {key}" in proc.stderr
    assert not (tmp_path / "x_denoised.png").exists()


def _int8_weights(path: Path) -> list[np.ndarray]:
    proto = onnx.load(str(path))
    return [
        onnx.numpy_helper.to_array(i) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8
    ]


@pytest.mark.parametrize("role", list(SPECS))
def test_int8_weights_use_seven_bits_so_no_cpu_saturates_them(variants_dir: Path, role: str) -> None:
    """uint8 x int8 products summed in pairs into int16 (VPMADDUBSW, x86 without VNNI) overflow with 8-bit
    weights; 255 * 64 * 2 fits."""
    weights = _int8_weights(variants_dir / VARIANTS["int8"].file_name(role))
    assert weights, "no int8 weights in the int8 file"
    assert all(int(np.abs(w.astype(np.int16)).max()) <= 64 for w in weights)


@pytest.mark.parametrize("role", list(SPECS))
def test_int8_file_computes_on_this_cpu_what_its_qdq_graph_says(
    variants_dir: Path, onnx_dir: Path, fmnist, role: str
) -> None:
    """ORT's fused int8 kernels against the same file with optimizations off (each QDQ pair computed in
    float, which cannot saturate): only rounding may differ. On an AVX2 CPU, 8-bit weights were 2.6e-2 mean
    abs apart on the default model's denoiser; 7-bit weights 5e-6."""
    images = fmnist.val.images[:256].numpy().astype(np.float32)[:, None] / 255  # (256, 1, 28, 28)
    if SPECS[role].input_kind == "latent":
        encoder = ort.InferenceSession(str(onnx_dir / "encoder.onnx"), providers=["CPUExecutionProvider"])
        images = encoder.run(None, {encoder.get_inputs()[0].name: images})[0]  # (256, latent)
    outputs = []
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        path = variants_dir / VARIANTS["int8"].file_name(role)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: images})[0])
    fused, reference = outputs
    assert float(np.abs(fused - reference).mean()) < 1e-3


def _negate_first_int8_weight(path: Path) -> None:
    """Flip the sign of the first quantized weight tensor: a real corruption, the file stays valid ONNX."""
    proto = onnx.load(str(path))
    init = next(
        i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4
    )
    values = onnx.numpy_helper.to_array(init)
    init.CopyFrom(
        onnx.numpy_helper.from_array(
            np.negative(values.astype(np.int16)).clip(-127, 127).astype(np.int8), init.name
        )
    )
    onnx.save(proto, str(path))


@pytest.mark.slow
def test_tampered_variant_fails_parity(trained_checkpoint: Path, variants_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(variants_dir, folder)
    _negate_first_int8_weight(folder / "denoiser.int8.onnx")
    proc = run_cli(
        "ae_export.cli",
        "parity",
        "--checkpoint",
        str(trained_checkpoint),
        "--onnx-dir",
        str(folder),
        "--batch-sizes",
        "7",
        "--providers",
        "cpu",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "parity FAILED: denoiser.int8.onnx on cpu at batch 7" in proc.stderr
    assert "integrity FAILED" in proc.stderr and "denoiser.int8.onnx" in proc.stderr
    report = json.loads((folder / "parity.json").read_text())
    assert not report["passed"]


@pytest.mark.parametrize("changed", ["decoder.fp16.ort", "mobile_usability.txt"])
def test_parity_never_says_pass_for_a_folder_that_fails_its_integrity(
    trained_checkpoint, variants_dir, tmp_path, changed
) -> None:
    """A file changed after export whose numbers still pass (or that holds none) made `ae-export parity`
    print 'overall: PASS' and write parity.json with "passed": true, then report the integrity failure and
    exit 1: every table and the report now count it."""
    folder = tmp_path / "onnx"
    shutil.copytree(variants_dir, folder)
    with open(folder / changed, "ab") as handle:
        handle.write(b"\n")
    args = ("--checkpoint", str(trained_checkpoint), "--onnx-dir", str(folder), "--batch-sizes", "7")
    proc = run_cli("ae_export.cli", "parity", *args, "--providers", "cpu")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "overall: PASS" not in proc.stdout
    assert "overall: FAIL" in proc.stdout and "1 file(s) differ from the manifest" in proc.stdout
    assert f"integrity FAILED: {folder / changed}: differs from manifest.json" in proc.stderr
    assert "parity FAILED" not in proc.stderr
    report = json.loads((folder / "parity.json").read_text())
    assert report["passed"] is False and len(report["integrity"]) == 1
    assert all(r["passed"] for r in report["results"])


@pytest.mark.slow
def test_variant_over_budget_is_reported_and_not_written(trained_checkpoint: Path, tmp_path: Path) -> None:
    """fp16 cannot gain 1 dB over fp32: with that budget it must be rejected, and the rest still written."""
    out = tmp_path / "onnx"
    proc = run_cli(
        "ae_export.cli",
        "--checkpoint",
        str(trained_checkpoint),
        "--out",
        str(out),
        "--variants",
        "fp16,ort",
        "--psnr-budget",
        "fp16=-1",
        "--batch-sizes",
        "7",
        "--providers",
        "cpu",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "variant fp16 not written" in proc.stderr and "budget -1.000 dB" in proc.stderr
    assert not list(out.glob("*.fp16.*"))
    assert {p.name for p in out.glob("*.ort")} == {"encoder.ort", "decoder.ort", "denoiser.ort"}
    manifest = load_manifest(out)
    assert [r["variant"] for r in manifest["rejected"]] == ["fp16"]
    assert {e["variant"] for e in manifest["files"] if e["kind"] == "model"} == {"fp32", "fp32.ort"}
    # `ae-export parity` (what `make parity` runs) passes on what was written, the .ort files included.
    check = run_cli(
        "ae_export.cli",
        *("parity", "--checkpoint", str(trained_checkpoint), "--onnx-dir", str(out)),
        *("--batch-sizes", "7", "--providers", "cpu"),
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "denoiser.ort" in check.stdout and "integrity FAILED" not in check.stderr
