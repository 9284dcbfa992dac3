"""`ae-train`: train the lecture's denoising autoencoder. Thin: parses, calls train.loop.train, reports."""

from __future__ import annotations

import argparse
import sys

from train.data import DATASETS, DataError
from train.loop import DEVICES, LOSSES, TARGETS, TrainConfig, train
from train.photo_train import PhotoTrainConfig, train_photos
from train.photos import PhotoDataError

DEFAULTS = TrainConfig()
PHOTO_DEFAULTS = PhotoTrainConfig()
# Named recipes. "photo": the fully convolutional denoiser trained on photographs (train/photo_train.py).
PRESETS = ("photo",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ae-train",
        description="Train the convolutional denoising autoencoder (noisy -> clean by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help="'photo': fully convolutional denoiser for photographs of any size (same as --dataset photos)",
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
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    p.add_argument(
        "--steps", type=int, default=PHOTO_DEFAULTS.steps, help="photos: optimizer steps (the budget)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"default {DEFAULTS.batch_size} (photos: {PHOTO_DEFAULTS.batch_size} crops)",
    )
    p.add_argument("--latent-dim", type=int, default=DEFAULTS.latent_dim)
    p.add_argument(
        "--lr", type=float, default=None, help=f"default {DEFAULTS.lr} (photos: {PHOTO_DEFAULTS.lr})"
    )
    p.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    p.add_argument("--noise-factor", type=float, default=DEFAULTS.noise_factor)
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
    return p


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
    if args.preset == "photo" or args.dataset == "photos":
        return _train_photos(args)
    args.out = args.out or DEFAULTS.out
    try:
        config = TrainConfig(
            dataset=args.dataset,
            data_dir=args.data_dir,
            epochs=args.epochs,
            batch_size=args.batch_size or DEFAULTS.batch_size,
            latent_dim=args.latent_dim,
            lr=args.lr if args.lr is not None else DEFAULTS.lr,
            weight_decay=args.weight_decay,
            noise_factor=args.noise_factor,
            loss=args.loss,
            target=args.target,
            seed=args.seed,
            device=args.device,
            out=args.out,
            limit=args.limit,
            compile=args.compile,
        )
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
