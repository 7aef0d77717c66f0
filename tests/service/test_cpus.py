"""The CPUs this process may use: affinity, capped by a cgroup quota."""

from __future__ import annotations

from pathlib import Path

from service.cpus import available_cpus, cgroup_cpu_limit


def write_cgroup(root: Path, relative: str, files: dict[str, str]) -> None:
    folder = root / relative
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_cgroup_v2_quota_caps_the_cpu_count(tmp_path: Path) -> None:
    root, proc = tmp_path / "cgroup", tmp_path / "cgroup.txt"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    write_cgroup(root, "kubepods/pod1/ctr", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) is None
    # A parent's quota binds its children too.
    write_cgroup(root, "kubepods/pod1", {"cpu.max": "150000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 1.5
    assert available_cpus(root, proc) == 1
    write_cgroup(root, "kubepods/pod1/ctr", {"cpu.max": "50000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 0.5
    assert available_cpus(root, proc) == 1  # never below one thread


def test_cgroup_v1_quota_and_no_quota(tmp_path: Path) -> None:
    root, proc = tmp_path / "cgroup", tmp_path / "cgroup.txt"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    files = {"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"}
    write_cgroup(root, "cpu,cpuacct/docker/abc", files)
    assert cgroup_cpu_limit(root, proc) is None
    files["cpu.cfs_quota_us"] = "300000\n"
    write_cgroup(root, "cpu,cpuacct/docker/abc", files)
    assert cgroup_cpu_limit(root, proc) == 3.0
    assert cgroup_cpu_limit(tmp_path / "nothing", tmp_path / "missing") is None


def test_cpu_count_follows_affinity_not_the_host() -> None:
    import os

    assert available_cpus() <= len(os.sched_getaffinity(0))
