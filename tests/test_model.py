"""The lecture's architecture, layer for layer."""

from __future__ import annotations

import pytest
import torch

from train.model import DenoisingAutoencoder, ModelConfig

ENCODER_SHAPES = [  # (module path, output shape without batch)
    ("encoder.cnn.0", (8, 14, 14)),  # Conv2d(1, 8, 3, s2, p1)
    ("encoder.cnn.2", (16, 7, 7)),  # Conv2d(8, 16, 3, s2, p1)
    ("encoder.cnn.3", (16, 7, 7)),  # BatchNorm2d
    ("encoder.cnn.5", (32, 3, 3)),  # Conv2d(16, 32, 3, s2, p0)
    ("encoder.flatten", (288,)),
    ("encoder.lin.0", (128,)),
    ("encoder.lin.2", (4,)),
]
DECODER_SHAPES = [
    ("decoder.lin.0", (128,)),
    ("decoder.lin.2", (288,)),
    ("decoder.unflatten", (32, 3, 3)),
    ("decoder.cnn.0", (16, 7, 7)),  # ConvT(32, 16, 3, s2, op0)
    ("decoder.cnn.1", (16, 7, 7)),  # BatchNorm2d
    ("decoder.cnn.3", (8, 14, 14)),  # ConvT(16, 8, 3, s2, p1, op1)
    ("decoder.cnn.4", (8, 14, 14)),  # BatchNorm2d
    ("decoder.cnn.6", (1, 28, 28)),  # ConvT(8, 1, 3, s2, p1, op1)
]


@pytest.mark.parametrize("path,shape", ENCODER_SHAPES + DECODER_SHAPES, ids=lambda v: str(v))
def test_layer_shapes(path: str, shape: tuple[int, ...]) -> None:
    model = DenoisingAutoencoder().eval()
    module = model.get_submodule(path)
    seen: list[torch.Size] = []
    module.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    model(torch.rand(3, 1, 28, 28))
    assert seen == [torch.Size((3, *shape))]


def test_layer_types_match_the_seed() -> None:
    model = DenoisingAutoencoder()
    enc = [type(m).__name__ for m in model.encoder.cnn] + [type(m).__name__ for m in model.encoder.lin]
    dec = [type(m).__name__ for m in model.decoder.lin] + [type(m).__name__ for m in model.decoder.cnn]
    assert enc == [
        "Conv2d",
        "ReLU",
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "Conv2d",
        "ReLU",
        "Linear",
        "ReLU",
        "Linear",
    ]
    assert dec == [
        "Linear", "ReLU", "Linear", "ReLU",
        "ConvTranspose2d", "BatchNorm2d", "ReLU", "ConvTranspose2d", "BatchNorm2d", "ReLU", "ConvTranspose2d",
    ]  # fmt: skip
    convs = [m for m in model.encoder.cnn if isinstance(m, torch.nn.Conv2d)]
    assert [(c.stride, c.padding) for c in convs] == [((2, 2), (1, 1)), ((2, 2), (1, 1)), ((2, 2), (0, 0))]
    convts = [m for m in model.decoder.cnn if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.padding, c.output_padding) for c in convts] == [
        ((0, 0), (0, 0)),
        ((1, 1), (1, 1)),
        ((1, 1), (1, 1)),
    ]


@pytest.mark.parametrize("latent_dim", [1, 4, 64])
def test_encode_decode_forward(latent_dim: int) -> None:
    model = DenoisingAutoencoder(ModelConfig(latent_dim=latent_dim)).eval()
    x = torch.rand(5, 1, 28, 28)
    z = model.encode(x)
    assert z.shape == (5, latent_dim)
    y = model.decode(z)
    assert y.shape == (5, 1, 28, 28)
    assert torch.equal(y, model(x))
    with torch.no_grad():
        big = model.decode(torch.randn(5, latent_dim) * 1e3)  # saturating inputs still land in [0, 1]
    assert float(big.min()) >= 0.0 and float(big.max()) <= 1.0


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_config_rejects_bad_latent(bad) -> None:
    with pytest.raises(ValueError, match="latent_dim"):
        ModelConfig(latent_dim=bad)


def test_config_round_trip_and_unknown_fields() -> None:
    config = ModelConfig(latent_dim=16)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"latent_dim": 4, "depth": 3})
