"""The CPU quota of the bridge's cgroup, read from cgroup files written here
as the kernel lays them out (v2, v1, hybrid, containers' namespaces), and the
default number of SDK workers it gives."""

from __future__ import annotations

import os
import pathlib

from actors.operations.cpu_quota import cgroup_cpu_limit, usable_cpus
from actors.operations.settings import BridgeSettings

AFFINITY = len(os.sched_getaffinity(0))


def proc_self(tmp_path: pathlib.Path, cgroup: str, mounts: list[tuple[str, str, str, str]]) -> pathlib.Path:
    """A /proc/self with ``cgroup`` as its cgroup file and ``mounts``
    ((root, mount point, fstype, super options)) as its mountinfo."""
    folder = tmp_path / "proc-self"
    folder.mkdir(exist_ok=True)
    (folder / "cgroup").write_text(cgroup)
    (folder / "mountinfo").write_text("".join(
        f"{30 + index} 23 0:{40 + index} {root} {point} rw,nosuid,nodev,noexec,relatime shared:9 - {kind} {kind} "
        f"{options}\n" for index, (root, point, kind, options) in enumerate(mounts)))
    return folder


def write(folder: pathlib.Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text + "\n")


def limit(folder: pathlib.Path) -> float | None:
    return cgroup_cpu_limit(folder / "cgroup", folder / "mountinfo")


def test_v2_cpu_max_of_the_processs_cgroup(tmp_path) -> None:
    unified = tmp_path / "sys-fs-cgroup"
    write(unified / "kubepods" / "pod1" / "ctr", cpu__max="150000 100000")
    write(unified / "kubepods" / "pod1", cpu__max="max 100000")
    proc = proc_self(tmp_path, "0::/kubepods/pod1/ctr\n", [("/", str(unified), "cgroup2", "rw,nsdelegate")])
    assert limit(proc) == 1.5
    assert usable_cpus(proc) == min(AFFINITY, 2)  # a fraction of a CPU counts as one


def test_v2_no_quota_anywhere_is_none(tmp_path) -> None:
    unified = tmp_path / "sys-fs-cgroup"
    write(unified / "system.slice" / "bridge.service", cpu__max="max 100000")
    proc = proc_self(tmp_path, "0::/system.slice/bridge.service\n", [("/", str(unified), "cgroup2", "rw")])
    assert limit(proc) is None
    assert usable_cpus(proc) == AFFINITY


def test_an_ancestors_smaller_quota_wins(tmp_path) -> None:
    unified = tmp_path / "sys-fs-cgroup"
    write(unified / "pods" / "pod", cpu__max="50000 100000")
    write(unified / "pods" / "pod" / "ctr", cpu__max="400000 100000")
    proc = proc_self(tmp_path, "0::/pods/pod/ctr\n", [("/", str(unified), "cgroup2", "rw")])
    assert limit(proc) == 0.5
    assert usable_cpus(proc) == 1


def test_v2_in_a_cgroup_namespace_reads_the_mount_itself(tmp_path) -> None:
    # podman/docker on cgroup v2: the container sees its own cgroup as "/", mounted at /sys/fs/cgroup.
    unified = tmp_path / "sys-fs-cgroup"
    write(unified, cpu__max="100000 100000")
    proc = proc_self(tmp_path, "0::/\n", [("/", str(unified), "cgroup2", "rw")])
    assert limit(proc) == 1.0


def test_v1_cfs_quota_over_period_with_the_mount_rooted_at_the_container(tmp_path) -> None:
    # docker on cgroup v1: /proc/self/cgroup names the host's path, and the
    # container's cpu mount is rooted at that path (its parents unseen).
    cpu = tmp_path / "cpu,cpuacct"
    write(cpu, cpu__cfs_quota_us="500000", cpu__cfs_period_us="100000")
    proc = proc_self(tmp_path, "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n", [
        ("/docker/abc", str(cpu), "cgroup", "rw,cpu,cpuacct"),
        ("/docker/abc", str(tmp_path / "memory"), "cgroup", "rw,memory")])
    assert limit(proc) == 5.0
    assert usable_cpus(proc) == min(AFFINITY, 5)


def test_a_cgroup_below_the_mounts_root_is_found_under_the_mount_point(tmp_path) -> None:
    # The bridge in a child cgroup of the container's own: /docker/abc/bridge is <mount>/bridge.
    cpu = tmp_path / "cpu"
    write(cpu, cpu__cfs_quota_us="500000", cpu__cfs_period_us="100000")
    write(cpu / "bridge", cpu__cfs_quota_us="150000", cpu__cfs_period_us="100000")
    proc = proc_self(tmp_path, "5:cpu:/docker/abc/bridge\n", [("/docker/abc", str(cpu), "cgroup", "rw,cpu")])
    assert limit(proc) == 1.5


def test_v1_minus_one_is_no_quota(tmp_path) -> None:
    cpu = tmp_path / "cpu"
    write(cpu / "machine" / "vm1", cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    write(cpu / "machine", cpu__cfs_quota_us="-1", cpu__cfs_period_us="100000")
    proc = proc_self(tmp_path, "3:cpu:/machine/vm1\n", [("/", str(cpu), "cgroup", "rw,cpu")])
    assert limit(proc) is None


def test_a_hybrid_machine_reads_v1_where_the_cpu_controller_is(tmp_path) -> None:
    # As on this machine: v1 controllers, and an empty v2 hierarchy at /sys/fs/cgroup/unified.
    cpu, unified = tmp_path / "cpu", tmp_path / "unified"
    write(cpu / "job", cpu__cfs_quota_us="250000", cpu__cfs_period_us="100000")
    write(unified / "job", cgroup__controllers="")
    proc = proc_self(tmp_path, "1:cpu:/job\n0::/job\n", [
        ("/", str(cpu), "cgroup", "rw,cpu"), ("/", str(unified), "cgroup2", "rw")])
    assert limit(proc) == 2.5


def test_escaped_mount_points_are_read(tmp_path) -> None:
    unified = tmp_path / "with space"
    write(unified / "a", cpu__max="200000 100000")
    proc = proc_self(tmp_path, "0::/a\n", [("/", str(unified).replace(" ", "\\040"), "cgroup2", "rw")])
    assert limit(proc) == 2.0


def test_no_cgroups_or_unreadable_files_give_no_limit(tmp_path) -> None:
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path / "missing-too") is None
    proc = proc_self(tmp_path, "garbage without colons\n", [])
    assert limit(proc) is None
    unified = tmp_path / "sys-fs-cgroup"
    write(unified / "a", cpu__max="lots\n")
    proc = proc_self(tmp_path, "0::/a\n", [("/", str(unified), "cgroup2", "rw")])
    assert limit(proc) is None
    assert usable_cpus(proc) == AFFINITY


def test_the_default_number_of_sdk_workers_follows_the_quota(tmp_path, monkeypatch) -> None:
    unified = tmp_path / "sys-fs-cgroup"
    write(unified / "ctr", cpu__max="100000 100000")
    proc = proc_self(tmp_path, "0::/ctr\n", [("/", str(unified), "cgroup2", "rw")])
    monkeypatch.setattr("actors.operations.cpu_quota.PROC_SELF", proc)
    assert BridgeSettings().sdk_worker_processes == 0  # one CPU: no workers
    assert BridgeSettings(sdk_workers=3).sdk_worker_processes == 3  # BRIDGE_SDK_WORKERS wins
