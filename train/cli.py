"""`ae-train`: train a denoiser. Thin: parses, calls train.loop.train (or train.photo_train), reports.

Values come from three layers, later ones winning: TrainConfig's defaults (the lecture recipe), the
chosen `--preset`, then the flags given explicitly on the command line. `--preset photo` (or
`--dataset photos`) trains the fully convolutional photograph denoiser with its own recipe.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import Any

from train.data import DATASETS, DataError
from train.loop import DEVICES, LOSSES, SCHEDULES, TARGETS, TrainConfig, train
from train.model import MODEL_BUILDERS
from train.photo_train import PRECISIONS, PhotoTrainConfig, train_photos
from train.photos import PhotoDataError
from train.presets import DEFAULT_PRESET, PRESETS, preset_values

DEFAULTS = TrainConfig()
PHOTO_DEFAULTS = PhotoTrainConfig()
PHOTO_PRESET = "photo"  # the fully convolutional denoiser trained on photographs (train/photo_train.py)
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
CHOICES: dict[str, tuple[str, ...]] = {
    "arch": tuple(a for a in MODEL_BUILDERS if a != "fcn"),  # fcn: --preset photo
    "schedule": SCHEDULES,
}
PHOTO_NOTES = {
    "batch_size": f" (photos: {PHOTO_DEFAULTS.batch_size} crops)",
    "lr": f" (photos: {PHOTO_DEFAULTS.lr})",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ae-train",
        description="Train the convolutional denoising autoencoder (noisy -> clean by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    helps = [f"{name}: {preset.summary}" for name, preset in PRESETS.items()]
    helps.append(
        f"{PHOTO_PRESET}: fully convolutional denoiser for photographs of any size (= --dataset photos)"
    )
    p.add_argument(
        "--preset", choices=(*PRESETS, PHOTO_PRESET), default=DEFAULT_PRESET, help="; ".join(helps)
    )
    p.add_argument(
        "--dataset",
        choices=(*DATASETS, "photos"),
        default=DEFAULTS.dataset,
        help="'photos': random crops of scikit-image's bundled photographs (or of --data-dir's images)",
    )
    p.add_argument(
        "--data-dir", default=None, help="folder with idx files, or of images for 'folder'/'photos'"
    )
    for name, kind in RECIPE_FLAGS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            choices=CHOICES.get(name),
            default=None,
            help=f"overrides the preset (lecture: {getattr(DEFAULTS, name)}){PHOTO_NOTES.get(name, '')}",
        )
    p.add_argument(
        "--steps", type=int, default=PHOTO_DEFAULTS.steps, help="photos: optimizer steps (the budget)"
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
    p.add_argument(
        "--out",
        default=None,
        help=f"folder for checkpoint.pt, metrics.json (default {DEFAULTS.out}; photos: {PHOTO_DEFAULTS.out})",
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt up to --epochs")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.compile,
        help="torch.compile + channels_last for the training step (faster steps, seconds of compiling)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads", type=int, default=None, help="photos: torch CPU threads (default: torch's, all cores)"
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=PHOTO_DEFAULTS.precision,
        help="photos: arithmetic of the training step; auto = bf16 autocast where the hardware has bf16 "
        "(AMX / AVX512-BF16 CPUs, recent GPUs), else fp32. Weights, validation and export stay fp32",
    )
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
        out=args.out or DEFAULTS.out,
        limit=args.limit,
        compile=args.compile,
    )
    return TrainConfig(**values)


def _train_photos(args: argparse.Namespace) -> int:
    if args.resume:
        print(
            "ae-train: error: --resume is not supported for photos (runs are step budgets)", file=sys.stderr
        )
        return 2
    try:
        config = PhotoTrainConfig(
            data_dir=args.data_dir,
            steps=args.steps,
            batch_size=args.batch_size or PHOTO_DEFAULTS.batch_size,
            lr=args.lr if args.lr is not None else PHOTO_DEFAULTS.lr,
            seed=args.seed,
            device="cuda" if args.device == "cuda" else "cpu",
            out=args.out or PHOTO_DEFAULTS.out,
            eval_every=min(PHOTO_DEFAULTS.eval_every, args.steps),
            threads=args.threads,
            precision=args.precision,
        )
        checkpoint = train_photos(config)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {config.out}/checkpoint.pt holds the last evaluated step", file=sys.stderr)
        return 130
    except (PhotoDataError, ValueError, RuntimeError, OSError) as err:
        print(f"ae-train: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {config.out}/checkpoint.pt (step {checkpoint.epoch}), metrics.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.preset == PHOTO_PRESET or args.dataset == "photos":
        return _train_photos(args)
    args.out = args.out or DEFAULTS.out
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
