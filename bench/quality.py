"""Section "quality": PSNR, SSIM and ms/image of classical denoisers and of our models, on the same images.

Every method sees the same noisy Fashion-MNIST test images (noise 0.3, the fixed evaluation seed training
reports on). Classical parameters are tuned by grid search for PSNR on test[2000:2000+n] with its own noise
seed, never on the evaluated test[:2000]. Classical methods run one image at a time on one thread (as a
user would call scikit-image); models run batched. BM3D, when installed, is evaluated on fewer images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.section import NOISE_STD, BenchContext, ModelUnderTest
from bench.tables import Column, Result, Table
from bench.timing import Budget
from runtimes.denoiser import Denoiser
from train.data import DataError, Dataset, Split, fixed_noisy, to_float
from train.loop import TrainConfig
from train.metrics import psnr_per_image, ssim_per_image

NEEDS_DATA = True
EVAL_SEED = TrainConfig().eval_seed  # the noisy evaluation set training reports on
TUNE_SEED = 4321  # the tuning slice gets its own noise
TUNE_START = 2000  # classical parameters are tuned on test[2000:2000+n], never on the evaluated test[:2000]
BM3D_TUNE_IMAGES = 100  # BM3D costs ~0.2-0.4 s/image: its grid (full mode only) is tried on 100 images
MODEL_BATCH = 256
# Reported PSNRs (dB) for the lecture's setup on the first 2,000 test images at noise 0.3, and the lecture
# models' by latent size: reference points, not measured here.
REFERENCE_PSNR = {"noisy": 12.8, "gaussian": 16.1, "median": 16.3, "tv": 16.5, "nl-means": 16.8, "bm3d": 17.2}
LECTURE_MODEL_PSNR = {4: 17.5, 16: 19.0, 64: 19.3}
BACKENDS = {"noisy": "-", "bm3d": "bm3d"}


@dataclass(frozen=True)
class Classical:
    """A classical denoiser: `apply(noisy_hw, param) -> denoised_hw`, its tuned parameter and grid."""

    name: str
    label: str
    param: str  # the tuned parameter's name; "" when nothing is tuned
    grid: tuple[float, ...]
    apply: Callable[[np.ndarray, float], np.ndarray]


def classical_methods() -> list[Classical]:
    """The scikit-image baselines, each with its main parameter's grid.

    NL-means runs without the `sigma` argument: with sigma=0.3 scikit-image subtracts 2*sigma^2 from the
    patch distances, which over-corrects this clipped noise (PSNR falls with every h tried); h alone tuned
    on the tuning slice does better. Patch 5x5 within 13x13 suits the small Fashion-MNIST images.
    """
    from skimage.filters import gaussian, median
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

    footprint = np.ones((3, 3), dtype=bool)
    return [
        Classical("noisy", "noisy input", "", (0.0,), lambda x, _p: x),
        Classical(
            "gaussian",
            "Gaussian blur",
            "sigma",
            (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2),
            lambda x, p: gaussian(x, sigma=p),
        ),
        Classical("median", "median 3x3", "", (0.0,), lambda x, _p: median(x, footprint=footprint)),
        Classical(
            "tv",
            "total variation (Chambolle)",
            "weight",
            (0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.25),
            lambda x, p: denoise_tv_chambolle(x, weight=p),
        ),
        Classical(
            "nl-means",
            "non-local means (5x5 patches, distance 6)",
            "h",
            (0.12, 0.14, 0.16, 0.18, 0.2, 0.22, 0.25),
            lambda x, p: denoise_nl_means(x, h=p, patch_size=5, patch_distance=6, fast_mode=True),
        ),
    ]


def bm3d_method(full: bool) -> Classical | None:
    """BM3D from the optional `bm3d` package (not a dependency); None when it is not installed."""
    try:
        import bm3d
    except ImportError:
        return None
    grid = (0.2, 0.25, 0.3, 0.35) if full else (0.3,)  # quick: the true noise std, untuned (190 ms/image)
    return Classical("bm3d", "BM3D", "sigma_psd", grid, lambda x, p: bm3d.bm3d(x, sigma_psd=p))


def _apply(method: Classical, noisy: np.ndarray, param: float) -> tuple[np.ndarray, float]:
    """(N, H, W) noisy -> (N, 1, H, W) denoised clipped to [0, 1], and the seconds, one image at a time."""
    out = np.empty_like(noisy)
    start = time.perf_counter()
    for i, image in enumerate(noisy):
        out[i] = method.apply(image, param)
    seconds = time.perf_counter() - start
    return np.clip(out, 0.0, 1.0)[:, None], seconds


def _scores(denoised: np.ndarray | torch.Tensor, clean: torch.Tensor) -> tuple[float, float]:
    """Mean per-image PSNR (dB) and SSIM, scikit-image's definitions with data_range 1 (train.metrics)."""
    out = torch.as_tensor(denoised, dtype=torch.float32)
    return float(psnr_per_image(out, clean).mean()), float(ssim_per_image(out, clean).mean())


def _grid(grid: tuple[float, ...], points: int | None) -> tuple[float, ...]:
    if points is None or len(grid) <= points:
        return grid
    picks = np.linspace(0, len(grid) - 1, points).round().astype(int)
    return tuple(grid[i] for i in sorted(set(picks)))


def _model_rows(
    entry: ModelUnderTest, noisy: torch.Tensor, clean: torch.Tensor, threads: int
) -> list[dict[str, Any]]:
    """Our model through ONNX Runtime (the denoiser file) and through PyTorch: PSNR/SSIM and ms/image.

    ms/image is batched throughput (batches of 256, `threads` threads), the way a model is used on a set.
    """
    latent = entry.checkpoint.model_config.latent_dim
    common = {
        "method": f"ours, latent {latent} ({entry.label})",
        "params": f"epoch {entry.checkpoint.epoch}",
        "images": len(noisy),
        "reference_psnr_db": LECTURE_MODEL_PSNR.get(latent),
    }
    denoiser = Denoiser(entry.onnx_dir, provider="auto", threads=threads, max_batch=MODEL_BATCH)
    x = np.ascontiguousarray(noisy.numpy())  # (N, 1, H, W)
    denoiser.run_batch(x[:MODEL_BATCH])  # warm-up at the batch size used
    start = time.perf_counter()
    out = denoiser.run_batch(x)
    ort_s = time.perf_counter() - start
    ort_psnr, ort_ssim = _scores(out, clean)
    model = entry.checkpoint.build_model()
    torch.set_num_threads(threads)
    with torch.inference_mode():
        model(noisy[:MODEL_BATCH])
        start = time.perf_counter()
        out_t = torch.cat([model(chunk) for chunk in noisy.split(MODEL_BATCH)])
        torch_s = time.perf_counter() - start
    torch_psnr, torch_ssim = _scores(out_t, clean)
    return [
        {
            **common,
            "backend": backend,
            "psnr_db": psnr,
            "ssim": ssim,
            "ms_per_image": seconds / len(x) * 1e3,
        }
        for backend, psnr, ssim, seconds in (
            (f"onnxruntime {denoiser.provider}", ort_psnr, ort_ssim, ort_s),
            ("pytorch eager cpu", torch_psnr, torch_ssim, torch_s),
        )
    ]


def check_data(data: Dataset, budget: Budget) -> None:
    """The test split must hold the evaluated images and the tuning slice after them (`bench.report`
    checks this before any section runs)."""
    if len(data.val) < TUNE_START + budget.tune_images:
        raise DataError(
            f"quality benchmark needs {TUNE_START + budget.tune_images} test images; "
            f"the dataset has {len(data.val)}"
        )


def bench_quality(
    data: Dataset, models: Sequence[ModelUnderTest], threads: int, budget: Budget, full: bool = False
) -> dict[str, Any]:
    """Every method on test[:N] with the same noisy images; classical ones tuned on the tuning slice."""
    check_data(data, budget)
    test: Split = data.val
    n_eval = min(budget.quality_images, TUNE_START)
    clean = to_float(test.images[:n_eval])  # (N, 1, H, W)
    noisy = fixed_noisy(test.images[:n_eval], NOISE_STD, EVAL_SEED)
    tune_images = test.images[TUNE_START : TUNE_START + budget.tune_images]
    tune_clean = to_float(tune_images)
    tune_noisy = fixed_noisy(tune_images, NOISE_STD, TUNE_SEED)[:, 0].numpy()  # (T, H, W)
    noisy_hw = noisy[:, 0].numpy()  # (N, H, W)

    bm3d = bm3d_method(full)
    rows: list[dict[str, Any]] = []
    for method in [*classical_methods(), *([bm3d] if bm3d else [])]:
        grid = _grid(method.grid, budget.grid_points)
        tuning: dict[str, float] = {}
        limit = min(budget.bm3d_images, BM3D_TUNE_IMAGES) if method.name == "bm3d" else len(tune_noisy)
        for param in grid if method.param else ():
            out, _ = _apply(method, tune_noisy[:limit], param)
            tuning[str(param)] = _scores(out, tune_clean[:limit])[0]
        best = max(grid, key=lambda p: tuning[str(p)]) if method.param else grid[0]
        count = min(n_eval, budget.bm3d_images) if method.name == "bm3d" else n_eval
        out, seconds = _apply(method, noisy_hw[:count], best)
        psnr, ssim = _scores(out, clean[:count])
        rows.append(
            {
                "method": method.label,
                "backend": BACKENDS.get(method.name, "scikit-image"),
                "params": f"{method.param}={best:g}" if method.param else "-",
                "images": count,
                "psnr_db": psnr,
                "ssim": ssim,
                "ms_per_image": seconds / count * 1e3,
                "reference_psnr_db": REFERENCE_PSNR.get(method.name),
                "tuning_psnr_db": tuning,
            }
        )
    if bm3d is None:
        rows.append(
            {
                "method": "BM3D",
                "backend": "bm3d",
                "status": "not installed (pip install bm3d)",
                "reference_psnr_db": REFERENCE_PSNR["bm3d"],
            }
        )
    for entry in models:
        rows.extend(_model_rows(entry, noisy, clean, threads))
    return {
        "noise_std": NOISE_STD,
        "noise_seed": EVAL_SEED,
        "evaluated_on": f"test[:{n_eval}]",
        "tuned_on": f"test[{TUNE_START}:{TUNE_START + budget.tune_images}]",
        "threads_models": threads,
        "rows": rows,
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    return bench_quality(ctx.dataset(), ctx.models, ctx.threads, ctx.budget, full=ctx.budget.mode == "full")


def heading(result: Result) -> str:
    return (
        f"Quality: {result['evaluated_on']} Fashion-MNIST test images, noise {result['noise_std']} "
        f"(seed {result['noise_seed']}); classical parameters tuned on {result['tuned_on']}"
    )


TABLES = (
    Table(
        columns=(
            Column("method", "method"),
            Column("backend", "backend"),
            Column("parameters", lambda r: r.get("params", r.get("status"))),
            Column("images", "images"),
            Column("PSNR dB", "psnr_db"),
            Column("SSIM", "ssim"),
            Column("ms/image", "ms_per_image"),
            Column("reference PSNR dB", "reference_psnr_db"),
        ),
        notes=lambda result: [
            "ms/image: classical methods one image at a time on one thread; our models batched "
            f"({MODEL_BATCH}) on {result['threads_models']} threads. Reference: figures reported for the "
            "lecture's setup (the lecture's models for ours)."
        ],
    ),
)
