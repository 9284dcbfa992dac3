"""The photo (any-size) model's int8 variant, behind a quality gate on the validation photographs.

Why a path of its own: the Fashion-MNIST variants (`ae_export.deploy`) come as three files and are judged
on that dataset's standard test, which says nothing of a photograph. The photo model is one file, and its
int8 twin is judged where it is used: on the validation photographs at sigma 15, 25 and 50 (/255),
against the fp32 file, with the same seeded noise for both.

How it is built (measured on a 2-core AVX-512 VNNI/AMX Xeon, onnxruntime 1.32, 1024x1536 photograph
through `Denoiser`): static QDQ, weights int8 per output channel, activations uint8, MinMax calibration
on 16 noisy 256x256 crops of the training photographs with each crop's sigma drawn from the training
range. It ran 1.6-1.7x fp32 (both cores and one). Three choices are measured, not guessed:
- The last convolution (the noise estimate the model subtracts) stays float. Quantized, its output range
  comes from the calibration's noise levels and saturates beyond them: calibrated at sigma 25 alone, the
  model lost 0.51 dB at sigma 50 (1.8 dB on one photograph); kept float, 0.09 dB.
- Activations uint8: int8 activations gave no speed (0.90-1.01x fp32); ONNX Runtime's fast x86 int8
  kernels take unsigned activations.
- No fp16 twin: on the CPU it ran 5-15% slower than fp32 for the same quality.
The gate: the mean loss at each sigma must stay within the budget (PHOTO_INT8_BUDGET_DB unless the caller
gives one); the worst single photograph is reported beside it. Files are staged and moved in place only
when accepted, and a `manifest.json` lists both files with their quality, so `Denoiser(folder,
variant="int8")` and `ae-denoise --variant int8` find the file and verify it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ae_export.export import drop_derived_files, staging_dir
from ae_export.manifest import cpu_int8_support, file_entry, write_manifest
from ae_export.parity import BATCH_SIZES, ParityReport
from ae_export.specs import PARITY_JSON, VARIANTS
from ae_export.variant_parity import VariantFile, check_any_size_variant_files
from ae_export.variants import layer_key, quantize_int8, tag_variant, within_budget
from runtimes.denoiser import Denoiser
from runtimes.images import DEFAULT_MAX_PIXELS
from train.checkpoint import Checkpoint
from train.photos import CropSampler, PhotoDataError, PhotoSet, load_photos, noisy_8bit

FP32_FILE = "denoiser.onnx"
INT8_FILE = "denoiser.int8.onnx"
PHOTO_VARIANTS = ("int8",)
# The most mean PSNR (dB) the int8 file may lose against fp32 at any one sigma. Measured losses of the
# default photo model: 0.25, 0.17, 0.09 dB at sigma 15, 25, 50, for a denoising gain of 9-14 dB; keeping
# more layers in float (the first, the last fuse) gained at most 0.02 dB.
PHOTO_INT8_BUDGET_DB = 0.40
SIGMAS_255 = (15, 25, 50)
CALIBRATION_CROPS = 16
CALIBRATION_CROP = 256
CALIBRATION_SEED = 0
EVAL_SEED = 2024


@dataclass
class PhotoInt8Result:
    """What the gate saw: mean PSNR per precision and sigma, the loss, the worst photograph, the verdict."""

    budget_db: float
    excluded_layers: list[str]
    psnr_db: dict[str, dict[str, float]] = field(default_factory=dict)  # precision -> sigma -> mean dB
    loss_db: dict[str, float] = field(default_factory=dict)  # sigma -> fp32 minus int8, mean dB
    worst_photo: dict[str, Any] = field(default_factory=dict)  # {"photo", "sigma_255", "loss_db"}
    rejected: str | None = None
    parity: ParityReport | None = None  # the int8 file's parity, when asked for (not in the manifest's gate)


def training_photos_folder(checkpoint: Checkpoint, data_dir: str | None = None) -> str | None:
    """The folder of photographs `checkpoint` was trained on (`data_dir` if given), None for the bundled
    ones; PhotoDataError, naming `--data-dir`, if it is not there. Checked before an export replaces
    anything: the int8 twin is calibrated and judged on those photographs."""
    folder = data_dir if data_dir is not None else checkpoint.train_config.get("data_dir")
    if folder is not None and not Path(folder).is_dir():
        given = "" if data_dir is not None else " (the folder the model was trained on)"
        raise PhotoDataError(
            f"{folder}{given}: not a folder; the int8 twin is calibrated and judged on those photographs: "
            "pass --data-dir DIR where they are now, or --variants none"
        )
    return folder


def calibration_crops(photos: PhotoSet, sigma_min: float, sigma_max: float) -> np.ndarray:
    """(CALIBRATION_CROPS, 1, 256, 256) float32 noisy crops of the training photographs, each at a sigma
    drawn uniformly from the training range (the noise the model was trained for)."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    clean = CropSampler(photos, CALIBRATION_CROP, rng).sample(CALIBRATION_CROPS)
    sigmas = rng.uniform(sigma_min, sigma_max, size=CALIBRATION_CROPS).astype(np.float32)
    return noisy_8bit(clean, sigmas, rng)


def output_conv(proto: onnx.ModelProto) -> str:
    """The layer key ("tail") of the graph's last Conv: the noise estimate the model subtracts."""
    inits = {init.name for init in proto.graph.initializer}
    convs = [
        layer_key(node.input[1], "denoiser")
        for node in proto.graph.node
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits
    ]
    if not convs:
        raise ValueError("the photo model's graph has no Conv with a weight")
    return convs[-1]


def photo_psnr(
    path: Path, photos: PhotoSet, sigmas_255: Sequence[int] = SIGMAS_255
) -> dict[str, list[float]]:
    """sigma -> PSNR (dB) of each photograph's 8-bit denoised output, noise seeded per sigma and photo."""
    denoiser = Denoiser(path, provider="cpu")
    table: dict[str, list[float]] = {}
    for sigma_255 in sigmas_255:
        scores = []
        for i, image in enumerate(photos.images):
            clean = image.astype(np.float32) / 255.0  # (H, W)
            rng = np.random.default_rng(EVAL_SEED + 1000 * sigma_255 + i)
            noisy = noisy_8bit(clean[None, None], sigma_255 / 255.0, rng)[0, 0]
            out = np.rint(denoiser.denoise(noisy) * 255.0) / 255.0
            mse = float(np.mean((out.astype(np.float64) - clean) ** 2))
            scores.append(10.0 * np.log10(1.0 / max(mse, 1e-12)))
        table[str(sigma_255)] = scores
    return table


def export_photo_int8(
    checkpoint: Checkpoint,
    out_dir: str | Path,
    budget_db: float = PHOTO_INT8_BUDGET_DB,
    data_dir: str | None = None,
    log: Callable[[str], None] = print,
    parity_sizes: Sequence[tuple[int, int]] | None = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> PhotoInt8Result:
    """Build, judge and (if within `budget_db`) write `denoiser.int8.onnx` and `manifest.json` beside the
    fp32 `denoiser.onnx` in `out_dir`; a rejected variant leaves no file (see the module docstring).

    With `parity_sizes`, the staged file must also pass parity (int8 tolerance and mean-abs bound, vs
    PyTorch and vs the fp32 file at each size, `check_any_size_variant_files`) before it is written;
    `result.parity` holds that report either way."""
    out_dir = Path(out_dir)
    drop_derived_files(out_dir, keep=(PARITY_JSON,))  # an earlier export's, if the caller left any
    fp32_path = out_dir / FP32_FILE
    fp32 = onnx.load(str(fp32_path))
    train = dict(checkpoint.train_config)
    train_photos, val_photos = load_photos(
        training_photos_folder(checkpoint, data_dir),
        int(train.get("max_pixels", DEFAULT_MAX_PIXELS)),  # the training run's photographs, large ones too
    )
    sigma = float(train.get("noise_factor", 25 / 255))
    calibration = calibration_crops(
        train_photos, float(train.get("sigma_min", sigma)), float(train.get("sigma_max", sigma))
    )
    excluded = [output_conv(fp32)]
    result = PhotoInt8Result(budget_db=budget_db, excluded_layers=excluded)
    with staging_dir(out_dir) as staged:
        proto = quantize_int8(fp32_path, "denoiser", calibration, excluded, staged, calibration_batch=1)
        tag_variant(proto, VARIANTS["int8"], excluded, roles=("denoiser",))  # keeps fp32's metadata
        onnx.save(proto, str(staged / INT8_FILE))
        scores = {
            "fp32": photo_psnr(fp32_path, val_photos),
            "int8": photo_psnr(staged / INT8_FILE, val_photos),
        }
        result.psnr_db = {p: {s: float(np.mean(v)) for s, v in t.items()} for p, t in scores.items()}
        result.loss_db = {s: result.psnr_db["fp32"][s] - result.psnr_db["int8"][s] for s in scores["fp32"]}
        photo, sigma_key, worst = max(
            (
                (name, s, scores["fp32"][s][i] - scores["int8"][s][i])
                for s in scores["fp32"]
                for i, name in enumerate(val_photos.names)
            ),
            key=lambda item: item[2],
        )
        result.worst_photo = {"photo": photo, "sigma_255": int(sigma_key), "loss_db": float(worst)}
        if not within_budget(list(result.loss_db.values()), budget_db):
            worst_sigma = max(
                result.loss_db, key=lambda s: (not math.isfinite(result.loss_db[s]), result.loss_db[s])
            )
            result.rejected = (
                f"loses {result.loss_db[worst_sigma]:.3f} dB mean PSNR at sigma {worst_sigma}/255, budget "
                f"{budget_db:.3f} dB"
            )
            log(f"int8: NOT written: {result.rejected}")
            return result
        if parity_sizes is not None:
            staged_file = VariantFile("denoiser", VARIANTS["int8"], staged / INT8_FILE)
            model = checkpoint.build_model()
            result.parity = check_any_size_variant_files(
                model, [staged_file], out_dir, parity_sizes, batch_sizes
            )
            if not result.parity.passed:
                result.rejected = f"parity failed: {result.parity.failure_summary()}"
                log(f"int8: NOT written: {result.rejected}")
                return result
        (staged / INT8_FILE).replace(out_dir / INT8_FILE)
    _write_manifest(out_dir, result, val_photos)
    losses = ", ".join(f"{loss:+.3f}" for loss in (-v for v in result.loss_db.values()))
    log(
        f"int8: {INT8_FILE}: {losses} dB vs fp32 at sigma {', '.join(result.loss_db)}/255 (budget "
        f"{budget_db:.3f}); worst photograph {photo} {-worst:+.3f} dB at sigma {sigma_key}; "
        f"kept in float: {', '.join(excluded)}"
    )
    return result


def _write_manifest(out_dir: Path, result: PhotoInt8Result, val_photos: PhotoSet) -> Path:
    entries = []
    for variant, name in (("fp32", FP32_FILE), ("int8", INT8_FILE)):
        entry = file_entry(
            out_dir, name, "model", role="denoiser", variant=variant, precision=variant, format="onnx"
        )
        entry["quality"] = {
            "measured_on": f"validation photographs {', '.join(val_photos.names)}",
            "psnr_db_by_sigma_255": result.psnr_db[variant],
            "loss_db_by_sigma_255": result.loss_db if variant == "int8" else None,
            "budget_db": result.budget_db if variant == "int8" else None,
        }
        if variant == "int8":
            entry["excluded_layers"] = result.excluded_layers
            entry["worst_photo"] = result.worst_photo
        entries.append(entry)
    gate = {k: v for k, v in asdict(result).items() if k != "parity"}  # parity.json holds the checks
    return write_manifest(out_dir, entries, {"int8_gate": gate, "cpu_int8": cpu_int8_support()})
