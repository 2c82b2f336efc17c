"""How many CPUs this process can keep busy: the CPUs it may run on, capped
by its cgroup's CPU quota.

A container limited to 5 CPUs on a 64-core node may run on all 64 cores
(its affinity), but only for 5 CPUs' worth of time (its quota: docker and
podman's ``--cpus``, Kubernetes' ``limits.cpu``). The quota is read from the
process's own cgroup (/proc/self/cgroup, found where /proc/self/mountinfo
says the hierarchy is mounted) and its ancestors up to the mount's root, the
smallest winning: cgroup v2's ``cpu.max``, or v1's ``cpu.cfs_quota_us`` over
``cpu.cfs_period_us`` where the v1 ``cpu`` controller is mounted (a hybrid
machine has it there, not in v2).
"""

from __future__ import annotations

import math
import os
import pathlib
import re
from collections.abc import Callable

__all__ = ["cgroup_cpu_limit", "usable_cpus"]

PROC_SELF = pathlib.Path("/proc/self")
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def usable_cpus(proc_self: pathlib.Path | None = None) -> int:
    """The CPUs this process may run on, capped by its cgroup's CPU quota
    rounded up (as Go's GOMAXPROCS and the JVM count a fraction of a CPU: the
    quota lets that many threads run at once, for part of the time); at
    least 1. ``proc_self`` (default /proc/self) holds the ``cgroup`` and
    ``mountinfo`` files read."""
    proc_self = proc_self or PROC_SELF
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(proc_self / "cgroup", proc_self / "mountinfo")
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(cpus, 1)


def cgroup_cpu_limit(cgroup_file: pathlib.Path, mountinfo_file: pathlib.Path) -> float | None:
    """The CPU quota of the cgroup ``cgroup_file`` names (a /proc/PID/cgroup)
    and of its ancestors, in CPUs (1.5: one and a half CPUs' time per
    period): the smallest that any of them sets. None when none sets one, or
    when the files cannot be read or understood (no cgroups, another kind of
    system): the caller then has only the affinity to go by."""
    try:
        memberships = _memberships(cgroup_file.read_text())
        mounts = _cgroup_mounts(mountinfo_file.read_text())
    except (OSError, ValueError):
        return None
    # cgroup v1 with the cpu controller mounted: the quota is there (on a hybrid machine v2 has no cpu controller).
    for controllers, path in memberships.items():
        if "cpu" in controllers.split(",") and "v1:cpu" in mounts:
            return _smallest_limit(_cgroup_folders(path, *mounts["v1:cpu"]), _v1_limit)
    if "" in memberships and "v2" in mounts:
        return _smallest_limit(_cgroup_folders(memberships[""], *mounts["v2"]), _v2_limit)
    return None


def _memberships(text: str) -> dict[str, str]:
    """/proc/PID/cgroup: each hierarchy's controllers ("" for v2) -> the cgroup's path in it."""
    memberships = {}
    for line in text.splitlines():
        if line.strip():
            _, controllers, path = line.split(":", 2)
            memberships[controllers] = path
    return memberships


def _cgroup_mounts(text: str) -> dict[str, tuple[str, pathlib.Path]]:
    """/proc/PID/mountinfo: "v2" and "v1:cpu" -> (the mount's root in the hierarchy, where it is mounted)."""
    mounts: dict[str, tuple[str, pathlib.Path]] = {}
    for line in text.splitlines():
        ours, _, theirs = line.partition(" - ")
        fields, kind = ours.split(), theirs.split()
        if len(fields) < 5 or len(kind) < 3:
            continue
        root, mount_point = _unescape(fields[3]), pathlib.Path(_unescape(fields[4]))
        if kind[0] == "cgroup2":
            mounts.setdefault("v2", (root, mount_point))
        elif kind[0] == "cgroup" and "cpu" in kind[2].split(","):
            mounts.setdefault("v1:cpu", (root, mount_point))
    return mounts


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline or backslash in a path as an octal escape."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def _cgroup_folders(path: str, root: str, mount_point: pathlib.Path) -> list[pathlib.Path]:
    """The folders of the cgroup at ``path`` and of its ancestors that the
    mount shows, the cgroup's first. A path outside the mount's root (in a
    container, a cgroup namespace hides the host's levels) is the mount's root."""
    root = root.rstrip("/")
    if path == root or path.startswith(root + "/"):
        relative = path[len(root):].strip("/")
    else:
        relative = ""
    folders = [mount_point]
    for part in relative.split("/") if relative else []:
        folders.append(folders[-1] / part)
    return folders[::-1]


def _smallest_limit(folders: list[pathlib.Path], read_limit: Callable[[pathlib.Path], float | None]) -> float | None:
    limits = [limit for limit in map(read_limit, folders) if limit is not None]
    return min(limits, default=None)


def _v2_limit(folder: pathlib.Path) -> float | None:
    """cpu.max: "QUOTA PERIOD" in microseconds, QUOTA "max" for none."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_limit(folder: pathlib.Path) -> float | None:
    """cpu.cfs_quota_us (-1 for none) over cpu.cfs_period_us, in microseconds."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
