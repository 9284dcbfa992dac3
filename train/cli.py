"""`ae-train`: train the lecture's denoising autoencoder. Thin: parses, calls train.loop.train, reports."""

from __future__ import annotations

import argparse
import sys

from train.data import DATASETS, DataError
from train.loop import DEVICES, LOSSES, TARGETS, TrainConfig, train

DEFAULTS = TrainConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ae-train",
        description="Train the convolutional denoising autoencoder (noisy -> clean by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=DATASETS, default=DEFAULTS.dataset)
    p.add_argument("--data-dir", default=None, help="folder with idx files, or of images for 'folder'")
    p.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--latent-dim", type=int, default=DEFAULTS.latent_dim)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr)
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
    p.add_argument("--out", default=DEFAULTS.out, help="folder for checkpoint.pt, metrics.json, samples.png")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt up to --epochs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = TrainConfig(
            dataset=args.dataset,
            data_dir=args.data_dir,
            epochs=args.epochs,
            batch_size=args.batch_size,
            latent_dim=args.latent_dim,
            lr=args.lr,
            weight_decay=args.weight_decay,
            noise_factor=args.noise_factor,
            loss=args.loss,
            target=args.target,
            seed=args.seed,
            device=args.device,
            out=args.out,
            limit=args.limit,
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
