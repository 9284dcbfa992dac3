"""A cgroup CPU quota caps the sessions and threads the runtime opens (runtimes.cgroups)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtimes.cgroups import cpu_quota
from runtimes.sessions import physical_cores
from tests.helpers import REPO


def _tree(root: Path, files: dict[str, str], own: str) -> Path:
    """A cgroup file system's files under `root`, and a /proc/self/cgroup naming `own`; returns the latter."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = root / "proc-self-cgroup"
    proc.write_text(own)
    return proc


@pytest.mark.parametrize(
    ("files", "own", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, "0::/\n", 1.5),  # v2, a container's namespace: its root
        ({"cpu.max": "max 100000\n"}, "0::/\n", None),
        ({"cpu.max": "max 100000\n", "app/cpu.max": "200000 100000\n"}, "0::/app\n", 2.0),
        (
            {"cpu.max": "100000 100000\n", "app/cpu.max": "400000 100000\n"},
            "0::/app\n",
            1.0,
        ),  # parent tighter
        (
            {"cpu,cpuacct/cpu.cfs_quota_us": "250000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
            "4:cpu,cpuacct:/\n3:memory:/x\n",
            2.5,
        ),
        (
            {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
            "1:cpu:/\n0::/\n",
            None,
        ),
        ({}, "0::/gone\n", None),  # nothing readable: no quota known
    ],
    ids=["v2", "v2-max", "v2-child", "v2-parent-tighter", "v1", "v1-unlimited", "unreadable"],
)
def test_cpu_quota_reads_v1_and_v2(
    tmp_path: Path, files: dict[str, str], own: str, expected: float | None
) -> None:
    assert cpu_quota(_tree(tmp_path, files, own), tmp_path) == expected


def test_cpu_quota_without_proc_is_none(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path / "missing", tmp_path) is None


@contextlib.contextmanager
def _cgroup_with_quota(cpus: float):
    """A real cgroup v1 `cpu` group limited to `cpus`, removed afterwards; skips where none can be made."""
    mount = Path("/sys/fs/cgroup/cpu")
    if not (mount / "cpu.cfs_quota_us").exists():
        pytest.skip("no cgroup v1 cpu controller at /sys/fs/cgroup/cpu to make a limited group in")
    group = mount / f"ae-export-test-{os.getpid()}"
    try:
        group.mkdir()
        period = int((group / "cpu.cfs_period_us").read_text())
        (group / "cpu.cfs_quota_us").write_text(str(int(cpus * period)))
    except OSError as err:
        with contextlib.suppress(OSError):
            group.rmdir()
        pytest.skip(f"cannot make a cgroup with a CPU quota here ({err.strerror or err})")
    try:
        yield group
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()


def test_physical_cores_follows_a_real_cgroup_quota() -> None:
    """On a host of several cores, a process in a cgroup allowed one CPU's time opened one session per
    core anyway (the affinity mask still lists every core), and the kernel throttled it."""
    if physical_cores() < 2:
        pytest.skip("needs at least 2 cores to see the quota cap them")
    code = (
        "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid()));"
        "from runtimes.sessions import physical_cores; print(physical_cores())"
    )
    with _cgroup_with_quota(1.0) as group:
        done = subprocess.run(
            [sys.executable, "-c", code, str(group / "cgroup.procs")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
