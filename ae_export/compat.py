"""Compatibility matrix: do other consumers of ONNX load the exported files and compute the same thing?

    ae-export compat [--onnx-dir artifacts/onnx] [--batch-sizes 1,8,256] [--json PATH] [--markdown]

Why: a file that ONNX Runtime runs is not yet a file OpenVINO (Intel edge boxes) or OpenCV's DNN
module (C++ vision apps) runs. Each exported file (and each `.onnx` variant the manifest lists) is
loaded by each consumer and run at every batch size of the dynamic batch axis; its output is compared
with ONNX Runtime (CPU) running the same file on the same input. A consumer that cannot load or run a
file is reported with the consumer's own error message (OpenCV, for instance, has no Col2Im layer and
does not load the "fast" graph, whose decoder uses Col2Im): the matrix lists it, it is never hidden.
Each row also says which graph the file holds ("fast" when it uses Col2Im, else "portable").

Precision: OpenVINO compiles for the CPU's fastest precision by default, bfloat16 on CPUs with AMX or
AVX512-BF16, which moves the denoiser's output by ~4e-4. The matrix asks for f32
(`INFERENCE_PRECISION_HINT`), so a difference means a different function, not a different precision.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import openvino as ov

from ae_export import fastgraph
from ae_export.cliargs import HelpFormatter, parse_batch_sizes, parse_csv
from ae_export.specs import COMPAT_JSON
from ae_export.targets import ExportedFile, exported_files
from runtimes.fileio import atomic_write_json, unwritable_file
from runtimes.manifest import ManifestError
from runtimes.metadata import MetadataError, parse_metadata
from runtimes.sessions import InvalidModelError, open_session

CONSUMERS = ("openvino", "opencv")
BATCH_SIZES = (1, 8, 256)
# Max abs difference to ONNX Runtime running the same file, per variant (the one place they are stated).
TOLERANCES: dict[str, float] = {
    # fp32 on both sides: the same math in another order; measured <= 1.2e-7 (OpenVINO, f32 hint) and
    # <= 1.2e-7 (OpenCV) on the three artifacts; 1e-5 is the project's CPU parity tolerance.
    "fp32": 1e-5,
    "fast": 1e-5,  # the exactly-rewritten fp32 graph (sub-pixel Conv + Col2Im): same bound as fp32
    "portable": 1e-5,  # the fp32 model in torch's graph (ConvTranspose), beside a fast fp32 export
    # fp16 weights and compute, fp32 I/O: ONNX Runtime rounds intermediates to fp16 (one ulp is 9.8e-4 at
    # 1.0, 3.9e-3 at 4) while OpenVINO (f32 hint) and OpenCV compute in f32 from the same fp16 weights, so
    # the output moves by the rounding of the hidden layers, not a fault. Measured on the default model
    # (10 epochs): up to 1.5e-3 (OpenVINO, decoder, batch 256); a briefly trained model: 1.2e-4. 4e-3 is
    # 2.7x the worst measured and still 2.5x below a real fault (a nudged weight tensor moves ~1e-2).
    "fp16": 4e-3,
    # int8 QDQ: each consumer rounds requantization at its own point, so an output may move by a step of
    # its 8-bit grid (1/255 = 3.9e-3 over [0, 1]), and a flip in an early layer propagates. Measured on the
    # default model: up to 2.3e-2 (OpenVINO, denoiser, batch 256: a few steps); a briefly trained model:
    # 2.3e-3. 5e-2 is 2.2x the worst measured and still catches a wrong scale (outputs move by > 0.1).
    "int8": 5e-2,
}

Runner = Callable[[np.ndarray], np.ndarray]


class ConsumerError(RuntimeError):
    """A consumer failed to load or run a file; the message is the consumer's own."""


def _openvino_error(err: RuntimeError) -> ConsumerError:
    """OpenVINO's message without its "Exception from src/...cpp:N:" stack lines, which say nothing."""
    lines = [line for line in str(err).splitlines() if line.strip() and not line.startswith("Exception from")]
    return ConsumerError(f"OpenVINO {ov.__version__.split('-')[0]}: {' '.join(lines) or err}")


def load_openvino(path: Path, threads: int | None = None, precision: str | None = "f32") -> Runner:
    """OpenVINO on the CPU; `precision` None keeps the device's default (bf16 on AMX/AVX512-BF16 CPUs)."""
    config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", config)
    except RuntimeError as err:  # OpenVINO raises RuntimeError subclasses carrying its own message
        raise _openvino_error(err) from err

    def run(x: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(compiled(x)[0])
        except RuntimeError as err:
            raise _openvino_error(err) from err

    return run


def load_opencv(path: Path, threads: int | None = None) -> Runner:
    """OpenCV DNN (its default CPU backend); `threads` sets OpenCV's process-wide thread count."""
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # the error comes back as cv2.error
    if threads is not None:
        cv2.setNumThreads(threads)
    try:
        net = cv2.dnn.readNetFromONNX(str(path))
    except cv2.error as err:
        raise ConsumerError(str(err).strip()) from err

    def run(x: np.ndarray) -> np.ndarray:
        try:
            net.setInput(x)
            return np.asarray(net.forward())
        except cv2.error as err:
            raise ConsumerError(str(err).strip()) from err

    return run


LOADERS: dict[str, Callable[[Path], Runner]] = {"openvino": load_openvino, "opencv": load_opencv}
assert tuple(LOADERS) == CONSUMERS


def load_onnxruntime(path: Path, threads: int | None = None) -> Runner:
    """The reference: ONNX Runtime on the CPU through the project's one session opener."""
    session, _ = open_session(path, "cpu", threads=threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


@dataclass(frozen=True)
class CompatRow:
    consumer: str
    model: str  # "denoiser", "denoiser_fp16", ...
    variant: str
    file: str
    graph: str  # "fast" (uses Col2Im) | "portable" | "-" (not an ONNX file)
    batch: int
    status: str  # "ok" | "mismatch" | "cannot load" | "cannot run"
    max_abs: float | None
    tolerance: float
    error: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "ok"


def graph_kind(path: Path) -> str:
    """The ONNX file's graph ("fast" or "portable", see ae_export.fastgraph.graph_kind); "-" for .ort."""
    if path.suffix != ".onnx":
        return "-"
    return fastgraph.graph_kind(onnx.load(str(path), load_external_data=False))


def tolerance(variant: str) -> float:
    """The variant's tolerance; an ORT-format variant ("fp16.ort") has its precision's."""
    try:
        return TOLERANCES[variant.removesuffix(".ort")]
    except KeyError:
        raise ValueError(
            f"no compat tolerance for variant {variant!r}; stated for {', '.join(TOLERANCES)}"
        ) from None


def sample_inputs(path: Path, batch: int, seed: int = 0) -> np.ndarray:
    """A batch the file accepts: uniform over the input's range (images in [0, 1]), else N(0, 1) (latents)."""
    session, _ = open_session(path, "cpu")
    meta = parse_metadata(session.get_modelmeta().custom_metadata_map, str(path))
    rng = np.random.default_rng(seed + batch)
    multiple = meta.input.size_multiple  # a symbolic height/width: the smallest multiple >= 28 pixels
    shape = (batch, *(d if d is not None else -(-28 // multiple) * multiple for d in meta.input.sample_shape))
    if meta.input.value_range is not None:
        low, high = meta.input.value_range
        return rng.uniform(low, high, shape).astype(np.float32)
    return rng.standard_normal(shape, dtype=np.float32)


def check_file(exported: ExportedFile, consumers: Sequence[str], batches: Sequence[int]) -> list[CompatRow]:
    """One row per consumer x batch for one file: load once per consumer, compare at every batch."""
    tol = tolerance(exported.variant)
    graph = graph_kind(exported.path)
    rows: list[CompatRow] = []
    expected: dict[int, np.ndarray] = {}
    for consumer in consumers:
        row = {"consumer": consumer, "model": exported.name, "variant": exported.variant}
        row |= {"file": exported.path.name, "graph": graph, "tolerance": tol}
        try:
            run = LOADERS[consumer](exported.path)
        except ConsumerError as err:
            rows += [
                CompatRow(**row, batch=b, status="cannot load", max_abs=None, error=str(err)) for b in batches
            ]
            continue
        if not expected:  # the reference runs only where some consumer loaded the file
            reference = load_onnxruntime(exported.path)
            inputs = {b: sample_inputs(exported.path, b) for b in batches}
            expected = {b: reference(x) for b, x in inputs.items()}
        for b in batches:
            try:
                got = run(inputs[b])
            except ConsumerError as err:
                rows.append(CompatRow(**row, batch=b, status="cannot run", max_abs=None, error=str(err)))
                continue
            if got.shape != expected[b].shape:
                error = f"output shape {got.shape} != ONNX Runtime's {expected[b].shape}"
                rows.append(CompatRow(**row, batch=b, status="mismatch", max_abs=None, error=error))
                continue
            diff = float(np.abs(got.astype(np.float64) - expected[b]).max())
            status = "ok" if diff <= tol else "mismatch"
            rows.append(CompatRow(**row, batch=b, status=status, max_abs=diff))
    return rows


def run_compat(
    onnx_dir: Path, consumers: Sequence[str] = CONSUMERS, batches: Sequence[int] = BATCH_SIZES
) -> list[CompatRow]:
    """The whole matrix for an export folder, `.ort` files included: they are ONNX Runtime's own format,
    and the matrix shows each consumer's own refusal rather than leaving them out silently."""
    bad = [c for c in consumers if c not in LOADERS]
    if bad:
        raise ValueError(f"unknown consumer(s) {bad}; choose from {', '.join(CONSUMERS)}")
    rows = []
    for exported in exported_files(onnx_dir):
        rows += check_file(exported, consumers, batches)
    return rows


def versions() -> dict[str, str]:
    return {"onnxruntime": onnxruntime.__version__, "openvino": ov.__version__, "opencv": cv2.__version__}


def markdown(rows: Sequence[CompatRow]) -> str:
    """consumer x model: loads?, max abs diff over the batch sizes, tolerance, the consumer's error."""
    lines = [
        "| consumer | model (variant, graph) | loads | batches ok | max abs diff | tolerance | error |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[CompatRow]] = {}
    for row in rows:
        groups.setdefault((row.consumer, row.model), []).append(row)
    for (consumer, model), group in groups.items():
        loads = "no" if group[0].status == "cannot load" else "yes"
        ok = [r.batch for r in group if r.passed]
        diffs = [r.max_abs for r in group if r.max_abs is not None]
        worst = f"{max(diffs):.1e}" if diffs else "-"
        error = next((r.error for r in group if r.error), "").splitlines()
        shown = " / ".join(line.strip() for line in error[:2])[:200].replace("|", "\\|")
        lines.append(
            f"| {consumer} | {model} ({group[0].variant}, {group[0].graph}) | {loads} | "
            f"{','.join(map(str, ok)) or '-'} | {worst} | {group[0].tolerance:.0e} | {shown} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ae-export compat",
        description="Load every exported file in OpenVINO and OpenCV DNN and compare with ONNX Runtime.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--onnx-dir", default="artifacts/onnx", help="the export folder (ae-export --out)")
    p.add_argument("--consumers", default=",".join(CONSUMERS), help=f"subset of {', '.join(CONSUMERS)}")
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="comma-separated")
    p.add_argument(
        "--json", default=None, help=f"write the rows and versions here (default: ONNX_DIR/{COMPAT_JSON})"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 every file a consumer loads matches (files it cannot load are listed, not failed);
    1 a consumer computed a different result or failed mid-run; 2 bad input."""
    args = build_parser().parse_args(argv)
    try:
        batches = parse_batch_sizes(args.batch_sizes)  # ae-export's own reading of the flag
        consumers = parse_csv(args.consumers, str, "consumers", CONSUMERS)  # ' opencv' was unknown
        out = Path(args.json) if args.json else Path(args.onnx_dir) / COMPAT_JSON
        unwritable = unwritable_file(out, "--json", COMPAT_JSON) if args.json else None
        if unwritable:  # before every consumer runs every file (minutes), not after
            raise ValueError(unwritable)
        rows = run_compat(Path(args.onnx_dir), consumers, batches)
        report = {"versions": versions(), "tolerances": TOLERANCES, "rows": [asdict(r) for r in rows]}
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, report)
    except (ValueError, ManifestError, MetadataError, InvalidModelError, FileNotFoundError, OSError) as err:
        print(f"ae-export compat: error: {err}", file=sys.stderr)
        return 2
    print(", ".join(f"{k} {v}" for k, v in versions().items()))
    print(markdown(rows))
    print(f"wrote {out}")
    failed = [r for r in rows if r.status in ("mismatch", "cannot run")]
    for row in failed:
        print(f"FAIL {row.consumer} {row.model} batch {row.batch}: {row.status} {row.max_abs} {row.error}")
    return 1 if failed else 0
