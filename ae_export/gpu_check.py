"""`make gpu-check`: every CUDA path of the project in one command, with a report (JSON + text).

    python -m ae_export.gpu_check [--checkpoint artifacts/checkpoint.pt] [--onnx-dir artifacts/onnx]
                                  [--out artifacts/gpu_check]

Why one command: the CUDA paths (training on `cuda`, parity on CUDAExecutionProvider with TF32 off, the
runtime's `cuda` provider, the benchmark's CUDA rows, the `gpu`-marked tests) each skip cleanly on a
CPU-only machine, so they can rot unseen. This runs them all, each as the user would (a subprocess of
the project's own CLI), and records what ran, how long, and its output's tail. The photo model's CUDA
path (training, export, parity with its halo tiles, `ae-denoise` on colour and 12 MP photographs) runs
on a short model trained here, so it needs no `make photo` first; its `ae-denoise` output on CUDA must
equal the CPU's within one 8-bit level.

Honesty rules: without a usable GPU it says so, writes a report that says nothing ran, and exits 0;
it never reports a CPU fallback as a GPU result (the CUDA probe opens a real session with the
project's own opener, which refuses a silent fallback), and a `gpu` test run where every test skipped
is a failure, not a pass. A last step profiles one run of each file `Denoiser` opens on CUDA and fails
if ONNX Runtime ran any node on the CPU (it does so silently for ops without a CUDA kernel, such as
the fast graph's Col2Im: parity passes, only the speed shows it).
Exit codes: 0 all ran and passed, or no GPU; 1 a step failed; 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ae_export.export import ExportError, check_out_dir
from runtimes.denoiser import Denoiser
from runtimes.fileio import atomic_write_json, atomic_write_text
from runtimes.manifest import DEFAULT_VARIANT, variants_present
from runtimes.sessions import (
    CPU_EP,
    CUDA_EP,
    InvalidModelError,
    ProviderUnavailableError,
    open_session,
    session_options,
)

BENCH_MODULE = "bench.cli"
GPU_VARIANTS = ("fp32", "fp16")  # the precisions meant for a GPU (int8 is the CPU's)
STEP_TIMEOUT_S = 1800
PHOTO_TRAIN_STEPS = 100  # a short photo model: the check is of the CUDA path, not of its quality
# The 12 MP photograph (a camera's frame) that makes the runtime cut halo tiles; the others run whole.
LARGE_PHOTO = (3000, 4000)
PHOTO_NOISE = 0.1  # ae-denoise --add-noise: the same seeded noise on both providers


@dataclass
class Step:
    name: str
    command: list[str]
    returncode: int | None = None
    seconds: float = 0.0
    status: str = "not run"  # "passed" | "failed" | "not run"
    detail: str = ""
    output_tail: str = ""


def probe(onnx_dir: Path) -> tuple[str, str]:
    """("none" | "unusable" | "usable", facts): is there a GPU, and do torch and ONNX Runtime really use it?

    ONNX Runtime is asked to open a real CUDA session on the exported denoiser with the project's own
    opener, which raises instead of falling back to the CPU silently.
    """
    smi = shutil.which("nvidia-smi")
    smi_gpus = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False).stdout if smi else ""
    facts = [f"nvidia-smi: {smi_gpus.strip() or 'no GPU listed' if smi else 'not found'}"]
    torch_cuda = torch.cuda.is_available()
    facts.append(
        f"torch {torch.__version__}: "
        + (f"CUDA {torch.cuda.get_device_name(0)}" if torch_cuda else "no CUDA device")
    )
    available = ort.get_available_providers()
    facts.append(f"onnxruntime {ort.__version__} providers: {', '.join(available)}")
    ort_cuda = False
    if CUDA_EP in available and not (onnx_dir / "denoiser.onnx").is_file():
        facts.append(f"CUDA session not tried: no {onnx_dir / 'denoiser.onnx'} (run `make export`)")
    elif CUDA_EP in available:
        try:
            _, provider = open_session(onnx_dir / "denoiser.onnx", "cuda")
            ort_cuda = provider == "cuda"
            facts.append(f"CUDA session on denoiser.onnx: {provider}")
        except (ProviderUnavailableError, InvalidModelError) as err:
            facts.append(f"CUDA session failed: {err}")
    if not (torch_cuda or ort_cuda or "GPU" in smi_gpus):
        return "none", "; ".join(facts)
    if not (torch_cuda and ort_cuda):
        facts.append("a GPU is here but not every stack can use it (for ONNX Runtime: `make setup-gpu`)")
        return "unusable", "; ".join(facts)
    return "usable", "; ".join(facts)


def placement(path: Path, provider: str, work: Path) -> dict[str, list[str]]:
    """execution provider -> op types it ran, from one profiled run of `path` (symbolic axes set to 2)."""
    options = session_options(1, spinning=False)
    options.enable_profiling = True
    options.profile_file_prefix = str(work / "placement")
    session, _ = open_session(path, provider, options=options)
    tensor = session.get_inputs()[0]
    # Batch 2; any-size models get 64x64 (a symbolic height or width of 2 is below their stride).
    shape = [d if isinstance(d, int) else 2 if i == 0 else 64 for i, d in enumerate(tensor.shape)]
    session.run(None, {tensor.name: np.random.default_rng(0).random(shape, dtype=np.float32)})
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    ops: dict[str, set[str]] = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args:
            ops.setdefault(args["provider"], set()).add(args["op_name"])
    return {where: sorted(names) for where, names in ops.items()}


def cpu_nodes(onnx_dir: Path, work: Path) -> dict[str, list[str]]:
    """file name -> op types that ONNX Runtime ran on the CPU, for each file `Denoiser` opens on CUDA.

    Why: ORT moves a node without a CUDA kernel to the CPU silently, with host copies around it; parity
    still passes and only the speed shows it (the fast graph's Col2Im cost 3.9x at batch 256 on an
    H200). One profiled run per file reads where every node really ran: the default files and, where
    the export has them, the GPU precision's (`GPU_VARIANTS`).
    """
    present = variants_present(onnx_dir)
    files: dict[Path, None] = {}
    for variant in [v for v in GPU_VARIANTS if v == DEFAULT_VARIANT or v in present]:
        denoiser = Denoiser(onnx_dir, provider="cuda", warmup=False, variant=variant)
        folder = denoiser.path.parent
        files |= dict.fromkeys(
            folder / f for f in [denoiser.path.name, *denoiser.metadata.artifacts.values()]
        )
    return {path.name: placement(path, "cuda", work).get(CPU_EP, []) for path in files}


def placement_step(onnx_dirs: dict[str, Path], work: Path) -> Step:
    """`onnx_dirs`: a label for the report ("" for the default model) -> export folder."""
    step = Step("every node of the files Denoiser opens runs on CUDA", ["(in process) profiled runs"])
    start = time.perf_counter()
    try:
        found = {
            f"{label} {name}".strip(): ops
            for label, folder in onnx_dirs.items()
            for name, ops in cpu_nodes(folder, work).items()
        }
    except (ProviderUnavailableError, InvalidModelError, FileNotFoundError, ValueError) as err:
        step.status, step.detail = "failed", str(err)
    else:
        on_cpu = {file: ops for file, ops in found.items() if ops}
        step.status = "failed" if on_cpu else "passed"
        step.detail = (
            "; ".join(f"{file}: {', '.join(ops)} on the CPU" for file, ops in on_cpu.items())
            if on_cpu
            else f"{', '.join(found)}: all on CUDA"
        )
    step.returncode = 0 if step.status == "passed" else 1
    step.seconds = round(time.perf_counter() - start, 1)
    return step


def steps(checkpoint: Path, onnx_dir: Path, work: Path) -> list[Step]:
    py = [sys.executable, "-m"]
    ckpt, onnx, clean = str(checkpoint), str(onnx_dir), str(work / "clean")
    train = [
        "train.cli",
        "--device",
        "cuda",
        "--epochs",
        "1",
        "--limit",
        "2048",
        "--out",
        str(work / "train"),
    ]
    parity = ["ae_export.cli", "parity", "--checkpoint", ckpt, "--onnx-dir", onnx, "--providers", "cpu,cuda"]
    denoise = ["runtimes.cli", "--onnx", onnx, clean, "-o", str(work / "denoised"), "--provider", "cuda"]
    bench = [BENCH_MODULE, "--tiny", "--sections", "inference", "--checkpoint", ckpt, "--onnx-dir", onnx]
    return [
        Step("training on cuda (1 short epoch)", [*py, *train, "--quiet"]),
        Step("parity on CUDAExecutionProvider (TF32 off)", [*py, *parity]),
        Step(
            "sample images for the runtime", [*py, "train.demo", "prepare", "--out", clean, "--count", "256"]
        ),
        Step(
            "runtime: ae-denoise --provider cuda", [*py, *denoise, "--add-noise", "0.3", "--overwrite", "-q"]
        ),
        Step("bench: inference section with its CUDA rows", [*py, *bench, "--out", str(work / "bench.json")]),
        *photo_steps(work),
        Step(
            "bench: cuDNN algorithm search, heuristic vs exhaustive",
            [
                *py,
                "bench.cuda_conv_search",
                "--onnx-dir",
                onnx,
                "--photo-onnx",
                str(work / "photo" / "onnx"),
                "--out",
                str(work / "conv_search.json"),
            ],
        ),  # fmt: skip
        Step(
            "pytest -m gpu", [*py, "pytest", "-m", "gpu", "-q", "-rs", f"--junitxml={work / 'gpu-tests.xml'}"]
        ),
    ]


def photo_steps(work: Path) -> list[Step]:
    """The photo model's CUDA path: train briefly on cuda, export, parity on CUDA (halo tiles included),
    then ae-denoise the same photographs on both providers (compared by `photo_compare_step`)."""
    py = [sys.executable, "-m"]
    photo = work / "photo"
    ckpt, onnx, photos = str(photo / "checkpoint.pt"), str(photo / "onnx"), str(work / "photos")
    train = ["train.cli", "--preset", "photo", "--device", "cuda", "--steps", str(PHOTO_TRAIN_STEPS)]
    parity = ["ae_export.cli", "parity", "--checkpoint", ckpt, "--onnx-dir", onnx, "--providers", "cpu,cuda"]
    noise = ["--add-noise", str(PHOTO_NOISE), "--seed", "0", "--overwrite", "-q"]
    return [
        Step(
            f"photo model: training on cuda ({PHOTO_TRAIN_STEPS} steps)",
            [*py, *train, "--out", str(photo), "--quiet"],
        ),
        Step(  # fp32 only: the int8 twin is the CPU's, and a 100-step model's says nothing of its quality
            "photo model: ae-export",
            [*py, "ae_export.cli", "--checkpoint", ckpt, "--out", onnx, "--variants", "none"],
        ),
        Step("photo model: parity on CUDAExecutionProvider (tiles too)", [*py, *parity]),
        *(
            Step(
                f"photo model: ae-denoise --provider {provider} on colour and 12 MP photographs",
                [
                    *py,
                    "runtimes.cli",
                    "--onnx",
                    onnx,
                    photos,
                    "-o",
                    str(work / f"photos-{provider}"),
                    "--provider",
                    provider,
                    *noise,
                ],
            )  # fmt: skip
            for provider in ("cpu", "cuda")
        ),
    ]


def write_photos(folder: Path) -> list[str]:
    """Real photographs for the photo steps: scikit-image's colour `astronaut` and `chelsea` as they ship,
    and `camera` scaled up to a 12 MP frame (bicubic) so that the runtime cuts it into halo tiles."""
    from PIL import Image

    from runtimes.fileio import atomic_save
    from train.photos import skimage_data_dir

    folder.mkdir(parents=True, exist_ok=True)
    data = skimage_data_dir()
    for name in ("astronaut.png", "chelsea.png"):
        shutil.copyfile(data / name, folder / name)
    height, width = LARGE_PHOTO
    with Image.open(data / "camera.png") as camera:
        large = camera.convert("L").resize((width, height), Image.Resampling.BICUBIC)
    atomic_save(folder / "camera_12mp.png", lambda handle: large.save(handle, format="PNG"), fsync=False)
    return sorted(p.name for p in folder.iterdir())


def photo_compare_step(work: Path) -> Step:
    """ae-denoise's photo outputs on CUDA against the CPU's: every file, same size and mode, within one
    8-bit level (float32 sums in another order may round a pixel the other way, no more)."""
    from PIL import Image

    step = Step("photo model: ae-denoise on cuda equals cpu within 1/255", ["(in process) PNG comparison"])
    start = time.perf_counter()
    cpu_dir, cuda_dir = work / "photos-cpu", work / "photos-cuda"
    names = sorted(p.name for p in cpu_dir.glob("*.png") if not p.name.endswith(".noisy.png"))
    worst: list[str] = []
    faults: list[str] = []
    for name in names:
        if not (cuda_dir / name).is_file():
            faults.append(f"{name}: no CUDA output")
            continue
        with Image.open(cpu_dir / name) as a, Image.open(cuda_dir / name) as b:
            if (a.mode, a.size) != (b.mode, b.size):
                faults.append(f"{name}: {a.mode} {a.size} on cpu, {b.mode} {b.size} on cuda")
                continue
            diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        worst.append(
            f"{name} {a.mode} {a.size[1]}x{a.size[0]}: max {int(diff.max())}, mean {diff.mean():.1e}"
        )
        if diff.max() > 1:
            faults.append(f"{name}: differs by {int(diff.max())} levels")
    if not names:
        faults.append(f"no outputs in {cpu_dir}")
    step.status = "failed" if faults else "passed"
    step.detail = "; ".join(faults or worst)
    step.returncode = 1 if faults else 0
    step.seconds = round(time.perf_counter() - start, 1)
    return step


def _judge(step: Step, work: Path) -> None:
    """Turn a finished step into passed/failed, refusing results that did not really use the GPU."""
    step.status = "passed" if step.returncode == 0 else "failed"
    if step.name.startswith("pytest") and step.returncode == 0:
        suite = ET.parse(work / "gpu-tests.xml").getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        step.detail = f"{total - skipped} ran, {skipped} skipped"
        if total == skipped:
            step.status, step.detail = "failed", f"every gpu test skipped ({skipped}): nothing ran on the GPU"
    if step.name.startswith("bench: inference") and step.returncode == 0:
        inference = json.loads((work / "bench.json").read_text())["sections"]["inference"]
        cuda_rows = sum(1 for row in inference["rows"] if row.get("device") == "cuda")
        step.detail = f"{cuda_rows} CUDA rows in bench.json"
        if not cuda_rows:
            step.status, step.detail = "failed", "the bench wrote no CUDA row"


def run(checkpoint: Path, onnx_dir: Path, out: Path) -> dict:
    state, facts = probe(onnx_dir)
    report: dict = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor()}".strip(),
        "gpu": state,
        "probe": facts,
        "steps": [],
    }
    if state == "none":
        report["verdict"] = "NOT RUN: no GPU on this machine, so no CUDA path was exercised."
        return report
    if state == "unusable":
        report["verdict"] = "FAILED: a GPU is present but the CUDA stack cannot use it (see probe)."
        return report
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    write_photos(work / "photos")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for step in steps(checkpoint, onnx_dir, work):
        start = time.perf_counter()
        try:
            done = subprocess.run(
                step.command, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, env=env, check=False
            )
            step.returncode, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as err:
            step.returncode, output = None, f"timed out after {STEP_TIMEOUT_S} s: {err}"
        step.seconds = round(time.perf_counter() - start, 1)
        step.output_tail = output[-3000:]
        if step.returncode is None:
            step.status = "failed"
        else:
            _judge(step, work)
        _record(report, step)
    _record(report, photo_compare_step(work))
    _record(report, placement_step({"": onnx_dir, "photo": work / "photo" / "onnx"}, work))
    failed = [s["name"] for s in report["steps"] if s["status"] != "passed"]
    report["verdict"] = f"FAILED: {', '.join(failed)}" if failed else "PASSED: every CUDA path ran and passed"
    return report


def _record(report: dict, step: Step) -> None:
    report["steps"].append(asdict(step))
    print(f"{step.status:7} {step.seconds:7.1f} s  {step.name}  {step.detail}", flush=True)


def text_report(report: dict) -> str:
    lines = [f"gpu-check {report['created']} on {report['machine']}", f"probe: {report['probe']}"]
    for step in report["steps"]:
        lines.append(f"- {step['status']:7} {step['seconds']:7.1f} s  {step['name']}  {step['detail']}")
        if step["status"] != "passed":
            lines += ["    " + line for line in step["output_tail"].splitlines()[-20:]]
    lines.append(report["verdict"])
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("artifacts/checkpoint.pt"))
    p.add_argument("--onnx-dir", type=Path, default=Path("artifacts/onnx"))
    p.add_argument("--out", type=Path, default=Path("artifacts/gpu_check"), help="report folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:  # before the probe: the report folder must be usable with or without a GPU
        check_out_dir(args.out)
    except ExportError as err:
        print(f"gpu-check: error: --out {err}", file=sys.stderr)
        return 2
    missing = [str(p) for p in (args.checkpoint, args.onnx_dir / "denoiser.onnx") if not p.is_file()]
    if missing and probe(args.onnx_dir)[0] != "none":  # without a GPU the files are not needed
        print(f"gpu-check: error: missing {', '.join(missing)} (run `make export` first)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(args.checkpoint, args.onnx_dir, args.out)
    atomic_write_json(args.out / "gpu_check.json", report)
    text = text_report(report)
    atomic_write_text(args.out / "gpu_check.txt", text)
    print(text, end="")
    print(f"wrote {args.out / 'gpu_check.json'} and gpu_check.txt")
    return 1 if report["verdict"].startswith("FAILED") else 0


if __name__ == "__main__":
    sys.exit(main())
