"""`ae-train --compile`: the same losses as eager within float tolerance, a checkpoint any model loads."""

from __future__ import annotations

import pytest
import torch

from train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from train.loop import TrainConfig, train
from train.model import DenoisingAutoencoder, ModelConfig

TINY = {"limit": 256, "batch_size": 64, "epochs": 1, "device": "cpu"}


@pytest.mark.slow
def test_compiled_training_matches_eager(fmnist, tmp_path) -> None:
    runs = {}
    for compiled in (False, True):
        config = TrainConfig(out=str(tmp_path / str(compiled)), compile=compiled, **TINY)
        runs[compiled] = train(config, quiet=True, dataset=fmnist, log=lambda _line: None)
    eager, fast = runs[False], runs[True]
    # Inductor fuses and reorders float32 sums: a few ULPs per step, ~1e-5 relative after 4 steps.
    assert fast.metrics[0]["train_loss"] == pytest.approx(eager.metrics[0]["train_loss"], rel=1e-4)
    assert fast.metrics[0]["val_loss"] == pytest.approx(eager.metrics[0]["val_loss"], rel=1e-4)
    assert not any(k.startswith("_orig_mod.") for k in fast.model_state)
    reloaded = load_checkpoint(tmp_path / "True" / "checkpoint.pt").build_model()  # plain, uncompiled
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), eager.build_model()(x), atol=1e-3)


def test_compiled_prefixes_are_stripped(tmp_path) -> None:
    """A state dict saved from a torch.compile'd module ("_orig_mod." names) loads into a plain model."""
    model = DenoisingAutoencoder(ModelConfig())
    prefixed = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(Checkpoint(ModelConfig(), prefixed, epoch=1), tmp_path / "c.pt")
    rebuilt = load_checkpoint(tmp_path / "c.pt").build_model()
    for name, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], value)
