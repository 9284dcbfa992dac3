"""The edge runtime must work where torch is not installed.

Checked twice: statically (every import in runtimes/ is stdlib or an allowed package) and dynamically, in
fresh subprocesses (the test process itself imports torch through the fixtures, so it cannot tell).
"""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, run_script

ALLOWED = {"numpy", "onnxruntime", "PIL", "tqdm", "runtimes"}

SCRIPT = textwrap.dedent(
    """
    import sys
    if {block}:
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
    import numpy as np
    import runtimes
    from runtimes import Denoiser, MicroBatcher

    denoiser = Denoiser(sys.argv[1])
    image = np.zeros((28, 28), np.uint8)
    assert denoiser(image).shape == (28, 28)
    assert denoiser.decode(denoiser.encode(image)).shape == (28, 28)
    with MicroBatcher(denoiser) as batcher:
        assert batcher(image).shape == (28, 28)

    from runtimes.cli import main
    code = main(["--onnx", sys.argv[1], sys.argv[2], "-o", sys.argv[3], "--quiet"])
    assert code == 0, code
    loaded = sorted(name for name in sys.modules if name == "torch" or name.startswith("torch."))
    if {block}:
        assert sys.modules["torch"] is None and loaded == ["torch"], loaded
    else:
        assert "torch" not in sys.modules, loaded
        assert "onnx" not in sys.modules  # the runtime needs onnxruntime only, not the onnx package
    print("ok")
    """
)


def _runtime_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted((REPO / "runtimes").glob("*.py")), ids=lambda p: p.name)
def test_runtime_imports_only_allowed_packages(path: Path) -> None:
    foreign = _runtime_imports(path) - ALLOWED - set(sys.stdlib_module_names)
    assert not foreign, (
        f"{path.name} imports {sorted(foreign)}; runtimes/ may use only stdlib + {sorted(ALLOWED)}"
    )


@pytest.mark.parametrize("block", [False, True], ids=["not_imported", "unimportable"])
def test_denoise_and_cli_without_torch(onnx_dir: Path, tmp_path: Path, block: bool) -> None:
    images = tmp_path / "in"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(images / f"{i}.png")
    proc = run_script(SCRIPT.format(block=block), str(onnx_dir), str(images), str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png", "2.png"]


def test_cli_subprocess_never_imports_torch(onnx_dir: Path, tmp_path: Path) -> None:
    """`python -m runtimes.cli` itself, checked at interpreter exit."""
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "x.png")
    check = (
        "import atexit, sys\n"
        "report = lambda: sys.stderr.write('TORCH LOADED\\n' if 'torch' in sys.modules else 'NO TORCH\\n')\n"
        "atexit.register(report)\n"
        "import runpy\n"
        "sys.argv = ['ae-denoise', *sys.argv[1:]]\n"
        "runpy.run_module('runtimes.cli', run_name='__main__')\n"
    )
    proc = run_script(check, "--onnx", str(onnx_dir), str(tmp_path / "x.png"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().endswith("NO TORCH"), proc.stderr
    assert (tmp_path / "x_denoised.png").is_file()


WITHOUT_TORCH = """
import runpy, sys
sys.modules["torch"] = None  # as after `pip install .`: the runtime without the train extra
module = sys.argv[1]
sys.argv = sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize(
    ("module", "prog"), [("train.cli", "ae-train"), ("ae_export.cli", "ae-export"), ("bench.cli", "ae-bench")]
)
def test_commands_of_the_train_extra_name_it_where_torch_is_missing(module, prog) -> None:
    """`pip install .` installs ae-train, ae-export and ae-bench beside ae-denoise: without torch they
    stopped with a ModuleNotFoundError traceback; now one line names the extra and the install command."""
    proc = run_script(WITHOUT_TORCH, module, prog, "--help")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    expected = (
        f"{prog}: error: needs the `train` extra (torch is not installed): pip install 'ae-export[train]'"
    )
    assert proc.stderr.strip() == expected
