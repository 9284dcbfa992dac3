"""Checkpoints that rebuild the model by themselves (nanoGPT's way).

A checkpoint is a plain dict of tensors and JSON-like values, so `torch.load(weights_only=True)` reads it:
the typed `ModelConfig` is stored as `asdict(config)` next to the state dict and rebuilt on load. Writes
are atomic (temp file + rename): an interrupted run always leaves the last whole epoch loadable.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runtimes.fileio import atomic_save, unusable_folder
from runtimes.manifest import sha256_file
from train.model import ModelConfig, build_model

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or whose config does not match its weights."""


@dataclass
class Checkpoint:
    model_config: ModelConfig
    model_state: dict[str, torch.Tensor]
    epoch: int = 0
    train_config: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    dataset: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the file it was read from; None for one made in memory (not yet saved)
    sha256: str | None = None

    def build_model(self) -> nn.Module:
        """The model in eval mode with these weights; a config/weights mismatch is a CheckpointError."""
        model = build_model(self.model_config)
        try:
            model.load_state_dict(self.model_state, strict=True)
        except RuntimeError as err:
            where = self.path or "checkpoint"
            raise CheckpointError(
                f"{where}: weights do not match its model config {self.model_config}: {err}"
            ) from err
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model_config": self.model_config.to_dict(),
            "model": self.model_state,
            "epoch": self.epoch,
            "train_config": self.train_config,
            "optimizer": self.optimizer_state,
            "metrics": self.metrics,
            "dataset": self.dataset,
            "versions": {"torch": str(torch.__version__)},
        }


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = checkpoint.to_dict()
    atomic_save(path, lambda handle: torch.save(payload, handle))


def run_folder(out: str | Path) -> Path:
    """A training run's --out folder, checked before any work: a file in its place or a folder that takes
    no new file fails now (ValueError), not after an epoch. Creates nothing: the loop makes it as it saves
    its first checkpoint, so a refused run leaves no empty folder."""
    refused = unusable_folder(out)
    if refused is not None:
        raise ValueError(f"--out {refused}")
    return Path(out)


# The type of each entry `to_dict` writes (an int: one >= 0); all but _REQUIRED may be absent or None.
# Checked before use, so a malformed file is a CheckpointError naming it, not an AttributeError.
_REQUIRED = ("model", "model_config")
_FIELD_TYPES: dict[str, type] = {
    "model": dict,
    "model_config": dict,
    "epoch": int,
    "train_config": dict,
    "optimizer": dict,
    "metrics": list,
    "dataset": dict,
}


def _typed(raw: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    """raw[key] if it is a `kind` (None where it may be absent); else a CheckpointError naming the file."""
    value = raw.get(key)
    if value is None and key not in _REQUIRED:
        return value
    if isinstance(value, kind) and not isinstance(value, bool) and not (kind is int and value < 0):
        return value
    raise CheckpointError(
        f"{path}: {key!r} is a {type(value).__name__} ({value!r:.60}), expected a {kind.__name__}"
        + (" >= 0" if kind is int else "")
    )


def _load_error(err: BaseException) -> str:
    """torch.load's error in one line. Its weights-only refusal runs over six lines and advises
    `weights_only=False`, which runs any code a tampered file holds: only the unpickler's reason is kept."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        return f"{type(err).__name__}: torch.load(weights_only=True) refused it: {' '.join(reason.split())}"
    lines = text.strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else 'no message'}"


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint with `weights_only=True`; every fault is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found (train one with `ae-train` / `make train`)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({_load_error(err)})") from err
    if not isinstance(raw, dict) or "model" not in raw or "model_config" not in raw:
        raise CheckpointError(f"{path}: not an ae-export checkpoint (no 'model' / 'model_config' entries)")
    if raw.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {raw.get('format')!r}, expected {CHECKPOINT_FORMAT}"
        )
    fields = {key: _typed(raw, key, kind, path) for key, kind in _FIELD_TYPES.items()}
    try:
        config = ModelConfig.from_dict(dict(fields["model_config"]))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: bad model_config: {err}") from err
    model = fields["model"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        raise CheckpointError(f"{path}: 'model' is not a state dict (parameter name -> tensor)")
    dataset = fields["dataset"] or {}
    # What ae-export and ae-train read of it ('source': where the data came from): a number there was a
    # TypeError traceback from ae-export.
    bad = [key for key in ("name", "source") if not isinstance(dataset.get(key, ""), str | None)]
    if bad:
        raise CheckpointError(f"{path}: 'dataset' {', '.join(bad)} must be a string; got {dataset!r}")
    train_config = fields["train_config"] or {}
    # What ae-export reads of it for the metadata (the noise model, the target, the photos' folder): a
    # list as noise_factor was a TypeError traceback, NaN a JSON error naming neither file nor key.
    noise = train_config.get("noise_factor", 0.3)
    if type(noise) not in (int, float) or not 0 <= noise <= 10:
        raise CheckpointError(f"{path}: train_config noise_factor must be a number in [0, 10]; got {noise!r}")
    for key, default in (("target", "clean"), ("data_dir", None)):
        if not isinstance(train_config.get(key, default), str | None):
            raise CheckpointError(f"{path}: train_config {key} must be a string; got {train_config[key]!r}")
    metrics = fields["metrics"] or []
    if not all(isinstance(row, dict) for row in metrics):
        raise CheckpointError(f"{path}: 'metrics' must be a list of dicts (one per epoch)")
    checkpoint = Checkpoint(
        model_config=config,
        # A state dict taken from a torch.compile'd module carries "_orig_mod." prefixes; the plain
        # module's names are the contract, so strip them and any checkpoint loads into an uncompiled model.
        model_state={k.removeprefix("_orig_mod."): v for k, v in model.items()},
        epoch=fields["epoch"] or 0,
        train_config=dict(train_config),
        optimizer_state=fields["optimizer"],
        metrics=list(metrics),
        dataset=dict(dataset),
        path=path,
        sha256=sha256_file(path),
    )
    checkpoint.build_model()  # fail here, naming the file, if config and weights disagree
    return checkpoint
