"""The CPU time a Linux cgroup lets this process use: `docker run --cpus`, a Kubernetes CPU limit.

Why: a container limited to 2 CPUs on a 16-core host sees all 16 cores in its affinity mask, and one
session per core would then run 16 threads in 2 CPUs' worth of time; the kernel throttles the whole
group for the rest of each period (stalls of up to 100 ms at the default period), the worst thing for
latency. The quota is a rate, not a set of CPUs, so `os.sched_getaffinity` does not see it.

Reads cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`), at every level from the
process's own cgroup up to the mount's root (a container's namespace shows its own cgroup as the root),
and takes the tightest. Standard library only.
"""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def cpu_quota(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time per period this process's cgroups allow (1.5 for `--cpus 1.5`), or None where
    no quota is set or none can be read (not Linux, no cgroup file system)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:  # "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1)
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            mount, read = root, _read_v2
        elif "cpu" in controllers.split(","):
            mount, read = root / controllers, _read_v1
        else:
            continue
        relative = Path(path.lstrip("/"))
        for folder in (mount / relative, *(mount / parent for parent in relative.parents)):
            quota = read(folder)
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def _read_v2(folder: Path) -> float | None:
    """`cpu.max` holds "QUOTA PERIOD" in microseconds, or "max PERIOD" for no limit."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else _ratio(int(quota), int(period))
    except (OSError, ValueError):
        return None


def _read_v1(folder: Path) -> float | None:
    """`cpu.cfs_quota_us` is -1 for no limit; `cpu.cfs_period_us` the period it applies to."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return _ratio(quota, period)


def _ratio(quota: int, period: int) -> float | None:
    return quota / period if quota > 0 and period > 0 else None
