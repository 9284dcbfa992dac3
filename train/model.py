"""The denoising autoencoders: the lecture's model, layer for layer, and a wider spatial-latent family.

Every architecture maps a (B, 1, 28, 28) image in [0, 1] through an encoder to a flat (B, latent_dim)
code and through a decoder back to a (B, 1, 28, 28) image in [0, 1] (sigmoid output), so every shape
exports as the same three files (encoder, decoder, denoiser) with the same contracts.

- `lecture` (the default): three strided convs, a Linear bottleneck of `hidden_dim` -> `latent_dim`, and
  the mirrored decoder. Its module tree and parameter names never change, so old checkpoints load.
- `fcn` (train/fcn.py): the fully convolutional photograph denoiser, any height and width, no latent.
- `spatial`: no Linear bottleneck. The code is a (latent_dim / 49, 7, 7) feature map, flattened: it keeps
  *where* things are, which a 4- or 64-number vector cannot, and that is what buys sharp edges. Stages at
  14x14 and 7x7 of `2 * width` and `4 * width` channels, each with `blocks` residual 3x3 convs.

`ModelConfig` is everything needed to rebuild the module from a state dict, so it is saved next to the
weights in every checkpoint and written into the ONNX metadata. Fields an architecture does not use must
keep their defaults (an ignored knob would be a silent lie about the model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from train.fcn import FcnDenoiser

IMAGE_SIZE = 28
CHANNELS = 1
FEATURES = 32 * 3 * 3  # 288: the lecture encoder's last feature map, flattened
LATENT_SIDE = 7  # the spatial code is (C, 7, 7): two stride-2 stages from 28
LATENT_CELLS = LATENT_SIDE * LATENT_SIDE


@dataclass(frozen=True)
class ModelConfig:
    """Typed model configuration; the checkpoint stores `asdict(config)` beside the state dict.

    Checkpoints written before `arch`, `width` and `blocks` existed hold only latent_dim/hidden_dim; the
    defaults are the lecture's model, so they load unchanged.
    """

    latent_dim: int = 4
    hidden_dim: int = 128
    arch: str = "lecture"  # a key of MODEL_BUILDERS; checkpoints without it are the lecture's model
    # arch "fcn" (train/fcn.py): base channels, number of 2x downsamplings, 3x3 convolutions per stage.
    fcn_width: int = 32
    fcn_levels: int = 3
    fcn_depth: int = 1
    # arch "spatial": channels of the first stage (the next have 2x and 4x), residual 3x3 convs per stage.
    width: int = 8
    blocks: int = 0

    def __post_init__(self) -> None:
        if self.arch not in MODEL_BUILDERS:
            raise ValueError(f"ModelConfig.arch {self.arch!r}; valid: {', '.join(MODEL_BUILDERS)}")
        for name in ("latent_dim", "hidden_dim", "fcn_width", "fcn_levels", "fcn_depth", "width", "blocks"):
            value = getattr(self, name)
            low = 0 if name == "blocks" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"ModelConfig.{name} must be an int >= {low}, got {value!r}")
        if self.arch in ARCHS:
            ARCHS[self.arch].check(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**data)

    def dims(self) -> set[int]:
        """Every size an axis of this model can have (channels, sides, features): for batch-axis guards."""
        if self.arch == "fcn":
            return {CHANNELS, IMAGE_SIZE, *_lecture_dims(self), *(self.fcn_width * k for k in (1, 2, 4))}
        return {CHANNELS, IMAGE_SIZE, *ARCHS[self.arch].dims(self)}


def _require_defaults(config: ModelConfig, names: tuple[str, ...]) -> None:
    defaults = {f.name: f.default for f in fields(ModelConfig)}
    changed = [n for n in names if getattr(config, n) != defaults[n]]
    if changed:
        shown = ", ".join(f"{n}={getattr(config, n)!r} (default {defaults[n]!r})" for n in changed)
        raise ValueError(f"arch {config.arch!r} does not use {shown}; leave them at their defaults")


# ------------------------------------------------------------------------------------------------ lecture


class Encoder(nn.Module):
    """The lecture's encoder: (B, 1, 28, 28) -> (B, latent_dim)."""

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
    """The lecture's decoder: (B, latent_dim) -> (B, 1, 28, 28) in [0, 1]."""

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


def _check_lecture(config: ModelConfig) -> None:
    _require_defaults(config, ("width", "blocks"))


def _lecture_dims(config: ModelConfig) -> set[int]:
    return {3, 7, 8, 14, 16, 32, FEATURES, config.latent_dim, config.hidden_dim}


# ------------------------------------------------------------------------------------------------ spatial


class ResidualConv(nn.Module):
    """x + BN(conv3x3(x)), then ReLU: one more 3x3 view per block at the cost of one conv, same shape."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn(self.conv(x)))


def _stage(channels: int, blocks: int) -> list[nn.Module]:
    return [ResidualConv(channels) for _ in range(blocks)]


class SpatialEncoder(nn.Module):
    """(B, 1, 28, 28) -> (B, latent_dim): a (latent_dim / 49, 7, 7) feature map, flattened."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        w = config.width
        self.cnn = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),  # (B, w, 28, 28)
            nn.ReLU(True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False),  # (B, 2w, 14, 14)
            nn.BatchNorm2d(2 * w),
            nn.ReLU(True),
            *_stage(2 * w, config.blocks),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False),  # (B, 4w, 7, 7)
            nn.BatchNorm2d(4 * w),
            nn.ReLU(True),
            *_stage(4 * w, config.blocks),
            nn.Conv2d(4 * w, config.latent_dim // LATENT_CELLS, 1),  # (B, C, 7, 7)
        )
        self.flatten = nn.Flatten(start_dim=1)  # (B, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.cnn(x))


class SpatialDecoder(nn.Module):
    """(B, latent_dim) -> (B, 1, 28, 28) in [0, 1]; mirrors SpatialEncoder."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        w = config.width
        code = config.latent_dim // LATENT_CELLS
        self.unflatten = nn.Unflatten(dim=1, unflattened_size=(code, LATENT_SIDE, LATENT_SIDE))
        self.cnn = nn.Sequential(
            nn.Conv2d(code, 4 * w, 3, padding=1, bias=False),  # (B, 4w, 7, 7)
            nn.BatchNorm2d(4 * w),
            nn.ReLU(True),
            *_stage(4 * w, config.blocks),
            nn.ConvTranspose2d(4 * w, 2 * w, 3, stride=2, padding=1, output_padding=1, bias=False),  # 14
            nn.BatchNorm2d(2 * w),
            nn.ReLU(True),
            *_stage(2 * w, config.blocks),
            nn.ConvTranspose2d(2 * w, w, 3, stride=2, padding=1, output_padding=1, bias=False),  # 28
            nn.BatchNorm2d(w),
            nn.ReLU(True),
            nn.Conv2d(w, 1, 3, padding=1),  # (B, 1, 28, 28)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.cnn(self.unflatten(z)))


def _check_spatial(config: ModelConfig) -> None:
    _require_defaults(config, ("hidden_dim",))
    if config.latent_dim % LATENT_CELLS:
        raise ValueError(
            f"arch 'spatial': latent_dim {config.latent_dim} must be a multiple of {LATENT_CELLS} "
            f"(C x {LATENT_SIDE} x {LATENT_SIDE}), e.g. {LATENT_CELLS * 4} or {LATENT_CELLS * 8}"
        )


def _spatial_dims(config: ModelConfig) -> set[int]:
    w = config.width
    return {7, 14, w, 2 * w, 4 * w, config.latent_dim // LATENT_CELLS, config.latent_dim}


# --------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Arch:
    """One autoencoder shape: its encoder and decoder classes, its config check and its axes' sizes."""

    encoder: Callable[[ModelConfig], nn.Module]
    decoder: Callable[[ModelConfig], nn.Module]
    check: Callable[[ModelConfig], None]
    dims: Callable[[ModelConfig], set[int]]


ARCHS: dict[str, Arch] = {
    "lecture": Arch(Encoder, Decoder, _check_lecture, _lecture_dims),
    "spatial": Arch(SpatialEncoder, SpatialDecoder, _check_spatial, _spatial_dims),
}


class DenoisingAutoencoder(nn.Module):
    """Noisy image -> denoised image; `encode` and `decode` are the two halves the exporter splits."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        arch = ARCHS[self.config.arch]
        self.encoder = arch.encoder(self.config)
        self.decoder = arch.decoder(self.config)

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


# arch -> builder. "lecture" and "spatial": fixed-size autoencoders (encoder, decoder, denoiser; their
# parts in ARCHS); "fcn": the fully convolutional denoiser of train/fcn.py (any height and width, denoiser
# only).
MODEL_BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "lecture": DenoisingAutoencoder,
    "spatial": DenoisingAutoencoder,
    "fcn": _build_fcn,
}


def build_model(config: ModelConfig) -> nn.Module:
    """The module `config.arch` names, freshly initialised."""
    return MODEL_BUILDERS[config.arch](config)
