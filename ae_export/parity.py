"""Parity of the ONNX files against the PyTorch model, on every ONNX Runtime provider present.

Fails hard (unlike Optimum, which only warns): `ParityReport.passed` is False and the CLI exits non-zero
on any element outside tolerance, naming artifact, provider, batch size, input, errors and tolerance.

Comparison is Polygraphy's: an element fails only if |ort - ref| > atol AND |ort - ref| / |ref| > rtol.
Reference: the PyTorch model in eval mode, float32, on the CPU (so TF32 cannot creep in). All references
are computed first, then ONNX Runtime runs with spinning off: the two never compete for the cores.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from ae_export.export import module_for
from ae_export.specs import ANY_SIZE_DENOISER, ANY_SIZE_PARITY_SIZES, SPECS, ArtifactSpec, Tolerance
from runtimes.fileio import atomic_write_json
from runtimes.layout import pad_to_multiple
from runtimes.metadata import parse_metadata
from runtimes.noise import add_noise
from runtimes.sessions import open_session, physical_cores
from runtimes.tiling import plan_tiles, run_tiled
from train.fcn import denoise_any_size
from train.model import DenoisingAutoencoder
from train.photos import bundled_photos

BATCH_SIZES = (1, 2, 7, 64, 1000)
PROVIDERS = ("cpu", "cuda")
ORT_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
NOISE_STD = 0.3


class ParityError(RuntimeError):
    """Parity failed; carries the report."""

    def __init__(self, report: ParityReport) -> None:
        super().__init__(report.failure_summary())
        self.report = report


@dataclass(frozen=True)
class CheckResult:
    artifact: str  # "encoder", "decoder", "denoiser", or "decoder(encoder)" for the composition
    provider: str
    batch_size: int
    inputs: str  # "clean", "noisy", "uniform", "latent-real", "latent-random"
    max_abs: float
    max_rel: float
    mean_abs: float
    atol: float
    rtol: float
    failed_elements: int
    ort_ms: float

    @property
    def passed(self) -> bool:
        return self.failed_elements == 0


@dataclass
class ParityReport:
    results: list[CheckResult] = field(default_factory=list)
    providers: dict[str, str] = field(default_factory=dict)  # name -> "ok" | "not available: ..."
    # Files of the folder that differ from its manifest.json (`ae-export parity`): one line each. A run
    # whose numbers all pass still fails on one, so neither its table nor parity.json may say PASS.
    integrity: list[str] = field(default_factory=list)

    @property
    def checks_passed(self) -> bool:
        """Every check ran within tolerance (and at least one ran); the folder's integrity aside."""
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def passed(self) -> bool:
        return self.checks_passed and not self.integrity

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def failure_summary(self) -> str:
        lines = [
            f"parity FAILED: {r.artifact} on {r.provider} at batch {r.batch_size} ({r.inputs} inputs): "
            f"{r.failed_elements} elements outside tolerance; max abs {r.max_abs:.3e}, max rel "
            f"{r.max_rel:.3e}; tolerance atol {r.atol:g}, rtol {r.rtol:g}"
            for r in self.failures()
        ]
        if not self.results:
            states = "; ".join(f"{name}: {state}" for name, state in self.providers.items())
            lines.append(f"parity FAILED: no check could run ({states})")
        return "\n".join(lines) if lines else "parity passed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "providers": self.providers,
            "rule": "element fails if abs_err > atol and abs_err / |ref| > rtol",
            "reference": "PyTorch eval, float32, CPU",
            "results": [{**asdict(r), "passed": r.passed} for r in self.results],
            "integrity": list(self.integrity),
        }

    def table(self) -> str:
        """One row per artifact x provider x batch size: the worst input kind's errors."""
        rows: dict[tuple[str, str, int], list[CheckResult]] = {}
        for r in self.results:
            rows.setdefault((r.artifact, r.provider, r.batch_size), []).append(r)
        header = (
            f"{'artifact':<17} {'provider':<8} {'batch':>5} {'max abs':>10} {'max rel':>10} "
            f"{'mean abs':>10} {'atol/rtol':>11} {'ort ms':>8}  result"
        )
        lines = [header, "-" * len(header)]
        for (artifact, provider, batch), group in rows.items():
            worst = max(group, key=lambda r: r.max_abs)
            ok = all(r.passed for r in group)
            lines.append(
                f"{artifact:<17} {provider:<8} {batch:>5} {worst.max_abs:>10.2e} "
                f"{max(r.max_rel for r in group):>10.2e} {worst.mean_abs:>10.2e} "
                f"{worst.atol:>5.0e}/{worst.rtol:<5.0e} {sum(r.ort_ms for r in group):>8.2f}  "
                f"{'ok' if ok else 'FAIL'}"
            )
        for name, state in self.providers.items():
            if state != "ok":
                lines.append(f"{name}: {state}")
        changed = f"; {len(self.integrity)} file(s) differ from the manifest" if self.integrity else ""
        lines.append(f"overall: {'PASS' if self.passed else 'FAIL'} ({len(self.results)} checks{changed})")
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        atomic_write_json(path, self.to_dict())


def compare(ort_out: np.ndarray, ref: np.ndarray, tol: Tolerance) -> tuple[float, float, float, int]:
    """(max abs, max rel, mean abs, elements failing both atol and rtol).

    The reported max rel covers the elements whose reference exceeds atol in magnitude: below that, a
    relative error says nothing (a reference of exactly 0 gave 6.7e+300 here), and those elements are
    judged by their abs error anyway. The failure count uses every element.
    """
    if ort_out.shape != ref.shape:
        raise ValueError(f"shape mismatch: onnxruntime {ort_out.shape} vs pytorch {ref.shape}")
    magnitude = np.abs(ref.astype(np.float64))
    abs_err = np.abs(ort_out.astype(np.float64) - ref.astype(np.float64))
    rel_err = abs_err / np.maximum(magnitude, np.finfo(np.float64).tiny)
    failed = int(np.count_nonzero((abs_err > tol.atol) & (rel_err > tol.rtol)))
    failed += int(np.count_nonzero(~np.isfinite(ort_out)))
    shown_rel = rel_err[magnitude > tol.atol]
    max_rel = float(shown_rel.max()) if shown_rel.size else 0.0
    return float(abs_err.max()), max_rel, float(abs_err.mean()), failed


def check(
    artifact: str,
    provider: str,
    batch: int,
    inputs: str,
    got: np.ndarray,
    want: np.ndarray,
    tol: Tolerance,
    ort_ms: float,
) -> CheckResult:
    max_abs, max_rel, mean_abs, failed = compare(got, want, tol)
    return CheckResult(
        artifact, provider, batch, inputs, max_abs, max_rel, mean_abs, tol.atol, tol.rtol, failed, ort_ms
    )


def open_exact(path: Path, provider: str, threads: int) -> ort.InferenceSession:
    """The runtime's own session on exactly this provider (never a silent CPU fallback).

    Spinning off: ORT's idle threads must not steal the cores from the PyTorch reference.
    """
    session, _ = open_session(path, provider, threads, spinning=False)
    return session


def provider_status(probe_model: Path, threads: int = 1) -> dict[str, str]:
    """Which providers really start, tried on a real file: "ok" or "not available: <reason>"."""
    status: dict[str, str] = {}
    available = ort.get_available_providers()
    for name in PROVIDERS:
        if ORT_PROVIDER[name] not in available:
            status[name] = f"not available ({ORT_PROVIDER[name]} not in this onnxruntime build)"
            continue
        try:
            open_exact(probe_model, name, threads)
            status[name] = "ok"
        except Exception as err:  # onnxruntime raises bare pybind11 types; the reason is reported
            status[name] = f"not available ({err})"
    return status


def _tile(images: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(images))
    return np.concatenate([images] * reps)[:n]


def make_inputs(
    model: DenoisingAutoencoder, images: np.ndarray | None, batch: int, seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """Per input kind ('image' or 'latent'): named float32 input batches of size `batch`."""
    rng = np.random.default_rng(seed + batch)
    image_inputs: dict[str, np.ndarray] = {}
    if images is not None and len(images):
        clean = _tile(images, batch).astype(np.float32)[:, None] / 255.0  # (B, 1, 28, 28)
        noisy = add_noise(clean, NOISE_STD, rng)
        image_inputs["clean"] = clean
        image_inputs["noisy"] = noisy
    image_inputs["uniform"] = rng.random((batch, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        real = model.encode(torch.from_numpy(np.concatenate(list(image_inputs.values())))).numpy()
    mean, std = real.mean(0), real.std(0) + 1e-3
    latent_inputs = {
        "latent-real": real[:batch].astype(np.float32),
        "latent-random": (mean + std * rng.standard_normal((batch, real.shape[1]))).astype(np.float32),
    }
    return {"image": image_inputs, "latent": latent_inputs}


def _reference(model: DenoisingAutoencoder, spec: ArtifactSpec, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module_for(model, spec)(torch.from_numpy(x)).numpy()


def run_parity(
    model: DenoisingAutoencoder,
    onnx_dir: str | Path,
    images: np.ndarray | None = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    providers: Iterable[str] = PROVIDERS,
    seed: int = 0,
    threads: int | None = None,
) -> ParityReport:
    """Check every artifact x provider x batch size x input kind, plus decoder(encoder(x)) == denoiser(x).

    images: real (N, 28, 28) uint8 test images (clean and noisy inputs are made from them); without them
    only uniform random images and latents spread like theirs are used.
    """
    onnx_dir = Path(onnx_dir)
    model = model.eval().cpu()
    threads = threads or physical_cores()
    torch.set_num_threads(threads)
    report = ParityReport()
    for name in providers:
        if name not in PROVIDERS:
            raise ValueError(f"unknown provider {name!r}; valid: {', '.join(PROVIDERS)}")
    for spec in SPECS.values():
        if not (onnx_dir / spec.file_name).is_file():
            raise FileNotFoundError(f"{onnx_dir / spec.file_name}: missing (run `ae-export` first)")
    status = provider_status(onnx_dir / SPECS["denoiser"].file_name)
    report.providers = {name: status[name] for name in providers}

    # References first, all of them, so PyTorch and ONNX Runtime never run at the same time.
    cases: list[tuple[ArtifactSpec, int, str, np.ndarray, np.ndarray]] = []
    for batch in batch_sizes:
        inputs = make_inputs(model, images, batch, seed)
        for spec in SPECS.values():
            for kind, x in inputs[spec.input_kind].items():
                cases.append((spec, batch, kind, x, _reference(model, spec, x)))

    for provider in providers:
        if report.providers[provider] != "ok":
            continue
        sessions = {role: open_exact(onnx_dir / s.file_name, provider, threads) for role, s in SPECS.items()}
        for spec, batch, kind, x, ref in cases:
            tol = spec.tolerance(provider)
            session = sessions[spec.role]
            started = time.perf_counter()
            (out,) = session.run(None, {session.get_inputs()[0].name: x})
            ms = (time.perf_counter() - started) * 1e3
            report.results.append(check(spec.role, provider, batch, kind, out, ref, tol, ms))
            if spec.role == "denoiser":  # composition: ONNX decoder(encoder(x)) == ONNX denoiser(x)
                enc, dec = sessions["encoder"], sessions["decoder"]
                started = time.perf_counter()
                (z,) = enc.run(None, {enc.get_inputs()[0].name: x})
                (y,) = dec.run(None, {dec.get_inputs()[0].name: z})
                ms = (time.perf_counter() - started) * 1e3
                report.results.append(check("decoder(encoder)", provider, batch, kind, y, out, tol, ms))
    return report


def size_inputs(height: int, width: int, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Named (B, 1, H, W) float32 inputs for any-size models: a photograph's crop, clean and noisy, and
    uniform noise. The photograph is scikit-image's `camera` (a validation image, never trained on)."""
    rng = np.random.default_rng(seed + batch + 1000 * height + width)
    camera = bundled_photos("val").images[0]  # (512, 512) uint8
    reps = (-(-height // camera.shape[0]), -(-width // camera.shape[1]))
    crops = []
    for _ in range(batch):
        tiled = np.tile(camera, reps)
        top = int(rng.integers(0, tiled.shape[0] - height + 1))
        left = int(rng.integers(0, tiled.shape[1] - width + 1))
        crops.append(tiled[top : top + height, left : left + width])
    clean = np.stack(crops)[:, None].astype(np.float32) / 255.0  # (B, 1, H, W)
    return {
        "clean": clean,
        "noisy": add_noise(clean, 25 / 255, rng),
        "uniform": rng.random((batch, 1, height, width), dtype=np.float32),
    }


# The runtime's halo tiles are certified too: at this tile size (pixels), parity sizes above ~256x256 run
# as several tiles, through the plan and stitching that `Denoiser` uses on large photographs (batches of
# 1 and 2: one photograph, and the tiles of two in one call).
TILED_PARITY_PIXELS = 256 * 256
TILED_PARITY_BATCHES = (1, 2)


def any_size_cases(
    model: torch.nn.Module,
    sizes: Sequence[tuple[int, int]],
    batch_sizes: Sequence[int],
    seed: int,
    max_pixels: int,
) -> list[tuple[str, int, str, np.ndarray, np.ndarray]]:
    """("HxW", batch, input kind, input, PyTorch's output) for every size x batch size whose batch x H x W
    stays within `max_pixels` (batch 1 always); the reference is run the way the runtime pads and crops."""
    cases = []
    for height, width in sizes:
        for batch in batch_sizes:
            if batch > 1 and batch * height * width > max_pixels:
                continue
            for kind, x in size_inputs(height, width, batch, seed).items():
                with torch.no_grad():
                    ref = denoise_any_size(model, torch.from_numpy(x)).numpy()
                cases.append((f"{height}x{width}", batch, kind, x, ref))
    return cases


def run_parity_any_size(
    model: torch.nn.Module,
    onnx_dir: str | Path,
    sizes: Sequence[tuple[int, int]] = ANY_SIZE_PARITY_SIZES,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    providers: Iterable[str] = PROVIDERS,
    seed: int = 0,
    threads: int | None = None,
    max_pixels: int = 1 << 21,
) -> ParityReport:
    """Parity of a denoiser with symbolic height/width at several image sizes, with the lecture's rules.

    Per size, every batch size whose batch x H x W stays within `max_pixels` runs (batch 1 always), so a
    512x512 check does not allocate 1000 photographs. Sizes that are not multiples of the model's
    `size_multiple` are padded by the runtime's own `pad_to_multiple` and cropped back, and compared with
    the PyTorch model run the same way (train.fcn.denoise_any_size): the path users really take.
    Where the file gives a receptive radius, sizes that split into halo tiles of TILED_PARITY_PIXELS are
    also checked as tiles ("denoiser HxW tiled"), against the same whole-image PyTorch result.
    """
    onnx_dir = Path(onnx_dir)
    spec = ANY_SIZE_DENOISER
    path = onnx_dir / spec.file_name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run `ae-export` first)")
    model = model.eval().cpu()
    threads = threads or physical_cores()
    torch.set_num_threads(threads)
    for name in providers:
        if name not in PROVIDERS:
            raise ValueError(f"unknown provider {name!r}; valid: {', '.join(PROVIDERS)}")
    report = ParityReport()
    status = provider_status(path)
    report.providers = {name: status[name] for name in providers}
    multiple = 2 ** int(model.config.fcn_levels)

    cases = [
        (f"denoiser {size}", batch, kind, x, ref)
        for size, batch, kind, x, ref in any_size_cases(model, sizes, batch_sizes, seed, max_pixels)
    ]

    for provider in providers:
        if report.providers[provider] != "ok":
            continue
        session = open_exact(path, provider, threads)
        name = session.get_inputs()[0].name
        radius = parse_metadata(session.get_modelmeta().custom_metadata_map, str(path)).receptive_radius
        tol = spec.tolerance(provider)

        def run(windows: np.ndarray, session: ort.InferenceSession = session, name: str = name) -> np.ndarray:
            return session.run(None, {name: windows})[0]

        for artifact, batch, kind, x, ref in cases:
            padded = pad_to_multiple(x, multiple)
            started = time.perf_counter()
            out = run(padded)
            ms = (time.perf_counter() - started) * 1e3
            got = np.ascontiguousarray(out[..., : x.shape[2], : x.shape[3]])
            report.results.append(check(artifact, provider, batch, kind, got, ref, tol, ms))
            if radius is None or batch not in TILED_PARITY_BATCHES:
                continue
            plan = plan_tiles(*padded.shape[2:], batch, radius, multiple, 1, TILED_PARITY_PIXELS)
            if plan.count > 1:
                started = time.perf_counter()
                got = run_tiled(run, padded, plan, x.shape[2:], 1, max_pixels)
                ms = (time.perf_counter() - started) * 1e3
                report.results.append(check(f"{artifact} tiled", provider, batch, kind, got, ref, tol, ms))
    return report
