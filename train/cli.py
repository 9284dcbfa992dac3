"""`ae-train`: train a denoiser. Thin: parses, calls train.loop.train (or train.photo_train), reports.

Values come from three layers, later ones winning: TrainConfig's defaults (the lecture recipe), the
chosen `--preset`, then the flags given explicitly on the command line. `--preset photo` (or
`--dataset photos`) trains the fully convolutional photograph denoiser with its own recipe.

A flag given explicitly that cannot take effect is an error naming it and why, never silently dropped:
lecture-loop flags with `--preset photo`, photo flags without it, and with `--resume` recipe flags that
differ from the checkpoint's (a resumed run keeps its recipe). "Given explicitly" is read from argparse
itself, not by comparing values with the defaults: every such flag's default is None, and the defaults
are filled in after parsing (the help text names them).

Exit codes: 0 trained (or already trained to --epochs); 2 bad input (data, a value, a flag that does
not apply); 3 training diverged (a loss that is not finite: nothing of the diverged epoch or steps is
saved, and the message says what checkpoint.pt holds); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runtimes.cli import float_at_least, nonnegative_int, positive_int, seed_int
from runtimes.extras import require_extra

require_extra("ae-train", "train", ("torch",))  # before the imports that need it

from train.checkpoint import CheckpointError, load_checkpoint
from train.data import DATASETS, DataError
from train.loop import (
    CHECKPOINT_NAME,
    DEVICES,
    LOSSES,
    SCHEDULES,
    TARGETS,
    TrainConfig,
    TrainingInterrupted,
    resolve_device,
    train,
)
from train.model import MODEL_BUILDERS
from train.photo_train import PRECISIONS, PhotoTrainConfig, train_photos
from train.photos import PhotoDataError
from train.presets import DEFAULT_PRESET, PRESETS, preset_values

DEFAULTS = TrainConfig()
PHOTO_DEFAULTS = PhotoTrainConfig()
PHOTO_PRESET = "photo"  # the fully convolutional denoiser trained on photographs (train/photo_train.py)
EXIT_DIVERGED = 3
# Flags a preset may set: their argparse default is None ("not given"), so a preset value is only
# overridden by a flag the user actually typed. Counts are checked as the flag's own argparse error
# ("argument --epochs: expected a positive integer, got 0"), not later by the config, whose message
# named fields the user never typed ("epochs, batch_size and latent_dim must be >= 1").
RECIPE_FLAGS: dict[str, Callable[[str], Any]] = {
    "epochs": positive_int,
    "batch_size": positive_int,
    "arch": str,
    "latent_dim": positive_int,
    "hidden_dim": positive_int,
    "width": positive_int,
    "blocks": nonnegative_int,  # residual blocks per stage; 0 is the lecture layout
    "lr": float_at_least(0.0, "a finite number > 0", strict=True),
    "schedule": str,
    "weight_decay": float_at_least(0.0, "a finite number >= 0"),
    "noise_factor": float,
}
CHOICES: dict[str, tuple[str, ...]] = {
    "arch": tuple(a for a in MODEL_BUILDERS if a != "fcn"),  # fcn: --preset photo
    "schedule": SCHEDULES,
}
PHOTO_NOTES = {
    "batch_size": f" (photos: {PHOTO_DEFAULTS.batch_size} crops)",
    "lr": f" (photos: {PHOTO_DEFAULTS.lr})",
    "weight_decay": f" (photos: {PHOTO_DEFAULTS.weight_decay})",
}
_FCN = f"fcn, width {PHOTO_DEFAULTS.fcn_width}, {PHOTO_DEFAULTS.fcn_levels} levels"
# Why each lecture-loop flag cannot apply to a photo run (train/photo_train.py has no such knob).
NOT_FOR_PHOTOS = {
    "epochs": "a photo run's budget is optimizer steps: --steps",
    "arch": f"the photo model is fixed ({_FCN})",
    "latent_dim": f"the photo model ({_FCN}) has no latent vector",
    "hidden_dim": f"the photo model ({_FCN}) has no Linear layer",
    "width": f"the photo model is fixed ({_FCN})",
    "blocks": f"the photo model is fixed ({_FCN})",
    "schedule": "a photo run's learning rate always follows a cosine to 0 over --steps",
    "noise_factor": (
        f"photo crops get a noise sigma drawn uniformly from [{PHOTO_DEFAULTS.sigma_min * 255:.0f}, "
        f"{PHOTO_DEFAULTS.sigma_max * 255:.0f}]/255 each, validated at "
        f"{PHOTO_DEFAULTS.noise_factor * 255:.0f}/255"
    ),
    "loss": "a photo run trains with MSE",
    "target": "a photo run trains noisy -> clean",
    "limit": "a photo run draws random crops; choose the photographs with --data-dir",
    "compile": "the photo loop is not compiled (its speed knob is --precision)",
}
# Why each photo flag cannot apply to the lecture loop (train/loop.py).
PHOTO_ONLY = {
    "steps": "the lecture loop's budget is --epochs",
    "threads": "the lecture loop uses torch's default threads",
    "precision": "the lecture loop trains in fp32",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ae-train",
        description="Train the convolutional denoising autoencoder (noisy -> clean by default).",
    )
    helps = [f"{name}: {preset.summary}" for name, preset in PRESETS.items()]
    helps.append(
        f"{PHOTO_PRESET}: fully convolutional denoiser for photographs of any size (= --dataset photos)"
    )
    p.add_argument(
        "--preset",
        choices=(*PRESETS, PHOTO_PRESET),
        default=None,
        help=f"default {DEFAULT_PRESET}; " + "; ".join(helps),
    )
    p.add_argument(
        "--dataset",
        choices=(*DATASETS, "photos"),
        default=None,
        help=f"default {DEFAULTS.dataset}; 'photos': random crops of scikit-image's bundled photographs "
        "(or of --data-dir's images)",
    )
    p.add_argument(
        "--data-dir", default=None, help="folder with idx files, or of images for 'folder'/'photos'"
    )
    for name, kind in RECIPE_FLAGS.items():
        p.add_argument(
            _flag(name),
            type=kind,
            choices=CHOICES.get(name),
            default=None,
            help=f"overrides the preset (lecture: {getattr(DEFAULTS, name)}){PHOTO_NOTES.get(name, '')}",
        )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help=f"photos: optimizer steps (default {PHOTO_DEFAULTS.steps})",
    )
    p.add_argument("--loss", choices=LOSSES, default=None, help=f"default {DEFAULTS.loss}")
    p.add_argument(
        "--target",
        choices=TARGETS,
        default=None,
        help=f"default {DEFAULTS.target}; 'clean' trains a denoiser; 'noisy' reproduces the lecture's slide "
        "(loss vs the noisy input)",
    )
    p.add_argument("--seed", type=seed_int, default=None, help=f"an integer >= 0 (default {DEFAULTS.seed})")
    p.add_argument("--device", choices=DEVICES, default=None, help=f"default {DEFAULTS.device}")
    p.add_argument(
        "--out",
        default=None,
        help=f"folder for checkpoint.pt, metrics.json (default {DEFAULTS.out}; photos: {PHOTO_DEFAULTS.out})",
    )
    p.add_argument(
        "--limit", type=positive_int, default=None, help="use only the first N images of each split"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt up to --epochs (default: the count that run was started "
        "with), with the checkpoint's recipe",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile + channels_last for the training step (faster steps, seconds of compiling; "
        f"default {DEFAULTS.compile})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="photos: torch CPU threads (default: torch's, all cores)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="photos: arithmetic of the training step; auto = bf16 autocast where the hardware has bf16 "
        "(AMX / AVX512-BF16 CPUs, recent GPUs), else fp32. Weights, validation and export stay fp32 "
        f"(default {PHOTO_DEFAULTS.precision})",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=None,
        help="'folder', or photos with --data-dir: read images of up to this many pixels; larger ones are "
        f"skipped by the decompression-bomb guard (default {PHOTO_DEFAULTS.max_pixels})",
    )
    return p


def _not_applicable(args: argparse.Namespace, reasons: dict[str, str], where: str) -> str | None:
    """The error for the flags in `reasons` that were given explicitly (not None), or None if none was."""
    given = [f"{_flag(name)}: {why}" for name, why in reasons.items() if getattr(args, name) is not None]
    return f"{where}: " + "; ".join(given) if given else None


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- preset <- explicit flags; TrainConfig and ModelConfig validate the result."""
    values: dict[str, Any] = {**asdict(DEFAULTS), **preset_values(args.preset or DEFAULT_PRESET)}
    values.update({name: getattr(args, name) for name in RECIPE_FLAGS if getattr(args, name) is not None})
    values.update(
        dataset=_default(args.dataset, DEFAULTS.dataset),
        data_dir=args.data_dir,
        loss=_default(args.loss, DEFAULTS.loss),
        target=_default(args.target, DEFAULTS.target),
        seed=_default(args.seed, DEFAULTS.seed),
        device=_default(args.device, DEFAULTS.device),
        out=args.out or DEFAULTS.out,
        limit=args.limit,
        compile=_default(args.compile, DEFAULTS.compile),
        max_pixels=_default(args.max_pixels, DEFAULTS.max_pixels),
    )
    return TrainConfig(**values)


def explicit_fields(args: argparse.Namespace) -> frozenset[str]:
    """The TrainConfig fields the user set with a flag (the preset counts: `--preset` was typed)."""
    names = {
        *RECIPE_FLAGS, "dataset", "data_dir", "loss", "target", "seed", "device", "limit", "compile",
        "max_pixels",
    }  # fmt: skip
    given = {name for name in names if getattr(args, name) is not None}
    return frozenset(given | ({"preset"} if args.preset is not None else set()))


def _photo_refusal(args: argparse.Namespace) -> str | None:
    """Why this photo run's command line asks for something a photo run cannot do; None if nothing."""
    if args.resume:
        return "--resume is not supported for photos (runs are step budgets)"
    if args.preset not in (None, PHOTO_PRESET):
        return (
            f"--preset {args.preset} does not apply to --dataset photos (the photo model has its own recipe)"
        )
    if args.dataset not in (None, "photos"):
        return (
            f"--dataset {args.dataset} does not apply to --preset {PHOTO_PRESET}: it trains on photographs "
            "(--data-dir DIR for your own)"
        )
    if args.max_pixels is not None and args.data_dir is None:
        return "--max-pixels applies to --data-dir's images (the bundled photographs are not guarded)"
    return _not_applicable(args, NOT_FOR_PHOTOS, f"these flags do not apply to --preset {PHOTO_PRESET}")


def _train_photos(args: argparse.Namespace) -> int:
    refusal = _photo_refusal(args)
    if refusal:
        print(f"ae-train: error: {refusal}", file=sys.stderr)
        return 2
    out = args.out or PHOTO_DEFAULTS.out
    try:
        steps = _default(args.steps, PHOTO_DEFAULTS.steps)
        config = PhotoTrainConfig(
            data_dir=args.data_dir,
            max_pixels=_default(args.max_pixels, PHOTO_DEFAULTS.max_pixels),
            steps=steps,
            batch_size=_default(args.batch_size, PHOTO_DEFAULTS.batch_size),
            lr=_default(args.lr, PHOTO_DEFAULTS.lr),
            weight_decay=_default(args.weight_decay, PHOTO_DEFAULTS.weight_decay),
            seed=_default(args.seed, PHOTO_DEFAULTS.seed),
            device=resolve_device(args.device or DEFAULTS.device).type,  # auto: CUDA where torch sees it
            out=out,
            eval_every=min(PHOTO_DEFAULTS.eval_every, steps),
            threads=args.threads,
            precision=_default(args.precision, PHOTO_DEFAULTS.precision),
        )
        checkpoint = train_photos(config)
    except TrainingInterrupted as err:  # it says which step checkpoint.pt holds, or that this run wrote none
        print(f"\ninterrupted: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before train_photos began: nothing written yet
        print("\ninterrupted before training began: this run wrote nothing", file=sys.stderr)
        return 130
    except FloatingPointError as err:
        print(f"ae-train: error: training diverged: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except (PhotoDataError, ValueError, RuntimeError, OSError) as err:
        print(f"ae-train: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {config.out}/checkpoint.pt (step {checkpoint.epoch}), metrics.json")
    return 0


def resumed_epochs(out: str) -> int | None:
    """The epoch count of the run `--resume` continues in `out`: without --epochs it finishes that run (the
    preset's count would end a longer run early, and move a cosine run onto another schedule). None where
    the checkpoint cannot say; train() then names its fault."""
    try:
        epochs = load_checkpoint(Path(out) / CHECKPOINT_NAME).train_config.get("epochs")
    except CheckpointError:
        return None
    return epochs if type(epochs) is int and epochs >= 1 else None


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 trained, 2 bad input or a flag that does not apply, 3 diverged, 130 interrupted."""
    args = build_parser().parse_args(argv)
    if args.preset == PHOTO_PRESET or args.dataset == "photos":
        return _train_photos(args)
    refusal = _not_applicable(args, PHOTO_ONLY, f"these flags apply to --preset {PHOTO_PRESET} only")
    if refusal is None and args.max_pixels is not None and args.dataset != "folder" and not args.resume:
        refusal = (
            f"--max-pixels applies to image files: --dataset folder or --preset {PHOTO_PRESET} with "
            f"--data-dir (--dataset {args.dataset or DEFAULTS.dataset} is 28x28 idx files)"
        )
    if refusal:
        print(f"ae-train: error: {refusal}", file=sys.stderr)
        return 2
    args.out = args.out or DEFAULTS.out
    if args.resume and args.epochs is None:
        args.epochs = resumed_epochs(args.out)
    try:
        config = config_from_args(args)
        checkpoint = train(config, resume=args.resume, quiet=args.quiet, explicit=explicit_fields(args))
    except TrainingInterrupted as err:  # in the epochs: it says which epoch checkpoint.pt holds, if any
        print(f"\ninterrupted: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the first epoch began (loading the data): nothing written yet
        print("\ninterrupted before training began: this run wrote nothing", file=sys.stderr)
        return 130
    except FloatingPointError as err:
        print(f"ae-train: error: training diverged: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except (DataError, ValueError, RuntimeError, OSError) as err:
        print(f"ae-train: error: {err}", file=sys.stderr)
        return 2
    # A checkpoint returned as read from disk was already at --epochs (train() said so): nothing written.
    if checkpoint.path is not None:
        return 0
    print(f"wrote {args.out}/checkpoint.pt (epoch {checkpoint.epoch}), metrics.json, samples.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
