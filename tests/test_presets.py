"""Presets and model shapes: flags over presets over defaults, the lecture shape unchanged, every preset
trains, exports with parity and runs in the torch-free runtime."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from ae_export.export import choose_example_batch
from tests.helpers import run_cli, run_script
from train.cli import build_parser, config_from_args
from train.loop import TrainConfig, learning_rate
from train.model import ARCHS, DenoisingAutoencoder, ModelConfig
from train.presets import PRESETS, preset_values

# The lecture model's parameter names: checkpoints written before `arch` existed must keep loading.
LECTURE_KEYS = [
    "encoder.cnn.0.weight", "encoder.cnn.0.bias", "encoder.cnn.2.weight", "encoder.cnn.2.bias",
    "encoder.cnn.3.weight", "encoder.cnn.3.bias", "encoder.cnn.3.running_mean", "encoder.cnn.3.running_var",
    "encoder.cnn.3.num_batches_tracked", "encoder.cnn.5.weight", "encoder.cnn.5.bias",
    "encoder.lin.0.weight", "encoder.lin.0.bias", "encoder.lin.2.weight", "encoder.lin.2.bias",
    "decoder.lin.0.weight", "decoder.lin.0.bias", "decoder.lin.2.weight", "decoder.lin.2.bias",
    "decoder.cnn.0.weight", "decoder.cnn.0.bias", "decoder.cnn.1.weight", "decoder.cnn.1.bias",
    "decoder.cnn.1.running_mean", "decoder.cnn.1.running_var", "decoder.cnn.1.num_batches_tracked",
    "decoder.cnn.3.weight", "decoder.cnn.3.bias", "decoder.cnn.4.weight", "decoder.cnn.4.bias",
    "decoder.cnn.4.running_mean", "decoder.cnn.4.running_var", "decoder.cnn.4.num_batches_tracked",
    "decoder.cnn.6.weight", "decoder.cnn.6.bias",
]  # fmt: skip


def parse(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_lecture_is_the_default_and_unchanged() -> None:
    assert parse() == TrainConfig()
    assert TrainConfig().model_config() == ModelConfig()
    model = DenoisingAutoencoder()
    assert list(model.state_dict()) == LECTURE_KEYS
    assert sum(p.numel() for p in model.parameters()) == 87_125


def test_config_written_before_arch_existed_loads_as_lecture() -> None:
    old = {"latent_dim": 4, "hidden_dim": 128}
    assert ModelConfig.from_dict(old) == ModelConfig()
    old_recipe = {"epochs": 10, "latent_dim": 16, "lr": 1e-3, "seed": 0}
    assert TrainConfig.from_dict(old_recipe).model_config() == ModelConfig(latent_dim=16)


def test_preset_then_flags() -> None:
    quality = parse("--preset", "quality")
    assert quality.preset == "quality"
    assert asdict(quality).items() >= preset_values("quality").items()
    overridden = parse("--preset", "quality", "--epochs", "3", "--width", "4", "--lr", "0.01")
    assert (overridden.epochs, overridden.width, overridden.lr) == (3, 4, 0.01)
    assert overridden.arch == "spatial" and overridden.schedule == "cosine"
    assert parse("--latent-dim", "16").latent_dim == 16  # lecture with a flag, as before presets


def test_unknown_preset_and_arch_name_the_choices(capsys) -> None:
    with pytest.raises(SystemExit):
        parse("--preset", "best")
    assert "lecture" in capsys.readouterr().err
    with pytest.raises(ValueError, match="valid presets: lecture, balanced, quality"):
        preset_values("best")
    with pytest.raises(ValueError, match="valid: lecture, spatial, fcn"):
        ModelConfig(arch="mlp")


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"arch": "spatial", "latent_dim": 100}, "multiple of 49"),
        ({"arch": "spatial", "latent_dim": 392, "hidden_dim": 64}, "does not use hidden_dim"),
        ({"arch": "lecture", "width": 16}, "does not use width"),
        ({"arch": "lecture", "blocks": 1}, "does not use blocks"),
        ({"arch": "spatial", "latent_dim": 392, "width": 0}, "width must be an int >= 1"),
    ],
)
def test_bad_model_knobs_fail_naming_the_knob(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


def test_cli_rejects_a_bad_combination(tmp_path: Path) -> None:
    done = run_cli("train.cli", "--preset", "quality", "--latent-dim", "50", "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "multiple of 49" in done.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_shapes(name: str) -> None:
    config = TrainConfig(**preset_values(name)).model_config()
    model = DenoisingAutoencoder(config).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        z = model.encode(x)
        y = model.decode(z)
    assert z.shape == (3, config.latent_dim) and y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert choose_example_batch(config) not in config.dims()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_dims_cover_every_axis(arch: str) -> None:
    """The batch-axis guard needs every size an axis takes; collect them with hooks and compare."""
    config = ModelConfig(arch=arch, latent_dim=196) if arch == "spatial" else ModelConfig()
    model = DenoisingAutoencoder(config).eval()
    seen: set[int] = set()
    handles = [
        m.register_forward_hook(lambda _m, _i, out: seen.update(out.shape[1:])) for m in model.modules()
    ]
    with torch.no_grad():
        model(torch.rand(2, 1, 28, 28))
    for handle in handles:
        handle.remove()
    assert seen <= config.dims()


def test_cosine_schedule_warms_up_and_decays() -> None:
    config = TrainConfig(schedule="cosine", lr=0.01, epochs=2)
    rates = [learning_rate(config, step, 100) for step in range(100)]
    assert rates[0] < rates[4] == pytest.approx(0.01)  # 5 warm-up steps
    assert rates[-1] < 1e-4 and all(a >= b for a, b in zip(rates[5:], rates[6:], strict=False))
    assert learning_rate(TrainConfig(), 50, 100) == 1e-3  # the lecture's constant rate


RUNTIME_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["torch"] = None  # any `import torch` now raises ImportError
    import numpy as np
    from runtimes import Denoiser

    denoiser = Denoiser(sys.argv[1])
    image = np.zeros((28, 28), np.uint8)
    assert denoiser(image).shape == (28, 28)
    latent = denoiser.encode(image)
    assert denoiser.decode(latent).shape == (28, 28)
    meta = denoiser.metadata
    print(json.dumps({"latent": list(latent.shape), "model_config": meta.model_config,
                      "preset": meta.training["config"]["preset"]}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_trains_exports_and_serves_without_torch(fmnist, name: str, tmp_path: Path) -> None:
    """A few real steps of each preset, `ae-export` with the full parity matrix, the runtime without torch."""
    run = tmp_path / "run"
    done = run_cli(
        "train.cli", "--preset", name, "--limit", "256", "--batch-size", "64", "--epochs", "1",
        "--out", str(run), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    onnx_dir = tmp_path / "onnx"
    exported = run_cli("ae_export.cli", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(onnx_dir))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    parity = json.loads((onnx_dir / "parity.json").read_text())
    assert parity["passed"] is True
    proc = run_script(RUNTIME_SCRIPT, str(onnx_dir))
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    expected = TrainConfig(**preset_values(name)).model_config()
    assert seen["preset"] == name
    assert ModelConfig.from_dict(seen["model_config"]) == expected
    assert seen["latent"] == [expected.latent_dim]
