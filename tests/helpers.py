"""Helpers the tests share (fixtures live in conftest.py; plain functions and constants live here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent


def run_cli(
    module: str, *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `python -m module args` as a user would, with the repo importable; capture text output."""
    return _run_python(["-m", module, *args], cwd, timeout)


def run_script(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -c code args` in a fresh interpreter (e.g. one that blocks torch), repo importable."""
    return _run_python(["-c", code, *args], None, timeout)


def _run_python(argv: list[str], cwd: Path | None, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def default_sigint() -> None:
    """Popen's preexec_fn for a child that Ctrl-C must reach: SIGINT's default disposition, as a terminal
    gives it (a CI job started in the background hands its children SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def running_cli(module: str, *args: str, stdout: int = subprocess.PIPE) -> Iterator[subprocess.Popen]:
    """`python -m module args` started as from a terminal, for tests that stop it mid-run; killed on exit.

    A CI job started in the background inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt: the child gets the default disposition, as a terminal's Ctrl-C finds it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        yield proc
    finally:
        proc.kill()  # a no-op once it has exited
        proc.wait()


def stop_cli(
    proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Send `sig` to a `running_cli` process and wait for it to exit: its return code and what is left of
    its output."""
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def exit_code_of_forked_child(check: Callable[[], bool], alarm_s: int = 20) -> int:
    """Fork; in the child run `check` under an alarm and exit 0 if it returned True, 3 if False, 4 if it
    raised. Returns the child's exit code: -14 (SIGALRM) means the child hung. For the runtime's
    fork-safety tests: objects made before the fork must work in the child."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: "multi-threaded, use of fork()"
        pid = os.fork()
    if pid == 0:
        signal.alarm(alarm_s)
        try:
            os._exit(0 if check() else 3)
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def tiny_photo_config(out: Path, steps: int = 3):  # -> train.photo_train.PhotoTrainConfig
    """A tiny fcn photo run on the bundled photographs (seconds), evaluated and saved every 3 steps."""
    from train.photo_train import PhotoTrainConfig

    return PhotoTrainConfig(
        steps=steps, batch_size=2, crop=32, fcn_width=4, fcn_levels=2, fcn_depth=1, eval_every=3, out=str(out)
    )


def train_tiny_photo_model(out: Path) -> Path:
    """A tiny fcn photo model trained 3 steps on the bundled photographs (seconds); its checkpoint path."""
    from train.photo_train import train_photos

    train_photos(tiny_photo_config(out), log=lambda _line: None)
    return out / "checkpoint.pt"


def conv_model(
    nodes: Sequence[onnx.NodeProto],
    input_shape: Sequence[int | str],
    weights: Mapping[str, np.ndarray],
    opset: int = 18,
) -> onnx.ModelProto:
    """A small float32 graph of `nodes` reading "x" of `input_shape` and writing "y", with `weights`
    (cast to float32) as initializers: what the graph-rewrite tests build their cases from."""
    graph = helper.make_graph(
        list(nodes),
        "case",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_model(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's first output for `x` fed to its (first) input, on ONNX Runtime's CPU provider."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]
