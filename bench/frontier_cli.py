"""`python -m bench.frontier_cli`: the frontier of the trained presets as bench.json, a README table and a
picture (`make frontier` trains and exports the missing presets, then calls this).

    python -m bench.frontier_cli [--presets-dir artifacts/presets] [--presets lecture,balanced,quality]
        [--out artifacts/frontier] [--picture docs/frontier.png] [--readme README.md]

Each preset is read from PRESETS_DIR/NAME/checkpoint.pt with its export in PRESETS_DIR/NAME/onnx (checked
to be that checkpoint's by the sha256 in its metadata). The README's block between the two marker lines
is replaced by the measured table, so the README shows what this command measured, nothing typed.
Exit codes: 0 ok, 2 bad input (missing checkpoint/export, stale export, missing markers).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ae_export.cliargs import HelpFormatter
from bench import frontier
from bench.report import load_fashion, render_header, run_bench
from bench.section import DENOISER_FILE, ModelUnderTest
from bench.tables import render_table
from bench.timing import BUDGETS
from runtimes.fileio import atomic_save, atomic_write_json, atomic_write_text
from runtimes.onnx_model import OnnxModel
from runtimes.sessions import physical_cores
from train.checkpoint import CheckpointError, load_checkpoint
from train.data import DataError
from train.presets import PRESETS

BEGIN = "<!-- frontier:begin (written by `make frontier`; edits here are overwritten) -->"
END = "<!-- frontier:end -->"
PICTURE_COLUMNS = 10  # one test image per class


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.frontier_cli",
        description="Measure the trained presets (the frontier section), draw them, refresh the README.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--presets-dir", type=Path, default=Path("artifacts/presets"))
    p.add_argument(
        "--presets", default=",".join(PRESETS), help=f"comma-separated subset of {', '.join(PRESETS)}"
    )
    p.add_argument(
        "--out", type=Path, default=Path("artifacts/frontier"), help="folder for bench.json, frontier.md"
    )
    p.add_argument("--picture", type=Path, default=Path("docs/frontier.png"))
    p.add_argument("--readme", type=Path, default=None, help="README whose frontier block to replace")
    p.add_argument("--threads", type=int, default=None, help="default: physical cores")
    p.add_argument("--tiny", action="store_true", help="seconds, not minutes: proves it runs")
    p.add_argument("--data-dir", default=None)
    return p


def load_models(presets_dir: Path, names: Sequence[str]) -> list[ModelUnderTest]:
    """Each preset's checkpoint and its export; an export of other weights is an error, not a silent mix."""
    models = []
    for name in names:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
        folder = presets_dir / name
        checkpoint = load_checkpoint(folder / "checkpoint.pt")
        onnx_dir = folder / "onnx"
        denoiser = onnx_dir / DENOISER_FILE
        if not denoiser.is_file():
            raise FileNotFoundError(f"{denoiser}: no export (run `make frontier` or `ae-export`)")
        meta = OnnxModel(denoiser, provider="cpu", threads=1, warmup=False).metadata
        if meta.provenance.get("checkpoint_sha256") != checkpoint.sha256:
            raise ValueError(f"{denoiser} was exported from another checkpoint than {folder}/checkpoint.pt")
        models.append(ModelUnderTest(name, checkpoint, onnx_dir))
    return models


def draw_picture(
    models: Sequence[ModelUnderTest], result: dict, images_u8: torch.Tensor, labels, path: Path
) -> None:
    """Rows clean / noisy / each preset (standard-test noise), one column per class, PSNR in the labels."""
    from PIL import Image, ImageDraw

    noisy_all, clean_all = frontier.standard_test(images_u8)  # all 2000: one image per class
    n = len(noisy_all)
    picks = [
        int(torch.nonzero(labels[:n] == c)[0]) for c in range(PICTURE_COLUMNS) if (labels[:n] == c).any()
    ]
    noisy = np.ascontiguousarray(noisy_all[picks])
    rows = [("clean", clean_all[picks].numpy()), ("noisy 0.3", noisy)]
    by_label = {row["model"]: row for row in result["rows"]}
    for entry in models:
        model = OnnxModel(entry.denoiser_path, provider="cpu", threads=1)
        psnr = by_label[entry.label]["psnr_db"]
        rows.append((f"{entry.label} {psnr:.2f} dB", model.run(noisy)))
    scale, gap, label_w = 3, 4, 150
    cell = noisy.shape[-1] * scale
    canvas = Image.new("L", (label_w + len(picks) * (cell + gap), len(rows) * (cell + gap) + gap), 255)
    draw = ImageDraw.Draw(canvas)
    for r, (label, batch) in enumerate(rows):
        y = gap + r * (cell + gap)
        draw.text((4, y + cell // 2 - 5), label, fill=0)
        for c in range(len(picks)):
            pixels = (batch[c, 0] * 255.0).round().clip(0, 255).astype(np.uint8)
            tile = Image.fromarray(pixels).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_w + c * (cell + gap), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, lambda handle: canvas.save(handle, format="PNG"))


def check_block(readme: Path) -> str:
    """The README's text, if it has the frontier block; checked before minutes of measuring."""
    text = readme.read_text()
    if BEGIN not in text or END not in text.split(BEGIN, 1)[1]:
        raise ValueError(f"{readme}: no frontier block (the lines {BEGIN!r} ... {END!r})")
    return text


def replace_block(readme: Path, body: str) -> None:
    text = check_block(readme)
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(readme, f"{head}{BEGIN}\n{body}\n{END}{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads = args.threads or physical_cores()
    budget = BUDGETS["tiny" if args.tiny else "quick"]
    try:
        if args.readme is not None:
            check_block(args.readme)
        names = [n for n in args.presets.split(",") if n.strip()]
        models = load_models(args.presets_dir, names)
        data = load_fashion(args.data_dir)
        report = run_bench(["frontier"], budget, threads, models, data)
        result = report["sections"]["frontier"]
        draw_picture(models, result, data.val.images, data.val.labels, args.picture)
        # Plain text instead of the report's headings: the block sits inside a README section.
        header = render_header({"mode": report["mode"], "machine": report["machine"]}).removeprefix("## ")
        table = f"**{frontier.heading(result)}**\n\n" + render_table(frontier.TABLES[0], result)
        picture = args.picture.as_posix()
        if args.readme is not None:  # the link is relative to the README, wherever the picture is
            picture = Path(os.path.relpath(args.picture.resolve(), args.readme.resolve().parent)).as_posix()
        body = f"Measured by {header}\n\n{table}\n\n![clean / noisy / each preset]({picture})"
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out / "bench.json", report)
        atomic_write_text(args.out / "frontier.md", body + "\n")
        if args.readme is not None:
            replace_block(args.readme, body)
    except (CheckpointError, DataError, FileNotFoundError, ValueError) as err:
        print(f"frontier: error: {err}", file=sys.stderr)
        return 2
    print(body)
    print(
        f"wrote {args.out / 'bench.json'}, {args.out / 'frontier.md'}, {args.picture}"
        + (f", {args.readme}" if args.readme else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
