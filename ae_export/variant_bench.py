"""The variants measured side by side: size, quality on the standard test, speed against fp32 in one run.

Used by the benchmark's variants section and readable on its own. Every figure is measured here, now,
on this machine: the denoiser files the folder's manifest lists are scored on the standard test and timed
at batch 1 and 256 in interleaved rounds against the fp32 file, beside whether this CPU has int8
dot-product instructions (without them int8 buys size, not speed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ae_export.manifest import THROUGHPUT_BATCHES, cpu_int8_support, measure_throughput
from ae_export.variants import score_denoiser, standard_test
from runtimes.manifest import load_manifest, model_entries, resolve_model
from runtimes.sessions import physical_cores
from train.data import Dataset


def bench_variants(
    folder: Path, data: Dataset, noise_std: float = 0.3, threads: int | None = None, rounds: int = 3
) -> dict[str, Any]:
    """One row per denoiser variant in `folder` (fp32 first): size, PSNR, SSIM, loss, img/s and ratios."""
    manifest = load_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"{folder}: no manifest.json; export with `ae-export --variants ...` first")
    threads = threads or physical_cores()
    names = list(model_entries(manifest, "denoiser"))
    paths = {name: resolve_model(folder, "denoiser", name) for name in names}
    test = standard_test(data, noise_std)
    speed = measure_throughput(paths, test.noisy[:256], THROUGHPUT_BATCHES, threads, rounds)
    fp32_size = paths["fp32"].stat().st_size
    rows = []
    fp32_psnr = None
    for name in names:
        q = score_denoiser(paths[name], test, threads)
        fp32_psnr = q.psnr_db if name == "fp32" else fp32_psnr
        rows.append(
            {
                "variant": name,
                "file": paths[name].name,
                "bytes": paths[name].stat().st_size,
                "size_vs_fp32": paths[name].stat().st_size / fp32_size,
                "psnr_db": q.psnr_db,
                "ssim": q.ssim,
                "loss_db": (fp32_psnr - q.psnr_db) if fp32_psnr is not None else None,
                **{f"img_s_b{b}": speed[name][b] for b in THROUGHPUT_BATCHES},
                **{f"vs_fp32_b{b}": speed[name][b] / speed["fp32"][b] for b in THROUGHPUT_BATCHES},
            }
        )
    return {"standard_test": test.name, "threads": threads, "cpu": cpu_int8_support(), "rows": rows}


def render_markdown(result: dict[str, Any]) -> str:
    cpu = result["cpu"]
    dot = {True: "yes", False: "no", None: "unknown"}[cpu["int8_dot_product"]]
    lines = [
        f"Variants on {result['standard_test']}, {result['threads']} threads; CPU {cpu['cpu']}, int8 dot "
        f"products: {dot} ({', '.join(cpu['flags']) or 'none of avx512_vnni/avx_vnni/asimddp'})",
        "",
        "| variant | file | size | vs fp32 | PSNR dB | loss dB | SSIM | img/s b1 | x fp32 | img/s b256 "
        "| x fp32 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['variant']} | `{r['file']}` | {r['bytes'] / 1024:.0f} KiB | {r['size_vs_fp32']:.0%} | "
            f"{r['psnr_db']:.3f} | {r['loss_db']:+.3f} | {r['ssim']:.4f} | {r['img_s_b1']:.0f} | "
            f"{r['vs_fp32_b1']:.2f} | {r['img_s_b256']:.0f} | {r['vs_fp32_b256']:.2f} |"
        )
    return "\n".join(lines)
