"""Writing `manifest.json`: one record per file of an export folder, the place people and the runtime read.

Each model file gets its role, variant, precision, format, size, sha256, opset, the layers kept in float
(int8), its quality on the standard test and the loss against fp32, its parity figures, and (denoisers)
its throughput against the fp32 file at batch 1 and 256, measured in the same run. The reader lives in
`runtimes.manifest` (standard library only); this side needs onnx to read opsets.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import ae_export
from ae_export.cpu import cpu_info
from ae_export.parity import ParityReport
from runtimes.fileio import atomic_write_json
from runtimes.manifest import MANIFEST_FILE, MANIFEST_FORMAT, sha256_file
from runtimes.sessions import open_session, physical_cores

INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "avx_vnni_int8", "asimddp")
THROUGHPUT_BATCHES = (1, 256)


def cpu_int8_support() -> dict[str, Any]:
    """Whether this CPU has int8 dot-product instructions (x86 VNNI, ARM dotprod), from /proc/cpuinfo.

    Why it matters: without them int8 kernels widen to 16/32 bits and int8 buys size, not speed.
    """
    info = cpu_info()
    if info is None:
        return {"known": False, "int8_dot_product": None, "flags": [], "cpu": platform.processor()}
    flags, model = info
    model = model or platform.processor()
    present = [f for f in INT8_DOT_FLAGS if f in flags]
    return {"known": True, "int8_dot_product": bool(present), "flags": present, "cpu": model}


def measure_throughput(
    paths: Mapping[str, Path],
    images: np.ndarray,
    batches: Sequence[int] = THROUGHPUT_BATCHES,
    threads: int | None = None,
    rounds: int = 3,
    min_seconds: float = 0.15,
) -> dict[str, dict[int, float]]:
    """images/s of each file at each batch size, best of `rounds` interleaved rounds (so every file sees
    the same machine load), with the runtime's own session options."""
    threads = threads or physical_cores()
    sessions = {name: open_session(path, "cpu", threads)[0] for name, path in paths.items()}
    best: dict[str, dict[int, float]] = {name: dict.fromkeys(batches, 0.0) for name in paths}
    for _ in range(rounds):
        for batch in batches:
            x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
            for name, session in sessions.items():
                feed = {session.get_inputs()[0].name: x}
                session.run(None, feed)  # warm-up
                runs, started = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - started) < min_seconds or runs < 3:
                    session.run(None, feed)
                    runs += 1
                best[name][batch] = max(best[name][batch], runs * batch / elapsed)
    return best


def opset_of(path: Path) -> int | None:
    if path.suffix != ".onnx":
        return None
    proto = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def parity_summary(report: ParityReport, file_name: str) -> dict[str, Any]:
    """Worst figures of one file's checks, against PyTorch and against the fp32 file."""
    summary: dict[str, Any] = {}
    for label, pick in (
        ("vs_torch", lambda k: not k.endswith("vs fp32")),
        ("vs_fp32", lambda k: k.endswith("vs fp32")),
    ):
        rows = [r for r in report.results if r.artifact == file_name and pick(r.inputs)]
        if rows:
            summary[label] = {
                "max_abs": max(r.max_abs for r in rows),
                "mean_abs": max(r.mean_abs for r in rows),
                "atol": rows[0].atol,
                "rtol": rows[0].rtol,
                "checks": len(rows),
                "passed": all(r.passed for r in rows),
            }
    return summary


def file_entry(folder: Path, name: str, kind: str, **fields: Any) -> dict[str, Any]:
    path = folder / name
    return {"file": name, "kind": kind, "size": path.stat().st_size, "sha256": sha256_file(path), **fields}


def write_manifest(folder: Path, files: list[dict[str, Any]], extra: Mapping[str, Any]) -> Path:
    """manifest.json, written atomically; figures that are not numbers are null (a rejected variant whose
    outputs were NaN scores a NaN loss, and its record must still be written: `fileio.json_ready`)."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "producer": f"ae-export {ae_export.__version__}",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
        "files": files,
    }
    path = folder / MANIFEST_FILE
    atomic_write_json(path, manifest)
    return path
