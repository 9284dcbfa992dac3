"""The package's optional extras (pyproject.toml's optional-dependencies), named where one is missing.

`pip install .` is the edge runtime alone; `ae-train`, `ae-export` and `ae-bench` are installed with it but
need the `train` extra (torch, onnx). Each command checks for it before importing what needs it, so a
missing extra is one line naming it and the install command, not a ModuleNotFoundError traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence


def extra_hint(extra: str, reason: object) -> str:
    """'needs the `train` extra (torch is not installed): pip install 'ae-export[train]'' (one home)."""
    return f"needs the `{extra}` extra ({reason}): pip install 'ae-export[{extra}]'"


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module without a spec
        return False


def require_extra(prog: str, extra: str, modules: Sequence[str]) -> None:
    """Exit 2 with `prog: error: needs the ... extra` when one of `modules` is not installed: a command's
    check before the imports that need them."""
    missing = [m for m in modules if not installed(m)]
    if missing:
        reason = f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
        print(f"{prog}: error: {extra_hint(extra, reason)}", file=sys.stderr)
        raise SystemExit(2)
