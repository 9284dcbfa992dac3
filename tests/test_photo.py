"""Photographs: the fully convolutional model on any size, its export and parity, and no silent damage.

Real parts only: a tiny fcn model trained a few steps on scikit-image's bundled photographs, exported by
ae_export with parity at several sizes, served by the torch-free runtime and by `ae-denoise` as a
subprocess; the lecture's 28x28 model refusing a photograph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from tests.helpers import run_cli, run_script, train_tiny_photo_model

CLI = "runtimes.cli"
MIXED_SIZES = [(37, 53), (64, 96), (64, 96), (120, 90), (28, 28)]  # (H, W); two of one size: one batch


def test_fcn_runs_on_odd_sizes_and_has_no_linear() -> None:
    from train.fcn import denoise_any_size
    from train.model import ModelConfig, build_model

    model = build_model(ModelConfig(arch="fcn", fcn_width=4, fcn_levels=3, fcn_depth=1)).eval()
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    for height, width in [(1, 1), (5, 7), (28, 28), (37, 53), (64, 96)]:
        x = torch.rand(2, 1, height, width)
        with torch.no_grad():
            y = denoise_any_size(model, x)
        assert y.shape == x.shape, (height, width)
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_checkpoint_configs_without_arch_are_the_lecture_model() -> None:
    from train.model import DenoisingAutoencoder, ModelConfig, build_model

    config = ModelConfig.from_dict({"latent_dim": 4, "hidden_dim": 128})
    assert config.arch == "lecture"
    assert isinstance(build_model(config), DenoisingAutoencoder)
    with pytest.raises(ValueError, match="valid: lecture, spatial, fcn"):
        ModelConfig(arch="unet")


def test_photo_split_is_fixed_and_disjoint() -> None:
    from train.photos import TRAIN_PHOTOS, VALIDATION_PHOTOS, bundled_photos

    assert list(VALIDATION_PHOTOS) == ["camera", "coins", "astronaut", "clock", "chelsea"]
    assert not set(TRAIN_PHOTOS.values()) & set(VALIDATION_PHOTOS.values())
    val = bundled_photos("val")
    assert [image.ndim for image in val.images] == [2] * 5 and val.images[0].shape == (512, 512)


def test_precision_auto_follows_the_hardware_and_bad_choices_name_the_valid_ones() -> None:
    from train.photo_train import PhotoTrainConfig, native_bf16, step_precision

    cpu = torch.device("cpu")
    assert step_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    assert step_precision("fp32", cpu) == "fp32" and step_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        PhotoTrainConfig(precision="fp16")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_precision_keeps_an_fp32_checkpoint_that_reloads_exactly(
    precision: str, tmp_path: Path
) -> None:
    """bf16 autocast and channels_last are training-step details: the checkpoint holds plain contiguous
    fp32 tensors equal to the trained ones, records the arithmetic used, and rebuilds a working model."""
    from train.checkpoint import load_checkpoint
    from train.fcn import denoise_any_size
    from train.model import build_model
    from train.photo_train import PhotoTrainConfig, train_photos

    config = PhotoTrainConfig(
        steps=4, batch_size=2, crop=32, fcn_width=4, fcn_levels=2, eval_every=2,
        precision=precision, out=str(tmp_path),
    )  # fmt: skip
    trained = train_photos(config, log=lambda _line: None)
    assert [row["precision"] for row in trained.metrics] == [precision, precision]
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in loaded.model_state.values())
    assert all(torch.equal(loaded.model_state[k], v) for k, v in trained.model_state.items())
    model = build_model(loaded.model_config).eval()
    model.load_state_dict(loaded.model_state)
    assert loaded.train_config["precision"] == precision
    x = torch.rand(1, 1, 37, 53)
    with torch.no_grad():
        rebuilt = denoise_any_size(model, x)
    assert rebuilt.shape == x.shape and torch.isfinite(rebuilt).all()


@pytest.mark.parametrize(("levels", "depth"), [(1, 1), (2, 1), (3, 1), (2, 2)])
def test_receptive_radius_is_exact(levels: int, depth: int) -> None:
    """The radius the runtime's halo tiles rely on: no gradient reaches past it, at every stride phase,
    and the gradient of a random network does reach it (so it is not a loose bound)."""
    from train.fcn import FcnDenoiser

    torch.manual_seed(0)
    model = FcnDenoiser(4, levels, depth).double().eval()
    radius = model.receptive_radius
    side = 2 * radius + 4 * model.total_stride
    side -= side % model.total_stride
    reach = 0
    for phase in range(model.total_stride):
        x = (torch.rand(1, 1, side, side, dtype=torch.float64) * 0.5 + 0.25).requires_grad_(True)
        centre = side // 2 + phase
        model(x)[0, 0, centre, centre].backward()
        rows, cols = torch.nonzero(x.grad[0, 0], as_tuple=True)  # the input pixels that pixel depends on
        reach = max(reach, int((rows - centre).abs().max()), int((cols - centre).abs().max()))
    assert reach == radius


EARLIER_DERIVED_FILES = (
    "denoiser.portable.onnx",
    "denoiser.fp16.onnx",
    "denoiser.int8.ort",
    "decoder.fp16.onnx",
    "encoder.ort",
    "manifest.json",
    "parity.json",
    "parity.rejected.json",
    "required_operators.config",
    "mobile_usability.txt",
)


@pytest.fixture(scope="module")
def photo_checkpoint(tmp_path_factory) -> Path:
    """A tiny fcn model trained 3 steps on the bundled photographs."""
    return train_tiny_photo_model(tmp_path_factory.mktemp("photo"))


@pytest.fixture(scope="module")
def photo_onnx(photo_checkpoint, tmp_path_factory) -> tuple[Path, object]:
    """The tiny model exported with parity (batches 1 and 3) as the verify step; (folder, report)."""
    from ae_export.export import export_all
    from ae_export.parity import run_parity_any_size
    from train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(photo_checkpoint)
    model = checkpoint.build_model()
    out = tmp_path_factory.mktemp("photo_onnx")
    (out / "encoder.onnx").write_bytes(b"left by an earlier export of another model")
    for name in EARLIER_DERIVED_FILES:  # an earlier lecture export's variants and reports
        (out / name).write_bytes(b"derived from an earlier export's fp32 files")
    reports = []

    def verify(staged: Path) -> None:
        report = run_parity_any_size(model, staged, batch_sizes=(1, 3), providers=("cpu",))
        reports.append(report)
        assert report.passed, report.failure_summary()

    export_all(checkpoint, out, verify=verify, log=lambda _line: None)
    return out, reports[0]


def test_export_over_another_models_folder_leaves_none_of_its_files(photo_onnx) -> None:
    """A lecture export's variants left beside the photo model were served as its own: `variant="fp16"`
    opened the 28x28 lecture model, and on CUDA the lecture's portable file was the default twin."""
    from runtimes import Denoiser

    folder, _ = photo_onnx
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["denoiser.onnx"]
    with pytest.raises(FileNotFoundError, match="fp16"):
        Denoiser(folder, provider="cpu", variant="fp16")


@pytest.mark.slow
def test_export_has_dynamic_height_width_and_passes_parity_at_every_size(photo_onnx) -> None:
    from runtimes.metadata import parse_metadata

    folder, report = photo_onnx
    assert sorted(p.name for p in folder.glob("*.onnx")) == ["denoiser.onnx"]  # stale encoder removed
    proto = onnx.load(str(folder / "denoiser.onnx"))
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims == ["batch", 1, "height", "width"]
    meta = parse_metadata({p.key: p.value for p in proto.metadata_props})
    assert meta.artifacts == {"denoiser": "denoiser.onnx"}
    assert meta.model_config["arch"] == "fcn" and meta.input.size_multiple == 4
    assert meta.receptive_radius == 14  # width 4, 2 levels, depth 1: what the runtime's tiles overlap by
    checked = {(r.artifact, r.batch_size) for r in report.results}
    for size in ("28x28", "64x96", "37x53", "512x512"):
        assert (f"denoiser {size}", 1) in checked
    assert ("denoiser 512x512", 3) in checked  # 3 x 512 x 512 is within the parity pixel cap
    assert ("denoiser 512x512 tiled", 1) in checked  # the runtime's halo tiles, against PyTorch too
    assert not any(artifact.startswith("denoiser 28x28 tiled") for artifact, _ in checked)  # fits one tile
    assert report.passed


@pytest.mark.slow
def test_runtime_denoiser_takes_any_size(photo_onnx) -> None:
    from runtimes import Denoiser

    denoiser = Denoiser(photo_onnx[0], provider="cpu", threads=1)
    assert denoiser.image_shape is None and denoiser.size_multiple == 4
    rng = np.random.default_rng(0)
    for shape in [(37, 53), (2, 64, 96), (2, 1, 30, 41)]:
        images = rng.integers(0, 256, size=shape, dtype=np.uint8)
        out = denoiser.denoise(images)
        assert out.shape == images.shape and out.dtype == np.uint8
    with pytest.raises(Exception, match="encoder"):
        denoiser.encode(np.zeros((8, 8), np.float32))  # the fcn export has no encoder


@pytest.mark.slow
@pytest.mark.parametrize(
    ("images", "height", "width"), [(1, 120, 90), (1, 257, 131), (3, 64, 200), (2, 333, 41)]
)
def test_halo_tiles_give_the_whole_image_result(photo_onnx, images: int, height: int, width: int) -> None:
    from runtimes import Denoiser

    rng = np.random.default_rng(height)
    batch = rng.random((images, 1, height, width), dtype=np.float32)
    whole = Denoiser(photo_onnx[0], provider="cpu", tile_pixels=None).denoise(batch)
    tiled_model = Denoiser(photo_onnx[0], provider="cpu", tile_pixels=48 * 48)  # forces many tiles
    tiled = tiled_model.denoise(batch)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)
    assert tiled_model.tile_pixels == 48 * 48


@pytest.mark.slow
def test_halo_tiles_need_the_whole_radius(photo_onnx) -> None:
    """The control for the test above: tiles without the overlap differ, so that test can fail. (How far
    the overlap must reach is test_receptive_radius_is_exact's: this 3-step model's far taps are weak.)"""
    from runtimes import Denoiser
    from runtimes.tiling import plan_tiles, run_tiled

    denoiser = Denoiser(photo_onnx[0], provider="cpu", tile_pixels=None)
    image = np.random.default_rng(0).random((1, 1, 120, 120), dtype=np.float32)
    whole = denoiser.denoise(image)
    bare = plan_tiles(120, 120, 1, 0, 4, 1, 48 * 48)  # radius 0: tiles that do not overlap
    assert bare.count > 1
    tiled = run_tiled(denoiser.model.run, image, bare, (120, 120), 1, 1 << 20)
    assert np.abs(tiled - whole).max() > 1e-2


@pytest.mark.slow
def test_tile_bench_measures_each_run_in_its_own_process(photo_onnx) -> None:
    from bench.photo_tiles import render_result, run_tile_bench

    configs = [("whole", None, None), ("tiles", 48 * 48, None), ("tiles, 1 thread", 48 * 48, 1)]
    result = run_tile_bench(photo_onnx[0], sizes=[(160, 200)], configs=configs, timeout=300)
    rows = result["rows"]
    assert [r["config"] for r in rows] == ["whole", "tiles", "tiles, 1 thread"]
    assert rows[0]["speed_vs_whole"] == 1.0 and rows[2]["threads"] == 1
    for row in rows:
        assert row["max_abs_diff"] <= 1e-6 and row["seconds"] > 0
        assert 20 < row["maxrss_mb"] < 2000  # a torch-free process: model, image and runtime only
    assert "| 160x200 | tiles |" in render_result(result)


@pytest.mark.slow
def test_tile_bench_peak_memory_is_the_childs_not_the_parents(photo_onnx) -> None:
    """A child started with vfork + exec inherits its parent's `ru_maxrss`; the bench reads the child's
    own peak. With 600 MB held here, a child running a small image must still report well under it."""
    from bench.photo_tiles import run_tile_bench

    held = np.ones(600 * 2**20 // 8)  # 600 MB, touched: resident in this (the parent) process
    result = run_tile_bench(photo_onnx[0], sizes=[(64, 64)], configs=[("whole", None, 1)], timeout=300)
    assert held.sum() > 0
    assert result["rows"][0]["maxrss_mb"] < 400


def test_tile_pixels_must_be_positive(photo_onnx) -> None:
    from runtimes import Denoiser

    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="tile_pixels must be a positive int or None"):
            Denoiser(photo_onnx[0], provider="cpu", tile_pixels=bad)


def test_a_size_multiple_the_graph_cannot_run_fails_the_warm_up_as_an_invalid_model(
    photo_onnx, tmp_path: Path
) -> None:
    """A file whose metadata says size_multiple 3 where its graph needs 4 (hand-edited, or a graph changed
    after export) failed the warm-up with onnxruntime's bare exception (a traceback from ae-denoise); it
    is an InvalidModelError naming the file and the warm-up shape. Without the warm-up the model opens."""
    import json

    from runtimes import Denoiser
    from runtimes.sessions import InvalidModelError

    proto = onnx.load(str(photo_onnx[0] / "denoiser.onnx"))
    entry = next(p for p in proto.metadata_props if p.key == "ae_export.input")
    assert json.loads(entry.value)["size_multiple"] == 4
    entry.value = json.dumps({**json.loads(entry.value), "size_multiple": 3})
    path = tmp_path / "denoiser.onnx"
    onnx.save(proto, str(path))
    warm_up_failed = r"denoiser\.onnx: a warm-up run of shape \(1, 1, 3, 3\) failed"
    with pytest.raises(InvalidModelError, match=warm_up_failed):
        Denoiser(path, provider="cpu")
    assert Denoiser(path, provider="cpu", warmup=False).size_multiple == 3


@pytest.mark.slow
def test_ae_denoise_tile_pixels_flag(photo_onnx, tmp_path: Path) -> None:
    """Small tiles, one piece per image, the default: the same PNGs; a bad value names what is valid."""
    _noisy_photo_folder(tmp_path / "in")
    written = {}
    for flag in ("2304", "0", None):
        out = tmp_path / f"out_{flag}"
        extra = [] if flag is None else ["--tile-pixels", flag]
        proc = run_cli(CLI, "--onnx", str(photo_onnx[0]), str(tmp_path / "in"), "-o", str(out), *extra)
        assert proc.returncode == 0, proc.stderr
        written[flag] = {p.name: np.asarray(Image.open(p)) for p in sorted(out.glob("*.png"))}
    assert len(written["0"]) == len(MIXED_SIZES)
    for name, pixels in written["0"].items():
        np.testing.assert_array_equal(written["2304"][name], pixels)
        np.testing.assert_array_equal(written[None][name], pixels)
    bad = run_cli(CLI, "--onnx", str(photo_onnx[0]), str(tmp_path / "in"), "--tile-pixels", "-5")
    assert bad.returncode == 2 and "expected an integer >= 0 (0: run every image whole)" in bad.stderr


@pytest.mark.slow
def test_ae_denoise_keeps_colour_per_channel(photo_onnx, tmp_path: Path) -> None:
    """A colour photograph comes back in colour, each channel denoised as the grayscale image it is."""
    from skimage import data

    from runtimes import Denoiser

    rng = np.random.default_rng(3)
    clean = data.astronaut()[100:197, 150:290].astype(np.float32) / 255  # (97, 140, 3)
    noisy = np.rint(np.clip(clean + 0.1 * rng.standard_normal(clean.shape), 0, 1) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(noisy).save(tmp_path / "in" / "astronaut.png")
    proc = run_cli(CLI, "--onnx", str(photo_onnx[0]), str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "out" / "astronaut.png") as result:
        assert result.mode == "RGB" and result.size == (140, 97)
        rgb = np.asarray(result)
    denoiser = Denoiser(photo_onnx[0], provider="cpu")
    for channel in range(3):  # red is red: no channel swapped or transposed on the way
        alone = denoiser.denoise(np.ascontiguousarray(noisy[..., channel]))  # uint8 in, uint8 out
        assert np.abs(rgb[..., channel].astype(int) - alone.astype(int)).max() <= 1

    gray = run_cli(CLI, "--onnx", str(photo_onnx[0]), str(tmp_path / "in"), "-o", str(tmp_path / "gray"),
                   "--color", "gray")  # fmt: skip
    assert gray.returncode == 0, gray.stderr
    with Image.open(tmp_path / "gray" / "astronaut.png") as result:
        assert result.mode == "L" and result.size == (140, 97)

    demo = run_cli(CLI, "--onnx", str(photo_onnx[0]), str(tmp_path / "in"), "-o", str(tmp_path / "demo"),
                   "--add-noise", "0.05")  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    with Image.open(tmp_path / "demo" / "astronaut.noisy.png") as saved:
        assert saved.mode == "RGB"  # noise added per channel, saved in colour


@pytest.mark.slow
def test_denoiser_takes_colour_arrays_channels_last(photo_onnx) -> None:
    """(H, W, 3) and (N, H, W, 3), uint8 or float32: the same layout back, each channel denoised alone."""
    from runtimes import Denoiser, MicroBatcher

    denoiser = Denoiser(photo_onnx[0], provider="cpu")
    rng = np.random.default_rng(5)
    batch = rng.integers(0, 256, (2, 37, 45, 3), dtype=np.uint8)
    out = denoiser.denoise(batch)
    assert out.shape == batch.shape and out.dtype == np.uint8
    one = denoiser.denoise(batch[1])
    np.testing.assert_array_equal(one, out[1])
    for channel in range(3):
        np.testing.assert_array_equal(
            out[1][..., channel], denoiser.denoise(np.ascontiguousarray(batch[1][..., channel]))
        )
    floats = denoiser.denoise(batch[0].astype(np.float32) / 255)
    assert floats.shape == (37, 45, 3) and floats.dtype == np.float32
    assert np.abs(np.rint(floats * 255) - out[0]).max() <= 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        denoiser.denoise(np.full((8, 8, 3), 2.0, np.float32))
    with MicroBatcher(denoiser) as batcher, pytest.raises(ValueError, match="colour image's channels"):
        batcher(batch[0])


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize(
    ("channels", "fix"),
    [(1, r"image\[\.\.\., 0\]"), (2, r"image\[\.\.\., 0\]"), (4, r"image\[\.\.\., :3\]")],
    ids=["gray", "gray-alpha", "rgba"],
)
def test_other_channels_last_images_are_refused(photo_onnx, channels: int, fix: str, dtype: str) -> None:
    """An (H, W, 1) gray plane, (H, W, 2) gray + alpha or (H, W, 4) RGBA array was read as a batch of H
    images 1, 2 or 4 pixels wide: accepted, and each row of the photograph came back denoised alone."""
    from skimage import data

    from runtimes import Denoiser, MicroBatcher

    denoiser = Denoiser(photo_onnx[0], provider="cpu", warmup=False)
    rgba = np.asarray(Image.fromarray(data.astronaut()[:40, :48]).convert("RGBA"))
    image = {1: rgba[..., :1], 2: rgba[..., [0, 3]], 4: rgba}[channels]
    image = image if dtype == "uint8" else image.astype(np.float32) / 255
    message = rf"got shape \(40, 48, {channels}\), an image channels-last with {channels} channel.*{fix}"
    with pytest.raises(ValueError, match=message):
        denoiser.denoise(image)
    with MicroBatcher(denoiser) as batcher, pytest.raises(ValueError, match=message):
        batcher.submit(image)
    plane = image[..., :3] if channels == 4 else image[..., 0]  # what the message says to pass
    assert denoiser.denoise(plane).shape == plane.shape


def test_fixed_size_model_gets_grayscale_from_colour(onnx_dir: Path, tmp_path: Path) -> None:
    """The lecture's model was trained on grayscale Fashion-MNIST: colour input is converted, as before."""
    (tmp_path / "in").mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in" / "c.png")
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "out" / "c.png") as result:
        assert result.mode == "L" and result.size == (28, 28)


def _noisy_photo_folder(folder: Path) -> None:
    """Noisy crops of different sizes from the validation photographs, as PNG files."""
    from train.photos import bundled_photos, noisy_8bit

    photos = bundled_photos("val")
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate(MIXED_SIZES):
        image = photos.images[i % len(photos.images)][:height, :width].astype(np.float32) / 255.0
        noisy = noisy_8bit(image[None, None], 25 / 255, rng)[0, 0]
        Image.fromarray(np.rint(noisy * 255).astype(np.uint8)).save(folder / f"photo{i}.png")


NO_TORCH_CLI = (
    "import atexit, sys, runpy\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in this test')\n"
    "sys.meta_path.insert(0, Block())\n"
    "loaded = lambda: 'TORCH LOADED' if 'torch' in sys.modules else 'NO TORCH'\n"
    "atexit.register(lambda: sys.stderr.write(loaded() + '\\n'))\n"
    "sys.argv = ['ae-denoise', *sys.argv[1:]]\n"
    "runpy.run_module('runtimes.cli', run_name='__main__')\n"
)


@pytest.mark.slow
def test_ae_denoise_folder_of_mixed_size_photos_without_torch(photo_onnx, tmp_path: Path) -> None:
    _noisy_photo_folder(tmp_path / "in")
    proc = run_script(
        NO_TORCH_CLI,
        "--onnx",
        str(photo_onnx[0]),
        str(tmp_path / "in"),
        "-o",
        str(tmp_path / "out"),
        "--batch-size",
        "4",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().endswith("NO TORCH"), proc.stderr
    for i, (height, width) in enumerate(MIXED_SIZES):
        with Image.open(tmp_path / "out" / f"photo{i}.png") as result:
            assert result.size == (width, height) and result.mode == "L"


@pytest.mark.slow
def test_lecture_model_refuses_a_photograph_and_writes_nothing_for_it(onnx_dir: Path, tmp_path: Path) -> None:
    from train.photos import bundled_photos

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(bundled_photos("val").images[0]).save(folder / "camera.png")  # 512x512
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "small.png")
    proc = run_cli(CLI, "--onnx", str(onnx_dir), str(folder), "-o", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stderr
    assert "camera.png" in proc.stderr and "512x512" in proc.stderr and "28x28" in proc.stderr
    assert "--size-mode resize" in proc.stderr and "--size-mode tile" in proc.stderr
    assert "1 done, 1 failed" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["small.png"]

    opted_in = run_cli(
        CLI, "--onnx", str(onnx_dir), str(folder), "-o", str(tmp_path / "resized"), "--size-mode", "resize"
    )
    assert opted_in.returncode == 0, opted_in.stderr
    assert (tmp_path / "resized" / "camera.png").is_file()


@pytest.mark.slow
def test_ae_export_cli_writes_the_photo_model_and_its_judged_int8(
    photo_checkpoint: Path, tmp_path: Path
) -> None:
    """`make photo`'s export: the any-size denoiser, its int8 twin judged on the validation photographs,
    and a manifest; no Fashion-MNIST variants; a rejected or unwanted int8 leaves no file behind."""
    import json

    from runtimes import Denoiser

    out = tmp_path / "onnx"
    args = ("ae_export.cli", "--checkpoint", str(photo_checkpoint), "--out", str(out), "--batch-sizes", "1,2")
    proc = run_cli(*args, "--sizes", "28x28,37x53", "--psnr-budget", "int8=100")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.glob("*.onnx")) == ["denoiser.int8.onnx", "denoiser.onnx"]
    assert "int8: denoiser.int8.onnx:" in proc.stdout and "kept in float: tail" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    int8 = next(e for e in manifest["files"] if e["variant"] == "int8")
    assert set(int8["quality"]["loss_db_by_sigma_255"]) == {"15", "25", "50"}
    assert int8["excluded_layers"] == ["tail"] and int8["worst_photo"]["photo"]
    assert "denoiser.int8.onnx 37x53" in proc.stdout  # the int8 file's parity ran at export
    parity = run_cli(
        "ae_export.cli",
        *("parity", "--checkpoint", str(photo_checkpoint), "--onnx-dir", str(out), "--batch-sizes", "1,2"),
        *("--sizes", "28x28,37x53", "--providers", "cpu"),
    )
    assert parity.returncode == 0, parity.stdout + parity.stderr  # once an AttributeError traceback
    rows = json.loads((out / "parity.json").read_text())["results"]
    assert {r["artifact"] for r in rows} >= {"denoiser.int8.onnx 28x28", "denoiser.int8.onnx 37x53"}

    whole = Denoiser(out, provider="cpu", variant="int8", tile_pixels=None)
    tiled = Denoiser(out, provider="cpu", variant="int8", tile_pixels=48 * 48)
    assert whole.path.name == "denoiser.int8.onnx" and whole.metadata.receptive_radius == 14
    image = np.random.default_rng(3).random((120, 90), dtype=np.float32)
    np.testing.assert_allclose(tiled(image), whole(image), rtol=0, atol=1e-5)  # halo tiles stay exact
    fp32 = Denoiser(out, provider="cpu")(image)
    assert 1e-6 < np.abs(whole(image) - fp32).max() < 0.1  # really quantized, and close

    rejected = run_cli(*args, "--no-parity", "--psnr-budget", "int8=-1")
    assert rejected.returncode == 1 and "int8: NOT written: loses" in rejected.stdout
    assert "ae-export: variant int8 not written: loses" in rejected.stderr
    # --no-parity: the earlier run's parity.json went with the files it checked
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["denoiser.onnx"]
    run_cli(*args, "--no-parity", "--psnr-budget", "int8=100")
    plain = run_cli(*args, "--no-parity", "--variants", "none")
    assert plain.returncode == 0, plain.stderr
    assert not (out / "denoiser.int8.onnx").exists() and not (out / "manifest.json").exists()
    refused = run_cli(*args, "--variants", "fp16")
    assert refused.returncode == 2 and "the photo model offers int8 (or none)" in refused.stderr


def _cuda_photo_denoiser(folder: Path, tile_pixels: int | None):
    """A CUDA `Denoiser` of the photo export, or a skip that says why CUDA does not start here."""
    from runtimes import Denoiser
    from runtimes.sessions import ProviderUnavailableError

    try:
        return Denoiser(folder, provider="cuda", tile_pixels=tile_pixels)
    except ProviderUnavailableError as err:
        pytest.skip(str(err))  # "CUDA execution provider not available: <why>"


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_parity_at_every_size_and_tiled(photo_onnx, photo_checkpoint) -> None:
    from ae_export.parity import run_parity_any_size
    from train.checkpoint import load_checkpoint

    _cuda_photo_denoiser(photo_onnx[0], None)
    model = load_checkpoint(photo_checkpoint).build_model()
    report = run_parity_any_size(model, photo_onnx[0], batch_sizes=(1, 3), providers=("cuda",))
    assert {r.provider for r in report.results} == {"cuda"}
    assert any(r.artifact.endswith("tiled") for r in report.results)
    assert report.passed, report.failure_summary()


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_matches_cpu_whole_tiled_and_in_colour(photo_onnx) -> None:
    """The runtime's CUDA path for photographs: halo tiles on one CUDA slot give the whole-image result,
    either cuDNN algorithm search gives the CPU's, and colour (H, W, 3) arrays come back as the CPU's."""
    from runtimes import Denoiser

    tiled = _cuda_photo_denoiser(photo_onnx[0], 48 * 48)  # forces many tiles
    whole = _cuda_photo_denoiser(photo_onnx[0], None)
    searched = Denoiser(photo_onnx[0], provider="cuda", tile_pixels=None, conv_search="exhaustive")
    cpu = Denoiser(photo_onnx[0], provider="cpu", tile_pixels=None)
    assert tiled.provider == whole.provider == searched.provider == "cuda"
    rng = np.random.default_rng(5)
    gray = rng.random((2, 1, 257, 131), dtype=np.float32)
    np.testing.assert_allclose(tiled(gray), whole(gray), rtol=0, atol=1e-5)
    np.testing.assert_allclose(whole(gray), cpu(gray), rtol=0, atol=1e-4)
    np.testing.assert_allclose(searched(gray), cpu(gray), rtol=0, atol=1e-4)  # cuDNN's other algorithms
    colour = rng.integers(0, 256, size=(150, 130, 3), dtype=np.uint8)
    out = tiled(colour)
    assert out.shape == colour.shape and out.dtype == np.uint8
    assert np.abs(out.astype(np.int16) - cpu(colour)).max() <= 1  # rounding may flip one level
