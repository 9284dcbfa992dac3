"""The house's one direction: runtimes <- train <- ae_export <- bench.

`runtimes` (the torch-free edge runtime) imports none of our other packages; `train` (model, checkpoint,
data, training) may import `runtimes`; `ae_export` (export, parity, deployment) may import both; `bench`
sits on top and nothing imports it. Every import counts, also one inside a function: a lazy import that
points against the direction hides a cycle rather than removing it. Read from the source with `ast`, so
the rule holds for code paths no test happens to run. Within a package the command (`cli.py`) sits on top
too: it reads flags and calls the library, so no other module of its package imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

# Lower stages first: a module may import its own package and the packages listed before it.
STAGES = ("runtimes", "train", "ae_export", "bench")
MAX_MODULE_LINES = 500


def our_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) for every import of one of our packages in `path`, nested ones too."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found.extend((node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in STAGES)
    return found


def violations(root: Path) -> list[str]:
    """Every import in the packages under `root` that points from a lower stage to a later one."""
    problems = []
    for rank, package in enumerate(STAGES):
        for path in sorted((root / package).rglob("*.py")):
            for line, target in our_imports(path):
                if STAGES.index(target) > rank:
                    rel = path.relative_to(root)
                    problems.append(
                        f"{rel}:{line} imports {target} ({package} may import {STAGES[: rank + 1]})"
                    )
    return problems


def command_imports(root: Path) -> list[str]:
    """Every import of a package's command module (`<package>.cli`) by another module of that package."""
    problems = []
    for package in STAGES:
        command = f"{package}.cli"
        for path in sorted((root / package).rglob("*.py")):
            if path == root / package / "cli.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
                if command in names:
                    problems.append(f"{path.relative_to(root)}:{node.lineno} imports {command}")
    return problems


def test_imports_run_one_way() -> None:
    assert violations(REPO) == []


def test_no_module_imports_its_own_packages_command() -> None:
    assert command_imports(REPO) == []


@pytest.mark.parametrize(
    "statement",
    [
        "from ae_export.cli import parse_batch_sizes\n",
        "def f():\n    import ae_export.cli\n",
        "from ae_export import cli\n",
    ],
)
def test_checker_catches_a_module_importing_its_command(tmp_path: Path, statement: str) -> None:
    for name in STAGES:
        (tmp_path / name).mkdir()
    (tmp_path / "ae_export" / "cli.py").write_text("from ae_export.lib import f\n")
    (tmp_path / "ae_export" / "lib.py").write_text(statement)
    (tmp_path / "bench" / "cli.py").write_text(
        "from ae_export.cli import main\n"
    )  # another package's: not this rule
    found = command_imports(tmp_path)
    assert len(found) == 1 and found[0].startswith("ae_export/lib.py:"), found


@pytest.mark.parametrize(
    ("package", "statement"),
    [
        ("runtimes", "import torch\nfrom train.model import ModelConfig\n"),
        ("train", "def f():\n    from ae_export.export import export_all\n"),
        ("ae_export", "import bench.cli\n"),
    ],
    ids=["runtimes->train", "train->ae_export (lazy)", "ae_export->bench"],
)
def test_checker_catches_an_import_against_the_direction(
    tmp_path: Path, package: str, statement: str
) -> None:
    for name in STAGES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / package / "bad.py").write_text(statement)
    (tmp_path / "bench" / "ok.py").write_text("import runtimes\nimport train\nimport ae_export\n")
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(f"{package}/bad.py:"), found


@pytest.mark.parametrize(
    "path",
    sorted(p for stage in STAGES for p in (REPO / stage).rglob("*.py")),
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(REPO)} has {lines} lines; split it by concern"
