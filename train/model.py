"""The lecture's convolutional denoising autoencoder, layer for layer.

The encoder maps a (B, 1, 28, 28) image in [0, 1] to a (B, latent_dim) code; the decoder maps the code
back to a (B, 1, 28, 28) image in [0, 1] (sigmoid output). `ModelConfig` is everything needed to rebuild
the module from a state dict, so it is saved next to the weights in every checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from train.fcn import FcnDenoiser

IMAGE_SIZE = 28
CHANNELS = 1
FEATURES = 32 * 3 * 3  # 288: the encoder's last feature map, flattened


@dataclass(frozen=True)
class ModelConfig:
    """Typed model configuration; the checkpoint stores `asdict(config)` beside the state dict."""

    latent_dim: int = 4
    hidden_dim: int = 128
    arch: str = "lecture"  # a key of MODEL_BUILDERS; checkpoints without it are the lecture's model
    # arch "fcn" (train/fcn.py): base channels, number of 2x downsamplings, 3x3 convolutions per stage.
    fcn_width: int = 32
    fcn_levels: int = 3
    fcn_depth: int = 1

    def __post_init__(self) -> None:
        if self.arch not in MODEL_BUILDERS:
            raise ValueError(f"ModelConfig.arch {self.arch!r}; valid: {', '.join(MODEL_BUILDERS)}")
        for name in ("latent_dim", "hidden_dim", "fcn_width", "fcn_levels", "fcn_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**data)


class Encoder(nn.Module):
    """(B, 1, 28, 28) -> (B, latent_dim)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1),  # (B, 8, 14, 14)
            nn.ReLU(True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),  # (B, 16, 7, 7)
            nn.BatchNorm2d(16),
            nn.ReLU(True),
            nn.Conv2d(16, 32, 3, stride=2, padding=0),  # (B, 32, 3, 3)
            nn.ReLU(True),
        )
        self.flatten = nn.Flatten(start_dim=1)  # (B, 288)
        self.lin = nn.Sequential(
            nn.Linear(FEATURES, config.hidden_dim),
            nn.ReLU(True),
            nn.Linear(config.hidden_dim, config.latent_dim),  # (B, latent_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(self.flatten(self.cnn(x)))


class Decoder(nn.Module):
    """(B, latent_dim) -> (B, 1, 28, 28) in [0, 1]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.lin = nn.Sequential(
            nn.Linear(config.latent_dim, config.hidden_dim),
            nn.ReLU(True),
            nn.Linear(config.hidden_dim, FEATURES),
            nn.ReLU(True),
        )
        self.unflatten = nn.Unflatten(dim=1, unflattened_size=(32, 3, 3))  # (B, 32, 3, 3)
        self.cnn = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 3, stride=2, output_padding=0),  # (B, 16, 7, 7)
            nn.BatchNorm2d(16),
            nn.ReLU(True),
            nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1),  # (B, 8, 14, 14)
            nn.BatchNorm2d(8),
            nn.ReLU(True),
            nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1),  # (B, 1, 28, 28)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.cnn(self.unflatten(self.lin(z))))


class DenoisingAutoencoder(nn.Module):
    """Noisy image -> denoised image; `encode` and `decode` are the two halves the exporter splits."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _build_fcn(config: ModelConfig) -> nn.Module:
    model = FcnDenoiser(config.fcn_width, config.fcn_levels, config.fcn_depth)
    model.config = config  # as DenoisingAutoencoder.config: the module says what it was built from
    return model


# arch -> builder. "lecture": the fixed-size autoencoder above (encoder, decoder, denoiser);
# "fcn": the fully convolutional denoiser of train/fcn.py (any height and width, denoiser only).
MODEL_BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "lecture": DenoisingAutoencoder,
    "fcn": _build_fcn,
}


def build_model(config: ModelConfig) -> nn.Module:
    """The module `config.arch` names, freshly initialised."""
    return MODEL_BUILDERS[config.arch](config)
