"""Data loading from real files: idx readers (good and corrupt), MNIST layouts, image folders."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import run_cli
from train.data import (
    DataError,
    add_noise,
    fixed_noisy,
    load_dataset,
    load_folder_dataset,
    load_idx_dataset,
    read_idx,
    to_float,
    write_idx,
)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, fmnist_test, name) -> None:
    path = tmp_path / name
    write_idx(path, fmnist_test[:50])
    assert np.array_equal(read_idx(path), fmnist_test[:50])


def _valid_idx(tmp_path, fmnist_test):
    path = tmp_path / "ok-idx3-ubyte"
    write_idx(path, fmnist_test[:10])
    return path.read_bytes()


@pytest.mark.parametrize(
    "fault,corrupt,message",
    [
        ("bad magic", lambda b: b"\x00\x00\x0d\x03" + b[4:], "bad magic number"),
        ("truncated data", lambda b: b[:-100], "truncated"),
        ("truncated header", lambda b: b[:6], "truncated header"),
        ("count mismatch", lambda b: b[:4] + (11).to_bytes(4, "big") + b[8:], "truncated"),
        ("trailing bytes", lambda b: b + b"\x00" * 7, "trailing bytes"),
        ("empty", lambda b: b"", "truncated"),
        ("bad gzip", lambda b: gzip.compress(b)[:-20], "cannot read"),
    ],
)
def test_corrupt_idx_names_file_and_fault(tmp_path, fmnist_test, fault, corrupt, message) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(corrupt(_valid_idx(tmp_path, fmnist_test)))
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_layouts(tmp_path, fmnist, layout, gz) -> None:
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", fmnist.train.images[:30].numpy())
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", fmnist.train.labels[:30].numpy())
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", fmnist.val.images[:20].numpy())
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", fmnist.val.labels[:20].numpy())
    data = load_dataset("mnist", tmp_path)
    assert data.train.images.shape == (30, 28, 28) and data.val.images.shape == (20, 28, 28)
    assert torch.equal(data.train.images, fmnist.train.images[:30])
    assert torch.equal(data.val.labels, fmnist.val.labels[:20])


def test_label_count_mismatch(tmp_path, fmnist) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", fmnist.train.images[:30].numpy())
    write_idx(tmp_path / "train-labels-idx1-ubyte", fmnist.train.labels[:29].numpy())
    write_idx(tmp_path / "t10k-images-idx3-ubyte", fmnist.val.images[:5].numpy())
    with pytest.raises(DataError, match="count mismatch: 29 labels for 30 images"):
        load_idx_dataset(tmp_path, "mnist")


def test_folder_dataset_skips_bad_files(tmp_path, fmnist_test) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for i in range(12):
        Image.fromarray(fmnist_test[i]).save(tmp_path / "a" / f"{i}.png")
    Image.fromarray(fmnist_test[12]).resize((56, 40)).convert("RGB").save(tmp_path / "a" / "b" / "big.jpg")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image, ignored by suffix")
    data = load_folder_dataset(tmp_path)
    assert len(data.train) + len(data.val) == 13
    assert len(data.skipped_files) == 2
    assert any("broken.png" in s for s in data.skipped_files)
    assert any("empty.png" in s for s in data.skipped_files)
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (28, 28)
    again = load_folder_dataset(tmp_path)  # deterministic split
    assert torch.equal(again.train.images, data.train.images)


def test_empty_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(DataError, match="no readable images"):
        load_folder_dataset(tmp_path)


def test_unknown_dataset_names_choices() -> None:
    with pytest.raises(DataError, match="fashion-mnist, mnist, folder"):
        load_dataset("cifar")


def test_missing_fashion_names_apt_package(tmp_path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path / "nowhere", download=False)


def test_noise_model_is_the_lectures() -> None:
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    x = to_float(images)
    assert x.shape == (64, 1, 28, 28) and float(x.max()) <= 1.0
    noisy = add_noise(x, 0.3, torch.Generator().manual_seed(0))
    assert float(noisy.min()) >= 0.0 and float(noisy.max()) <= 1.0
    expected = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert torch.equal(noisy, expected)
    assert torch.equal(fixed_noisy(images, 0.3, 7), fixed_noisy(images, 0.3, 7))


@pytest.mark.parametrize(
    ("size", "mode"), [((28, 28), "L"), ((56, 40), "RGB"), ((9, 13), "LA"), ((300, 200), "I;16")]
)
def test_folder_image_trains_as_the_runtime_serves_it(tmp_path, fmnist_test, size, mode) -> None:
    """One decoder and one resize: a file in a training folder becomes exactly the tensor that
    `ae-denoise --size-mode resize` feeds the model for the same file."""
    from runtimes.fitting import to_model
    from runtimes.images import load_gray8

    w, h = size
    image = Image.fromarray(fmnist_test[3]).resize((w, h))
    if mode == "I;16":
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) * 257).astype(np.uint16))
    else:
        image = image.convert(mode)
    path = tmp_path / "img.png"
    image.save(path)
    data = load_folder_dataset(tmp_path)
    trained = to_float(data.train.images)[0].numpy()  # (1, 28, 28)
    served, _ = to_model(load_gray8(path), (28, 28), "resize")  # (1, 1, 28, 28)
    np.testing.assert_array_equal(trained, served[0])


@pytest.mark.parametrize("empty", ["train", "t10k"])
def test_idx_split_without_images_is_a_clear_error(tmp_path, fmnist, empty) -> None:
    """A well-formed idx file of 0 images once trained into 'diverged: loss is nan' (empty train split) or
    a ZeroDivisionError traceback (empty test split); it is a DataError naming the file, and ae-train
    exits 2 with that one line."""
    for stem, split in (("train", fmnist.train), ("t10k", fmnist.val)):
        count = 0 if stem == empty else 40
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte", split.images[:count].numpy())
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", split.labels[:count].numpy())
    with pytest.raises(DataError, match="holds no images") as info:
        load_dataset("mnist", tmp_path)
    assert f"{empty}-images-idx3-ubyte" in str(info.value)
    args = ("--dataset", "mnist", "--data-dir", str(tmp_path), "--epochs", "1", "--quiet")
    proc = run_cli("train.cli", *args, "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert "holds no images" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_a_data_dir_that_is_no_folder_is_refused_and_nothing_is_made(tmp_path) -> None:
    """A mistyped --data-dir was the torchvision download's target: it made <dir>/FashionMNIST/raw and then
    failed offline with a four-line error. Now one line, and nothing is created."""
    missing = tmp_path / "no" / "such"
    with pytest.raises(DataError, match=r"--data-dir .*/no/such is not a folder"):
        load_dataset("fashion-mnist", missing)
    assert not (tmp_path / "no").exists()
