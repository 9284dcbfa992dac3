"""One noise model: the runtime's numpy formula and training's torch path give the same noisy images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtimes.noise import NOISE_FORMULA, add_noise, apply_noise, check_std, noise_model
from train.data import add_noise as torch_add_noise


@pytest.mark.parametrize("std", [0.0, 0.1, 0.3, 1.5])
def test_torch_and_numpy_paths_agree_for_the_same_samples(std: float) -> None:
    rng = np.random.default_rng(0)
    clean = rng.random((4, 1, 28, 28), dtype=np.float32)
    generator = torch.Generator().manual_seed(7)
    noisy_torch = torch_add_noise(torch.from_numpy(clean), std, generator).numpy()
    normal = torch.randn(clean.shape, generator=torch.Generator().manual_seed(7)).numpy()
    noisy_numpy = apply_noise(clean, np.float32(std), normal)
    np.testing.assert_array_equal(noisy_torch, noisy_numpy)


def test_add_noise_is_clipped_float32_and_reproducible() -> None:
    clean = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28)
    a = add_noise(clean, 0.3, np.random.default_rng(3))
    b = add_noise(clean, 0.3, np.random.default_rng(3))
    assert a.dtype == np.float32 and a.shape == clean.shape
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - clean).mean() > 0.1  # noise was really added
    assert (a == 0).any() and (a == 1).any()  # and clipped at both ends


def test_noise_metadata_and_validation() -> None:
    assert noise_model(0.3) == {
        "kind": "gaussian_clipped",
        "std": 0.3,
        "clip": [0.0, 1.0],
        "formula": NOISE_FORMULA,
    }
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite number >= 0"):
            check_std(bad)
