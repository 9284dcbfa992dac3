"""runtimes.images and the any-size path of `ae-denoise`: decoding limits, transparency, colour profiles,
array validation messages, and how much of a folder of photographs is held in memory at once.

The any-size model here is a real ONNX file run by real ONNX Runtime sessions: a 1x1 convolution of
weight 1 (an identity denoiser) with symbolic height and width and the exporter's metadata contract, so
results are exactly the inputs and the tests need no training.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
import weakref
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageCms, TiffImagePlugin

import runtimes.pipeline as pipeline
from runtimes import images
from runtimes.denoiser import Denoiser
from runtimes.images import BadImageError, load_gray8, load_image8, save_png
from runtimes.metadata import ModelMetadata, TensorContract, encode_metadata
from runtimes.planning import plan_jobs
from tests.helpers import run_cli

CLI = "runtimes.cli"


@pytest.fixture(scope="module")
def identity_any_size(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export folder holding an identity `denoiser.onnx` of any height and width."""
    contract = TensorContract("image", ("batch", 1, "height", "width"), "float32", "NCHW", (0.0, 1.0))
    output = TensorContract("denoised", ("batch", 1, "height", "width"), "float32", "NCHW", (0.0, 1.0))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["denoised"])],
        "identity",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        [helper.make_tensor_value_info("denoised", TensorProto.FLOAT, ["batch", 1, "height", "width"])],
        [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    meta = ModelMetadata("denoiser", {"arch": "fcn"}, contract, output, {"denoiser": "denoiser.onnx"})
    helper.set_model_props(model, encode_metadata(meta))
    folder = tmp_path_factory.mktemp("identity")
    onnx.save(model, folder / "denoiser.onnx")
    return folder


@functools.cache  # one profile per space: littleCMS stamps each new one with the current time
def _profile(space: str) -> bytes:
    """An ICC profile made by littleCMS: "sRGB", or for "GRAY" a Lab profile whose header says GRAY (only
    the header's colour-space field decides here, and littleCMS makes no gray profiles)."""
    if space == "sRGB":
        return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    gray = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    return gray[:16] + b"GRAY" + gray[20:]  # header only matters here: its data colour space


# ---------------------------------------------------------------------------------------------------------
# Decoding


def test_16bit_transparency_composited_onto_black(tmp_path: Path) -> None:
    """A 16-bit grayscale PNG's tRNS value marks transparent pixels, as in 8-bit files."""
    wide = np.array([[1000, 30000], [65535, 1000]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "g16.png", transparency=1000)
    Image.fromarray((wide >> 8).astype(np.uint8)).save(tmp_path / "g8.png", transparency=1000 >> 8)
    expected = [[0, 117], [255, 0]]
    assert load_gray8(tmp_path / "g16.png").tolist() == expected
    assert load_image8(tmp_path / "g16.png").tolist() == expected
    assert load_gray8(tmp_path / "g8.png").tolist() == expected  # the 8-bit rule it now matches


def _png_bytes(header: bytes, transparent: bytes, raw: bytes) -> bytes:
    """A PNG of one IHDR, tRNS and IDAT chunk, written chunk by chunk (Pillow writes no tRNS for 2- or 4-bit
    grayscale nor any 16-bit RGB PNG; optimisers such as optipng and 16-bit editors do)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"tRNS", transparent)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _gray_png_bytes(rows: list[list[int]], bits: int, transparent: int) -> bytes:
    """A grayscale PNG of `bits` bits per pixel with a tRNS value."""
    import struct

    per_byte = 8 // bits
    raw = b""
    for row in rows:
        padded = row + [0] * (-len(row) % per_byte)
        packed = [
            sum(v << (8 - bits * (k + 1)) for k, v in enumerate(padded[i : i + per_byte]))
            for i in range(0, len(padded), per_byte)
        ]
        raw += b"\0" + bytes(packed)  # filter type 0, then the packed samples
    header = struct.pack(">IIBBBBB", len(rows[0]), len(rows), bits, 0, 0, 0, 0)
    return _png_bytes(header, struct.pack(">H", transparent), raw)


@pytest.mark.parametrize(("bits", "transparent"), [(2, 3), (2, 1), (4, 15), (4, 6)])
def test_low_bit_depth_gray_png_transparency_composited_onto_black(
    tmp_path: Path, bits: int, transparent: int
) -> None:
    """Pillow scales a 2- or 4-bit PNG's samples to 0..255 but kept its tRNS value unscaled, so the
    transparent pixels came back visible (a 4-bit file's transparent white stayed white)."""
    top = 2**bits - 1
    rows = [[transparent, 0, top, 1], [2, transparent, top - 1, transparent]]
    (tmp_path / "low.png").write_bytes(_gray_png_bytes(rows, bits, transparent))
    scale = 255 // top
    expected = [[0 if v == transparent else v * scale for v in row] for row in rows]
    assert load_gray8(tmp_path / "low.png").tolist() == expected
    assert load_image8(tmp_path / "low.png").tolist() == expected


@pytest.mark.parametrize("transparent", [(40000, 20000, 1000), (255, 255, 255)])
def test_16bit_rgb_png_transparency_composited_onto_black(
    tmp_path: Path, transparent: tuple[int, ...]
) -> None:
    """Pillow decodes a 16-bit RGB PNG to 8 bits per channel but kept its 16-bit tRNS colour, so the
    transparent pixels came back visible, and with tRNS (255, 255, 255), a near-black, every white pixel
    came back black. Transparency is decided on all 16 bits: a pixel one step off the colour stays."""
    import struct

    wide = np.array(
        [[(40000, 20000, 1000), (40000, 20000, 1001)], [(65535, 65535, 65535), (255, 255, 255)]], np.uint16
    )
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in wide)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0)
    (tmp_path / "rgb16.png").write_bytes(_png_bytes(header, struct.pack(">HHH", *transparent), raw))
    expected = (wide >> 8).astype(np.uint8)  # (2, 2, 3): the 8-bit values of the visible pixels
    expected[np.all(wide == transparent, axis=-1)] = 0
    assert load_image8(tmp_path / "rgb16.png").tolist() == expected.tolist()
    gray = load_gray8(tmp_path / "rgb16.png")
    assert gray.tolist() == [[0 if transparent[2] == 1000 else 93, 93], [255, 0]]


@pytest.mark.parametrize("dtype", [np.int32, np.uint32])
@pytest.mark.parametrize("writer", ["pillow", "tifffile"])
def test_32bit_integer_tiff_is_refused_naming_its_mode(tmp_path: Path, dtype: type, writer: str) -> None:
    """A TIFF of 32-bit integers (Pillow mode "I") was scaled as if its white were 65535: 70000 and
    2**31 - 1 came back white, a full-range uint32 file black or white by its sign bit. It has no defined
    white level, so it is refused with the mode named; a 16-bit TIFF is still scaled from 0..65535."""
    values = np.array([[0, 1000, 70000, 2**31 - 1]], dtype)
    if writer == "pillow":
        Image.fromarray(values).save(tmp_path / "wide.tif")
    else:
        pytest.importorskip("tifffile").imwrite(tmp_path / "wide.tif", values)
    for load in (load_gray8, load_image8):
        with pytest.raises(BadImageError, match=r"mode 'I' \(a TIFF of 32-bit integers\).*8 or 16 bits"):
            load(tmp_path / "wide.tif")
    Image.fromarray(np.array([[0, 1000, 65535]], np.uint16)).save(tmp_path / "16.tif")
    assert load_gray8(tmp_path / "16.tif").tolist() == [[0, 4, 255]]


@pytest.mark.parametrize("writer", ["pillow", "tifffile"])
def test_signed_16bit_tiff_is_refused_naming_its_kind(tmp_path: Path, writer: str) -> None:
    """A TIFF of signed 16-bit integers opens as Pillow mode "I" with 16 bits per sample, like an unsigned
    one, and was scaled from 0..65535: its white 32767 came back at 127 (half bright), negatives black.
    Its white level is not defined (0..32767? -32768..32767?), so it is refused, naming what it holds."""
    values = np.array([[-32768, -6, 0, 20000, 32767]], np.int16)
    if writer == "pillow":
        tags = TiffImagePlugin.ImageFileDirectory_v2()
        tags[339] = 2  # SampleFormat: signed integer
        Image.frombytes("I;16", (5, 1), values.astype("<i2").tobytes()).save(
            tmp_path / "s.tif", tiffinfo=tags
        )
    else:
        pytest.importorskip("tifffile").imwrite(tmp_path / "s.tif", values)
    with Image.open(tmp_path / "s.tif") as opened:  # the case at hand: mode 'I', 16 bits, signed
        assert opened.mode == "I" and np.asarray(opened).min() == -32768
    for load in (load_gray8, load_image8):
        with pytest.raises(BadImageError, match=r"mode 'I' \(a TIFF of signed 16-bit integers\).*unsigned 8"):
            load(tmp_path / "s.tif")


RAMP = np.linspace(0, 1, 8, dtype=np.float32)[None]  # (1, 8) float pixels in [0, 1]
RAMP8 = [[0, 36, 73, 109, 146, 182, 219, 255]]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (RAMP, RAMP8),
        (np.where(RAMP == 1, np.float32(1.001), RAMP), RAMP8),  # within half an 8-bit step of 1
        (RAMP - np.float32(0.1), [[0, 11, 47, 84, 120, 157, 193, 230]]),  # below 0: black, as before
        (np.arange(0, 256, 32, dtype=np.float32)[None], [[0, 32, 64, 96, 128, 160, 192, 224]]),
        (np.where(RAMP == 1, np.float32(1.01), RAMP), "values 0..1.01"),
        (np.where(RAMP == 1, np.float32(300), RAMP), "values 0..300"),
        (np.arange(0, 256, 32, dtype=np.float32)[None] + np.float32(0.5), "values 0.5..224.5"),
    ],
    ids=["unit", "rounding_past_1", "negative", "whole_0_255", "past_1", "past_255", "fractional_0_255"],
)
def test_float_tiff_read_in_0_1_or_refused(tmp_path: Path, values: np.ndarray, expected: object) -> None:
    """A float TIFF (Pillow mode "F") was read as [0, 1] when its largest value was at most 1 and as
    0..255 otherwise, so a [0, 1] image with one pixel at 1.01 came back black (0..2 of 255). [0, 1] floats
    and whole numbers 0..255 (an 8-bit image saved as floats) are read; any other range is refused."""
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    for load in (load_gray8, load_image8):
        if isinstance(expected, str):
            with pytest.raises(BadImageError, match=f"mode 'F' with {re.escape(expected)}: .*in \\[0, 1\\]"):
                load(tmp_path / "f.tif")
        else:
            assert load(tmp_path / "f.tif").tolist() == expected


@pytest.mark.parametrize(
    ("subfile_types", "frames"), [((1,), 1), ((1, 1), 1), ((0,), 2), ((1, 0, 1), 2), ((2, 2), 3)]
)
def test_tiff_thumbnails_are_not_frames_of_their_own(
    tmp_path: Path, subfile_types: tuple[int, ...], frames: int
) -> None:
    """A TIFF whose later frames are reduced-resolution versions of the image (NewSubfileType 1: the
    thumbnails scanners and cameras write) was refused as 'holds 2 frames (animation or pages)'. They are
    previews, as an MPO's second frame is: the image is read. Other pages (0, or 2: a page) still count."""
    tifffile = pytest.importorskip("tifffile")  # scikit-image's own dependency; Pillow cannot set tag 254
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 56, 3), np.uint8)
    path = tmp_path / "scan.tif"
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(image, photometric="rgb")
        for kind in subfile_types:
            tiff.write(image[::4, ::4] if kind == 1 else 255 - image, photometric="rgb", subfiletype=kind)
    if frames == 1:
        np.testing.assert_array_equal(load_image8(path), image)
        assert load_gray8(path).shape == (40, 56)
    else:
        with pytest.raises(BadImageError, match=f"TIFF file holds {frames} frames"):
            load_image8(path)


def test_max_pixels_above_pillows_own_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--max-pixels is the one limit: Pillow's lower one neither warns nor refuses, and is put back.

    Pillow's limit is lowered to 1000 pixels here, so 40x40 (over it: a warning) and 60x60 (over twice
    it: an error) stand in for real 100 and 200 MP files without allocating them."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for side in (40, 60):
        Image.new("L", (side, side), 7).save(tmp_path / f"{side}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning fails the test
        assert load_gray8(tmp_path / "40.png", max_pixels=5000).shape == (40, 40)
        assert load_gray8(tmp_path / "60.png", max_pixels=5000).shape == (60, 60)
    assert Image.MAX_IMAGE_PIXELS == 1000  # the app's own setting is back
    with warnings.catch_warnings():  # files refused by our limit may still draw Pillow's warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(BadImageError, match="3600 pixels exceeds the limit of 3000 .*--max-pixels"):
            load_gray8(tmp_path / "60.png", max_pixels=3000)
        # A run's limit below Pillow's, and a file past twice Pillow's: Pillow refuses first, and its
        # error is worded with this run's limit and the flag.
        with pytest.raises(BadImageError, match="this run's limit is 900 pixels; raise it with --max-pixels"):
            load_gray8(tmp_path / "60.png", max_pixels=900)
    assert Image.MAX_IMAGE_PIXELS == 1000


@pytest.mark.parametrize("load", [load_gray8, load_image8], ids=["gray8", "image8"])
@pytest.mark.parametrize("what", ["folder", "fifo"])
def test_a_path_that_is_no_file_is_a_bad_image(tmp_path: Path, load, what: str) -> None:
    """load_gray8 on a folder raised IsADirectoryError ('[Errno 21] Is a directory: 3', the number a file
    descriptor), not the BadImageError its docstring promises, so an app catching that crashed."""
    path = tmp_path / "x.png"
    path.mkdir() if what == "folder" else os.mkfifo(path)
    reason = "a folder" if what == "folder" else "not a regular file"
    with pytest.raises(BadImageError, match=rf"^{re.escape(str(path))}: unreadable: {reason}$"):
        load(path)


@pytest.mark.parametrize(
    ("pixels", "got"),
    [
        (np.zeros((4, 5), np.uint8).tolist(), "list"),
        (np.zeros((4, 5, 4), np.uint8), r"uint8 array of shape \(4, 5, 4\)"),
        (np.zeros((4, 5)), r"float64 array of shape \(4, 5\)"),
    ],
    ids=["list", "rgba", "float"],
)
def test_save_png_names_what_it_cannot_write(tmp_path: Path, pixels: object, got: str) -> None:
    """A list of rows was an AttributeError traceback ('list' object has no attribute 'dtype'); every
    refusal is the ValueError naming what save_png takes, and nothing is written."""
    with pytest.raises(
        ValueError, match=rf"^save_png expects a \(H, W\) or \(H, W, 3\) uint8 array; got {got}$"
    ):
        save_png(tmp_path / "out.png", pixels)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# ICC profiles


@pytest.mark.parametrize(
    ("case", "keeps"),
    [("rgb_jpeg", True), ("rgb_as_gray", False), ("gray_png", True), ("rgb_profile_on_gray", False)],
)
def test_icc_profile_kept_only_for_its_own_colour_space(tmp_path: Path, case: str, keeps: bool) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "x.png"
    if case == "rgb_jpeg":
        path = tmp_path / "x.jpg"
        Image.fromarray(rng.integers(0, 256, (16, 24, 3), np.uint8)).save(path, icc_profile=_profile("sRGB"))
    elif case == "rgb_as_gray":  # an RGB file whose pixels are gray: loaded gray, the RGB profile dropped
        Image.fromarray(np.dstack([np.full((8, 8), 90, np.uint8)] * 3)).save(
            path, icc_profile=_profile("sRGB")
        )
    elif case == "gray_png":
        Image.fromarray(np.full((8, 8), 90, np.uint8)).save(path, icc_profile=_profile("GRAY"))
    else:
        Image.fromarray(np.full((8, 8), 90, np.uint8)).save(path, icc_profile=_profile("sRGB"))
    with Image.open(path) as image:
        profile = image.info["icc_profile"]
    loaded = images.load_image(path)
    assert loaded.icc_profile == (profile if keeps else None)
    gray = images.load_image(path, color=False)  # --color gray: only a gray profile survives
    assert gray.icc_profile == (profile if keeps and case == "gray_png" else None)
    save_png(tmp_path / "out.png", loaded.pixels, icc_profile=loaded.icc_profile)
    with Image.open(tmp_path / "out.png") as written:
        assert written.info.get("icc_profile") == loaded.icc_profile


def test_cli_carries_an_rgb_photos_icc_profile(identity_any_size: Path, tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (32, 48, 3), np.uint8)
    Image.fromarray(rgb).save(_mkdir(tmp_path / "in") / "p.png", icc_profile=_profile("sRGB"))
    proc = run_cli(
        CLI, "-q", "--onnx", str(identity_any_size), str(tmp_path / "in"), "-o", str(tmp_path / "o")
    )
    assert proc.returncode == 0, proc.stderr
    with Image.open(tmp_path / "o" / "p.png") as written:
        assert written.mode == "RGB" and written.info.get("icc_profile") == _profile("sRGB")
        np.testing.assert_array_equal(np.asarray(written), rgb)  # the identity model: pixels unchanged


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------------------
# Array validation messages


def test_messages_say_what_is_wrong(identity_any_size: Path) -> None:
    denoiser = Denoiser(identity_any_size, provider="cpu")
    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    image[3, 3] = np.nextafter(np.float32(1), np.float32(2))  # one float step above 1
    with pytest.raises(ValueError, match=r"got values in \[0, 1.00000012\]"):
        denoiser(image)
    for empty in (np.zeros((0, 5), np.float32), np.zeros((2, 1, 5, 0), np.uint8)):
        with pytest.raises(ValueError) as info:
            denoiser(empty)
        message = str(info.value)
        assert "(N, 1, H, W)" in message and "(H, W, 3)" in message and "height and width >= 1" in message
        assert ", 0" not in message.split("; got")[0]  # no "(N, 1, 0, 0)" as what is expected


# ---------------------------------------------------------------------------------------------------------
# Memory: decoded photographs held at once


def test_folder_of_photos_is_decoded_a_few_at_a_time(
    identity_any_size: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many photographs a folder holds, only a bounded number are decoded at once.

    The pixel budgets are scaled down to these 64x48 RGB files (9216 samples each): a batch closes at 2
    files and decoding may hold 3 ahead; before, decode tasks took 10 files each whatever their size."""
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)
    files = 40
    for i in range(files):
        Image.fromarray(np.roll(rgb, i, axis=1)).save(_mkdir(tmp_path / "in") / f"{i:02d}.png")
    per_file = rgb.size
    monkeypatch.setattr(pipeline, "MAX_BATCH_PIXELS", 2 * per_file)
    monkeypatch.setattr(pipeline, "DECODE_AHEAD_PIXELS", 3 * per_file, raising=False)
    live, peak = [0], [0]
    decode = pipeline._decode

    def counting(job, settings):  # noqa: ANN001, ANN202 - the wrapped function's own signature
        item = decode(job, settings)
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        weakref.finalize(item.samples, lambda: live.__setitem__(0, live[0] - 1))
        return item

    monkeypatch.setattr(pipeline, "_decode", counting)
    jobs = plan_jobs([tmp_path / "in"], tmp_path / "out").jobs
    result = pipeline.run_pipeline(Denoiser(identity_any_size, provider="cpu"), jobs, workers=2, fsync=False)
    assert (result.done, result.failed) == (files, 0)
    # At most 4 decoded ahead (3 tasks of one file and the one being consumed), a batch of 2, and twice a
    # batch's pixels being encoded (6 while a flush hands over): 12 at worst, whatever the folder's size.
    assert peak[0] <= 12, peak[0]
    for i in (0, 17, 39):
        with Image.open(tmp_path / "out" / f"{i:02d}.png") as written:
            np.testing.assert_array_equal(np.asarray(written), np.roll(rgb, i, axis=1))
