"""`ae-train`: train the convolutional denoising autoencoder. Thin: parses, calls train.loop.train, reports.

Values come from three layers, later ones winning: TrainConfig's defaults (the lecture recipe), the
chosen `--preset`, then the flags given explicitly on the command line.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import Any

from train.data import DATASETS, DataError
from train.loop import DEVICES, LOSSES, SCHEDULES, TARGETS, TrainConfig, train
from train.model import ARCHS
from train.presets import DEFAULT_PRESET, PRESETS, preset_values

DEFAULTS = TrainConfig()
# Flags a preset may set: their argparse default is None ("not given"), so a preset value is only
# overridden by a flag the user actually typed.
RECIPE_FLAGS: dict[str, type] = {
    "epochs": int,
    "batch_size": int,
    "arch": str,
    "latent_dim": int,
    "hidden_dim": int,
    "width": int,
    "blocks": int,
    "lr": float,
    "schedule": str,
    "weight_decay": float,
    "noise_factor": float,
}
CHOICES: dict[str, tuple[str, ...]] = {"arch": tuple(ARCHS), "schedule": SCHEDULES}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ae-train",
        description="Train the convolutional denoising autoencoder (noisy -> clean by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default=DEFAULT_PRESET,
        help="; ".join(f"{name}: {preset.summary}" for name, preset in PRESETS.items()),
    )
    p.add_argument("--dataset", choices=DATASETS, default=DEFAULTS.dataset)
    p.add_argument("--data-dir", default=None, help="folder with idx files, or of images for 'folder'")
    for name, kind in RECIPE_FLAGS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            choices=CHOICES.get(name),
            default=None,
            help=f"overrides the preset (lecture: {getattr(DEFAULTS, name)})",
        )
    p.add_argument("--loss", choices=LOSSES, default=DEFAULTS.loss)
    p.add_argument(
        "--target",
        choices=TARGETS,
        default=DEFAULTS.target,
        help="'clean' trains a denoiser; 'noisy' reproduces the lecture's slide (loss vs the noisy input)",
    )
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--device", choices=DEVICES, default=DEFAULTS.device)
    p.add_argument("--out", default=DEFAULTS.out, help="folder for checkpoint.pt, metrics.json, samples.png")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt up to --epochs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- preset <- explicit flags; TrainConfig and ModelConfig validate the result."""
    values: dict[str, Any] = {**asdict(DEFAULTS), **preset_values(args.preset)}
    values.update({name: getattr(args, name) for name in RECIPE_FLAGS if getattr(args, name) is not None})
    values.update(
        dataset=args.dataset,
        data_dir=args.data_dir,
        loss=args.loss,
        target=args.target,
        seed=args.seed,
        device=args.device,
        out=args.out,
        limit=args.limit,
    )
    config = TrainConfig(**values)
    config.model_config()  # a bad combination of model knobs fails here, before any data is read
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        checkpoint = train(config, resume=args.resume, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {args.out}/checkpoint.pt holds the last whole epoch", file=sys.stderr)
        return 130
    except (DataError, ValueError, RuntimeError, OSError) as err:
        print(f"ae-train: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/checkpoint.pt (epoch {checkpoint.epoch}), metrics.json, samples.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
