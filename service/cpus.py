"""The CPUs this process may really use: its affinity mask, capped by the cgroup CPU quota
(v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), so a container limited to 2 CPUs on a 64-core host
sizes its threads for 2."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
# Mount points of the cgroup v1 cpu controller.
CGROUP_V1_CPU = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def _cgroup_dirs(root: Path, self_cgroup: Path) -> list[Path]:
    """This process's cgroup folders for the cpu controller, and their ancestors up to root."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    leaves: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.strip().lstrip("/")
        if controllers == "":  # cgroup v2: "0::/path"
            leaves.append(root / relative)
        elif "cpu" in controllers.split(","):
            leaves.extend(root / mount / relative for mount in CGROUP_V1_CPU)
    if not leaves:
        leaves = [root, *(root / mount for mount in CGROUP_V1_CPU)]
    found: list[Path] = []
    for leaf in leaves:
        for folder in (leaf, *leaf.parents):
            if folder not in found and folder.is_relative_to(root):
                found.append(folder)
    return found


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """CPUs the cgroup quota allows (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None: no quota."""
    limits: list[float] = []
    for folder in _cgroup_dirs(root, self_cgroup):
        try:
            if (folder / "cpu.max").is_file():
                quota, period = (folder / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    limits.append(int(quota) / int(period))
            elif (folder / "cpu.cfs_quota_us").is_file():
                quota_us = int((folder / "cpu.cfs_quota_us").read_text())
                period_us = int((folder / "cpu.cfs_period_us").read_text())
                if quota_us > 0:
                    limits.append(quota_us / period_us)
        except (OSError, ValueError):
            continue
    return min(limits) if limits else None


def available_cpus(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int:
    """CPUs this process may really use: its affinity mask, capped by the cgroup quota."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux only
    cpus = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit(root, self_cgroup)
    if quota is not None:
        # A fractional quota is rounded down: one thread more than the quota is throttled.
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)
