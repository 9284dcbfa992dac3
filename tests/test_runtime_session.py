"""runtimes.denoiser / onnx_model / sessions: real onnxruntime sessions on the exported model, no mocks.

Covers the array contract (layouts, kinds, validation errors), chunking, encode/decode through the sibling
files, model-file errors and provider selection.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from runtimes.denoiser import Denoiser
from runtimes.layout import prepare_images
from runtimes.metadata import MetadataError
from runtimes.onnx_model import OnnxModel
from runtimes.sessions import (
    InvalidModelError,
    ProviderUnavailableError,
    open_session,
    physical_cores,
    session_options,
)

TIGHT = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def denoiser(onnx_dir: Path) -> Denoiser:
    return Denoiser(onnx_dir / "denoiser.onnx", provider="cpu")


@pytest.fixture(scope="module")
def images(fmnist_test: np.ndarray) -> np.ndarray:
    """(64, 28, 28) float32 noisy real images in [0, 1]."""
    clean = fmnist_test[:64].astype(np.float32) / 255.0
    rng = np.random.default_rng(0)
    return np.clip(clean + 0.3 * rng.standard_normal(clean.shape, dtype=np.float32), 0, 1).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-12))


def test_configured_from_model(denoiser: Denoiser, onnx_dir: Path) -> None:
    model = denoiser.model
    session = ort.InferenceSession(str(onnx_dir / "denoiser.onnx"), providers=["CPUExecutionProvider"])
    assert model.input_name == session.get_inputs()[0].name
    assert model.output_name == session.get_outputs()[0].name
    assert model.input_sample_shape == (1, 28, 28)
    assert denoiser.image_shape == (28, 28)
    assert denoiser.metadata.role == "denoiser"
    assert denoiser.provider == "cpu" and model.providers == ["CPUExecutionProvider"]
    assert model.threads == physical_cores()


def test_folder_path_opens_denoiser(onnx_dir: Path) -> None:
    assert Denoiser(onnx_dir, provider="cpu", warmup=False).path == onnx_dir / "denoiser.onnx"


def test_denoises_real_images(denoiser: Denoiser, fmnist_test: np.ndarray, images: np.ndarray) -> None:
    clean = fmnist_test[:64].astype(np.float32) / 255.0
    out = denoiser(images)
    assert psnr(out, clean).mean() > psnr(images, clean).mean() + 1.0


@pytest.mark.parametrize("kind", ["float32", "uint8"])
@pytest.mark.parametrize("form", ["nchw", "nhw", "hw"])
def test_layout_and_kind_round_trip(denoiser: Denoiser, images: np.ndarray, form: str, kind: str) -> None:
    base = images[:5]  # (5, 28, 28)
    x = {"nchw": base[:, None], "nhw": base, "hw": base[0]}[form]
    if kind == "uint8":
        x = np.rint(x * 255).astype(np.uint8)
    out = denoiser.denoise(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    # The uint8 path is the float path on x / 255, rounded: same model, same numbers.
    reference = denoiser.denoise((x.astype(np.float32) / 255) if kind == "uint8" else x)
    if kind == "uint8":
        np.testing.assert_array_equal(out, np.rint(reference * 255).astype(np.uint8))
    else:
        np.testing.assert_allclose(out, reference, **TIGHT)
        assert out.min() >= 0 and out.max() <= 1


def test_float_input_is_not_copied(images: np.ndarray) -> None:
    batch, _ = prepare_images(images, (28, 28))
    assert np.shares_memory(batch, images)


def test_input_not_modified(denoiser: Denoiser, images: np.ndarray) -> None:
    before = images.copy()
    denoiser(images)
    np.testing.assert_array_equal(images, before)


def _nan() -> np.ndarray:
    x = np.full((2, 28, 28), 0.5, np.float32)
    x[1, 3, 4] = np.nan
    return x


def _inf(sign: float) -> np.ndarray:
    x = np.full((28, 28), 0.5, np.float32)
    x[0, 0] = sign * np.inf
    return x


BAD_ARRAYS = {
    "float64": (lambda: np.zeros((2, 28, 28)), r"float32.*uint8.*got float64"),
    "int32": (lambda: np.zeros((2, 28, 28), np.int32), r"got int32"),
    "bool": (lambda: np.zeros((28, 28), bool), r"got bool"),
    "list": (lambda: [[0.0] * 28] * 28, r"got list"),
    "shape_hw": (lambda: np.zeros((28, 27), np.float32), r"\(N, 1, 28, 28\).*got shape \(28, 27\)"),
    "shape_channels": (lambda: np.zeros((2, 3, 28, 28), np.float32), r"got shape \(2, 3, 28, 28\)"),
    "shape_5d": (lambda: np.zeros((1, 1, 1, 28, 28), np.float32), r"got shape \(1, 1, 1, 28, 28\)"),
    "shape_1d": (lambda: np.zeros(784, np.float32), r"got shape \(784,\)"),
    "nan": (_nan, r"finite.*1 NaN"),
    "inf": (lambda: _inf(1.0), r"finite.*1 Inf"),
    "neg_inf": (lambda: _inf(-1.0), r"finite.*1 Inf"),
    "below_range": (lambda: np.full((28, 28), -0.1, np.float32), r"\[0, 1\].*got values in \[-0.1"),
    "above_range": (lambda: np.full((3, 28, 28), 1.5, np.float32), r"\[0, 1\].*1.5\]"),
    "uint8_scale_as_float": (lambda: np.full((28, 28), 255.0, np.float32), r"\[0, 1\].*255\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_bad_arrays_raise_value_error(denoiser: Denoiser, case: str) -> None:
    make, pattern = BAD_ARRAYS[case]
    with pytest.raises(ValueError, match=pattern):
        denoiser.denoise(make())


@pytest.mark.parametrize(
    ("dtype", "scale", "conversion"),
    [
        ("float64", 1, ".astype(np.float32);"),
        (">f4", 1, ".astype(np.float32);"),
        ("uint16", 65535, "/ 65535"),
    ],
)
def test_dtype_error_names_the_conversion_that_keeps_the_image(
    images: np.ndarray, dtype: str, scale: int, conversion: str
) -> None:
    """Every dtype was told `.astype(np.float32) / 255`: float64 images in [0, 1] converted so came out
    near-black and passed the range check, 16-bit ones came out 0-257 and were refused next."""
    original = images[:2]
    given = (original * scale).round().astype(dtype) if scale > 1 else original.astype(dtype)
    with pytest.raises(ValueError, match=rf"got {dtype} \(.*{re.escape(conversion)}"):
        prepare_images(given, (28, 28))
    converted = given.astype(np.float32) / scale if scale > 1 else given.astype(np.float32)
    batch, _layout = prepare_images(converted, (28, 28))
    np.testing.assert_allclose(batch[:, 0], original, atol=1 / 65535)


@pytest.mark.parametrize("n", [1, 7, 8, 50])
def test_chunking_matches_one_call(onnx_dir: Path, images: np.ndarray, n: int) -> None:
    small = Denoiser(onnx_dir, provider="cpu", max_batch=7)
    large = Denoiser(onnx_dir, provider="cpu", max_batch=1000)
    x = images[:n]
    np.testing.assert_allclose(small(x), large(x), **TIGHT)


def test_empty_batch(denoiser: Denoiser) -> None:
    out = denoiser(np.zeros((0, 28, 28), np.uint8))
    assert out.shape == (0, 28, 28) and out.dtype == np.uint8


def test_encode_decode_siblings(denoiser: Denoiser, images: np.ndarray) -> None:
    latents = denoiser.encode(images[:10])
    latent_dim = denoiser.metadata.model_config["latent_dim"]
    assert latents.shape == (10, latent_dim) and latents.dtype == np.float32
    assert denoiser.encode(images[0]).shape == (latent_dim,)
    decoded = denoiser.decode(latents)  # (10, 1, 28, 28)
    assert decoded.shape == (10, 1, 28, 28)
    assert denoiser.decode(latents[0]).shape == (28, 28)
    # denoiser.onnx is decoder(encoder(x)) in one graph
    np.testing.assert_allclose(decoded, denoiser(images[:10, None]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "latents, pattern",
    [
        (np.zeros((2, 3), np.float32), r"latents of shape \(N, 4\)"),
        (np.zeros((2, 4)), r"float32 latents"),
        (np.full((2, 4), np.nan, np.float32), r"finite"),
    ],
    ids=["shape", "dtype", "nan"],
)
def test_decode_rejects_bad_latents(denoiser: Denoiser, latents: np.ndarray, pattern: str) -> None:
    if denoiser.metadata.model_config["latent_dim"] != 4:
        pytest.skip("patterns assume latent_dim 4")
    with pytest.raises(ValueError, match=pattern):
        denoiser.decode(latents)


def test_missing_sibling_named(onnx_dir: Path, tmp_path: Path, images: np.ndarray) -> None:
    shutil.copy(onnx_dir / "denoiser.onnx", tmp_path / "denoiser.onnx")
    alone = Denoiser(tmp_path, provider="cpu", warmup=False)
    alone(images[:1])  # the denoiser itself needs no sibling
    with pytest.raises(FileNotFoundError, match=r"encoder file not found: .*encoder\.onnx"):
        alone.encode(images[:1])


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.onnx")):
        Denoiser(tmp_path / "nope.onnx")


@pytest.mark.parametrize(
    "content, pattern",
    [(b"", r"cannot load it as an ONNX model"), (b"not a model at all\n" * 10, r"cannot load it as an ONNX")],
    ids=["zero_bytes", "text"],
)
def test_invalid_model_file(tmp_path: Path, content: bytes, pattern: str) -> None:
    path = tmp_path / "denoiser.onnx"
    path.write_bytes(content)
    with pytest.raises(InvalidModelError, match=pattern) as info:
        Denoiser(path)
    assert info.value.path == path and str(path) in str(info.value)


def test_onnx_without_ae_metadata(onnx_dir: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(onnx_dir / "denoiser.onnx"))
    del proto.metadata_props[:]
    path = tmp_path / "plain.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(InvalidModelError, match=r"plain\.onnx.*not an ae-export model") as info:
        Denoiser(path)
    assert isinstance(info.value.__cause__, MetadataError)


def _with_metadata(onnx_dir: Path, tmp_path: Path, key: str, value: str | Callable[[str], str]) -> Path:
    """A copy of the export's denoiser.onnx with metadata `key` set to `value` (added if absent; a
    callable gets the current text and returns the new one), for the tampered-file tests below."""
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(onnx_dir / "denoiser.onnx"))
    entry = next((p for p in proto.metadata_props if p.key == key), None)
    if entry is None:
        entry = proto.metadata_props.add()
        entry.key = key
    entry.value = value(entry.value) if callable(value) else value
    path = tmp_path / "denoiser.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("value", ['{"radius": -1}', '{"radius": 2.5}', '{"radius": true}', "7", "{}"])
def test_malformed_receptive_field_refused(onnx_dir: Path, tmp_path: Path, value: str) -> None:
    """A radius the runtime's halo tiles would trust must be a whole number of pixels, or absent."""
    path = _with_metadata(onnx_dir, tmp_path, "ae_export.receptive_field", value)
    with pytest.raises(InvalidModelError, match=r"receptive_field.*must be \{'radius': int >= 0\}"):
        Denoiser(path, warmup=False)


@pytest.mark.parametrize(
    "key, value",
    [
        ("ae_export.artifacts", '["encoder.onnx"]'),
        ("ae_export.input", '"input"'),
        ("ae_export.output", "[1, 28, 28]"),
        ("ae_export.model_config", "null"),
        ("ae_export.noise", "[0.3]"),
        ("ae_export.tolerance", "1e-5"),
    ],
)
def test_metadata_of_the_wrong_json_type_refused(
    onnx_dir: Path, tmp_path: Path, key: str, value: str
) -> None:
    """Each object-valued key must hold an object (the optional ones may be null): a list or a string
    there was an AttributeError traceback, not an InvalidModelError naming the key."""
    path = _with_metadata(onnx_dir, tmp_path, key, value)
    with pytest.raises(InvalidModelError, match=rf"metadata '{key}' must be a JSON object"):
        Denoiser(path, warmup=False)


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000 + "]" * 100_000, "1" * 5000],
    ids=["nested-100000-deep", "5000-digit-integer"],
)
def test_json_that_json_loads_refuses_without_a_decode_error_is_an_invalid_model(
    onnx_dir: Path, tmp_path: Path, text: str
) -> None:
    """json.loads raises RecursionError for deep nesting and a bare ValueError for an integer of over
    4300 digits, neither a JSONDecodeError: both were tracebacks (exit 1 from ae-denoise)."""
    path = _with_metadata(onnx_dir, tmp_path, "ae_export.training", text)
    with pytest.raises(InvalidModelError, match=r"metadata 'ae_export.training' is not valid JSON"):
        Denoiser(path, warmup=False)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"size_multiple": 0}, r"size_multiple must be an int >= 1; got 0"),
        ({"size_multiple": -8}, r"size_multiple must be an int >= 1; got -8"),
        ({"size_multiple": 4.9}, r"size_multiple must be an int >= 1; got 4\.9"),
        ({"size_multiple": True}, r"size_multiple must be an int >= 1; got True"),
        ({"shape": ["batch", 1, 28.9, 28]}, r"neither names nor ints >= 1: \[28\.9\]"),
        ({"shape": ["batch", True, 28, 28]}, r"neither names nor ints >= 1: \[True\]"),
    ],
    ids=["multiple-0", "multiple-negative", "multiple-float", "multiple-bool", "axis-float", "axis-bool"],
)
def test_sizes_in_metadata_must_be_positive_ints(
    onnx_dir: Path, tmp_path: Path, edit: dict, message: str
) -> None:
    """int() used to turn 28.9 into 28 and true into 1, and max(1, ...) a size_multiple of 0 or -8 into 1:
    a hand-edited file was accepted as something it does not say."""

    def edited(text: str) -> str:
        return json.dumps({**json.loads(text), **edit})

    path = _with_metadata(onnx_dir, tmp_path, "ae_export.input", edited)
    with pytest.raises(InvalidModelError, match=rf"malformed ae_export metadata: .*{message}"):
        Denoiser(path, warmup=False)


def test_wrong_role(onnx_dir: Path) -> None:
    with pytest.raises(
        InvalidModelError, match=r"encoder\.onnx: is an ae-export encoder model; expected the denoiser"
    ):
        Denoiser(onnx_dir / "encoder.onnx")


def test_folder_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="not a regular file"):
        OnnxModel(tmp_path)


@pytest.mark.parametrize("provider", ["gpu", "CUDA", ""])
def test_unknown_provider_names_choices(onnx_dir: Path, provider: str) -> None:
    with pytest.raises(ValueError, match=r"one of auto, cpu, cuda"):
        Denoiser(onnx_dir, provider=provider)  # type: ignore[arg-type]


def test_conv_search_names_choices_and_reaches_the_cuda_options(onnx_dir: Path) -> None:
    """Checked on every machine (not only where CUDA starts), and mapped onto ORT's CUDA option."""
    from runtimes.sessions import DEFAULT_CONV_SEARCH, cuda_options

    with pytest.raises(ValueError, match=r"one of heuristic, exhaustive, default; got 'fast'"):
        Denoiser(onnx_dir, provider="cpu", conv_search="fast")  # type: ignore[arg-type]
    assert cuda_options("exhaustive") == {"use_tf32": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}
    assert cuda_options()["cudnn_conv_algo_search"] == DEFAULT_CONV_SEARCH.upper() == "HEURISTIC"
    denoiser = Denoiser(onnx_dir, provider="cpu", conv_search="exhaustive", warmup=False)
    assert denoiser.model.conv_search == "exhaustive"


@pytest.mark.parametrize("role", ["denoiser", "encoder"])
@pytest.mark.parametrize("kind", ["list", "tuple", "None"])
def test_onnx_model_run_names_what_is_not_an_array(onnx_dir: Path, role: str, kind: str) -> None:
    """OnnxModel.run read `.shape` first: a list of images (what `images.tolist()` gives) was an
    AttributeError traceback, where the wrong dtype or shape is a ValueError saying what it takes."""
    model = OnnxModel(onnx_dir / f"{role}.onnx", provider="cpu", warmup=False)
    image = np.zeros((1, 1, 28, 28), np.float32)
    bad = {"list": image.tolist(), "tuple": (image,), "None": None}[kind]
    expected = rf"^{role}\.onnx: expected a float32 numpy array of shape \(B, \*\(1, 28, 28\)\); got "
    with pytest.raises(
        ValueError, match=expected + {"list": "list", "tuple": "tuple", "None": "NoneType"}[kind]
    ):
        model.run(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_threads_and_max_batch(onnx_dir: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="threads"):
        Denoiser(onnx_dir, threads=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch"):
        Denoiser(onnx_dir, max_batch=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("number", [np.int64, np.int32, np.uint8], ids=lambda t: t.__name__)
def test_numpy_integers_are_counts_too(onnx_dir: Path, images: np.ndarray, number: type) -> None:
    """threads=np.int64(1) (from np.arange, a config read with numpy) was refused as not 'a positive
    int', and so were max_batch and tile_pixels; they are taken as the Python ints they equal."""
    denoiser = Denoiser(
        onnx_dir, provider="cpu", threads=number(1), max_batch=number(8), tile_pixels=number(64), warmup=False
    )
    assert (denoiser.model.threads, denoiser.model.max_batch, denoiser.tile_pixels) == (1, 8, 64)
    assert all(
        type(v) is int for v in (denoiser.model.threads, denoiser.model.max_batch, denoiser.tile_pixels)
    )
    with Denoiser(onnx_dir, provider="cpu", threads=1, warmup=False) as plain:
        np.testing.assert_array_equal(denoiser(images[:20]), plain(images[:20]))
    with pytest.raises(
        ValueError, match=r"^threads must be a positive int or None \(= physical cores\); got"
    ):
        Denoiser(onnx_dir, provider="cpu", threads=number(0))


@pytest.mark.parametrize("flag", ["spinning", "warmup"])
def test_bool_options_refuse_other_values(onnx_dir: Path, flag: str) -> None:
    """spinning="no" turned spinning on (the string is truthy), the opposite of what it says."""
    with pytest.raises(ValueError, match=rf"^{flag} must be True or False; got 'no'$"):
        Denoiser(onnx_dir, provider="cpu", **{flag: "no"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spinning": "no"}, r"spinning must be True or False; got 'no'"),
        ({"spinning": 0.0}, r"spinning must be True or False; got 0\.0"),
        ({"threads": 0}, r"threads must be a positive int; got 0"),
        ({"threads": -1}, r"threads must be a positive int; got -1"),
        ({"threads": 2.5}, r"threads must be a positive int; got 2\.5"),
    ],
    ids=["spinning-no", "spinning-float", "threads-0", "threads-neg", "threads-float"],
)
def test_open_session_checks_its_options(onnx_dir: Path, kwargs: dict[str, object], message: str) -> None:
    """open_session, the one session opener (exported by runtimes), took spinning="no" by its truth
    value and turned spinning on, took threads=0 or -1 to onnxruntime as they were, and threads=2.5 was
    a pybind11 TypeError listing signatures: the checks Denoiser and OnnxModel make now live here."""
    with pytest.raises(ValueError, match=rf"^{message}$"):
        open_session(onnx_dir / "denoiser.onnx", "cpu", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"^{message}$"):
        session_options(**{"threads": 1, "spinning": True, **kwargs})  # type: ignore[arg-type]
    session, provider = open_session(onnx_dir / "denoiser.onnx", "cpu", threads=np.int64(1), spinning=False)
    assert provider == "cpu" and session.get_session_options().intra_op_num_threads == 1


def _cuda_error(onnx_dir: Path) -> ProviderUnavailableError | None:
    try:
        Denoiser(onnx_dir, provider="cuda")
    except ProviderUnavailableError as err:
        return err
    return None


def test_cuda_absent_is_a_clear_error(onnx_dir: Path) -> None:
    err = _cuda_error(onnx_dir)
    if err is None:
        pytest.skip("CUDA starts on this machine; the no-CUDA error cannot be exercised")
    message = str(err)
    assert "CUDA execution provider not available" in message
    assert "onnxruntime-gpu" in message and "'cpu'" in message


def test_auto_never_reports_a_fallback_as_cuda(onnx_dir: Path) -> None:
    auto = Denoiser(onnx_dir, provider="auto")
    assert auto.provider == ("cuda" if auto.model.providers[0] == "CUDAExecutionProvider" else "cpu")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert auto.provider == "cpu"


@pytest.mark.gpu
def test_cuda_matches_cpu(onnx_dir: Path, denoiser: Denoiser, images: np.ndarray) -> None:
    err = _cuda_error(onnx_dir)
    if err is not None:
        pytest.skip(str(err))  # "CUDA execution provider not available: <why>"
    cuda = Denoiser(onnx_dir, provider="cuda")
    assert cuda.provider == "cuda" and cuda.model.providers[0] == "CUDAExecutionProvider"
    np.testing.assert_allclose(cuda(images), denoiser(images), rtol=1e-4, atol=1e-4)


def test_physical_cores_within_affinity() -> None:
    cores = physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
