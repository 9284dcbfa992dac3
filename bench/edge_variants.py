"""The edge variants side by side: size, quality on the standard test, speed against fp32 in one run.

Why: fp16 and int8 files are smaller, but what they cost in quality and whether they are faster depends
on the model and on this CPU (int8 gains speed only with int8 dot-product instructions: x86 VNNI, ARM
dotprod). Reads the export folder's manifest.json; the measuring is `ae_export.variant_bench`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ae_export.manifest import cpu_int8_support
from ae_export.variant_bench import bench_variants
from bench.section import NOISE_STD, BenchContext
from bench.tables import Column, Table
from runtimes.manifest import MANIFEST_FILE

NEEDS_DATA = True
Result = dict[str, Any]


def run(ctx: BenchContext) -> Result:
    folder = ctx.first.onnx_dir
    if not (folder / MANIFEST_FILE).is_file():
        return {
            "status": f"no {MANIFEST_FILE} in {folder}: export with `ae-export` (variants are on by default)",
            "standard_test": "-",
            "threads": ctx.threads,
            "cpu": cpu_int8_support(),
            "rows": [{"variant": "-", "status": "no manifest"}],
        }
    return bench_variants(folder, ctx.dataset(), NOISE_STD, ctx.threads)


def heading(result: Result) -> str:
    cpu = result["cpu"]
    dot = {True: "yes", False: "no", None: "unknown"}[cpu["int8_dot_product"]]
    flags = ", ".join(cpu["flags"]) or "none of avx512_vnni/avx_vnni/asimddp"
    return (
        f"Edge variants: {result['standard_test']}; {result['threads']} threads; CPU {cpu['cpu']}, "
        f"int8 dot products: {dot} ({flags})"
    )


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _fixed(digits: int, sign: str = "") -> Callable[[Any], str]:
    return lambda v: "-" if v is None else f"{v:{sign}.{digits}f}"


TABLES = (
    Table(
        columns=(
            Column("variant", "variant"),
            Column("file", "file"),
            Column("KiB", lambda r: r["bytes"] / 1024 if "bytes" in r else None),
            Column("size vs fp32", "size_vs_fp32", _ratio),
            Column("PSNR dB", "psnr_db", _fixed(3)),
            Column("loss dB", "loss_db", _fixed(3, "+")),
            Column("SSIM", "ssim", _fixed(4)),
            Column("img/s b1", "img_s_b1"),
            Column("vs fp32 b1", "vs_fp32_b1", _ratio),
            Column("img/s b256", "img_s_b256"),
            Column("vs fp32 b256", "vs_fp32_b256", _ratio),
        ),
        notes=lambda r: [
            r.get("status")
            or "loss: fp32 PSNR minus the variant's on the same images; speed: best of interleaved rounds "
            "against the fp32 file in this run",
        ],
    ),
)
