"""Shared fixtures: real Fashion-MNIST data, one briefly trained real model, and its real ONNX export.

Session-scoped because training and exporting cost seconds; every test that needs a model shares one.
Nothing here is a mock: the checkpoint is trained by train.loop on real images and the ONNX files are
exported by ae_export.export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Enough to beat the noisy input's PSNR (about 15 dB vs 12.8 dB) in about 6 s on 2 cores.
SMALL_TRAIN = {"limit": 4000, "batch_size": 32, "epochs": 2}


@pytest.fixture(scope="session")
def fmnist():
    from train.data import DataError, load_dataset

    try:
        return load_dataset("fashion-mnist", download=False)
    except DataError as err:
        pytest.skip(f"Fashion-MNIST not installed ({err}); `make setup` installs it")


@pytest.fixture(scope="session")
def fmnist_test(fmnist) -> np.ndarray:
    """(N, 28, 28) uint8 real test images, N = 2000."""
    return fmnist.val.images[:2000].numpy()


@pytest.fixture(scope="session")
def trained_checkpoint(fmnist, tmp_path_factory) -> Path:
    """A model trained briefly (noisy -> clean) on real Fashion-MNIST; returns checkpoint.pt's path."""
    from train.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("trained")
    config = TrainConfig(out=str(out), device="cpu", **SMALL_TRAIN)
    train(config, quiet=True, dataset=fmnist, log=lambda _line: None)
    return out / "checkpoint.pt"


@pytest.fixture(scope="session")
def onnx_dir(trained_checkpoint, tmp_path_factory) -> Path:
    """encoder.onnx, decoder.onnx, denoiser.onnx exported from `trained_checkpoint` (parity not run here).

    Tuned for AVX-512 whatever the CPU, so every machine tests the fast graph with both of its passes
    (the stacked encoder runs, slower, on AVX2 too); tests/test_export.py covers the other targets."""
    from ae_export.export import export_all
    from train.checkpoint import load_checkpoint

    out = tmp_path_factory.mktemp("onnx")
    export_all(load_checkpoint(trained_checkpoint), out, log=lambda _line: None, cpu_target="avx512")
    return out


@pytest.fixture(scope="session")
def portable_onnx_dir(trained_checkpoint, tmp_path_factory) -> Path:
    """The same three files exported with `graph="portable"` (torch's ConvTranspose, no Col2Im)."""
    from ae_export.export import export_all
    from train.checkpoint import load_checkpoint

    out = tmp_path_factory.mktemp("onnx-portable")
    export_all(load_checkpoint(trained_checkpoint), out, graph="portable", log=lambda _line: None)
    return out
