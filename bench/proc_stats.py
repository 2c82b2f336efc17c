"""CPU and memory of another process and the processes it started (the
bridge's SDK worker processes), read from /proc."""

from __future__ import annotations

import collections
import os
import pathlib
import re

_TICK = os.sysconf("SC_CLK_TCK")
#: libwebrtc and tokio number their threads; "tokio-runtime-w" and "tokio-runtime-w2" are one kind.
_THREAD_NUMBER = re.compile(r"[-_ ]?\d+$")


def _cpu_seconds(stat_path: pathlib.Path) -> tuple[str, float]:
    text = stat_path.read_text()
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return name, (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def family(pid: int) -> list[int]:
    """``pid`` and its living descendants."""
    found, index = [pid], 0
    while index < len(found):
        parent = found[index]
        index += 1
        try:
            for task in pathlib.Path(f"/proc/{parent}/task").iterdir():
                found += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def cpu_by_thread(pid: int) -> dict[str, float]:
    """CPU seconds used so far by the threads of the process and of its
    children, summed by thread name (numbers at the end dropped; a child's
    names are prefixed "child/"); threads that ended are left out, so read
    differences between two calls, during which threads live on."""
    totals: dict[str, float] = collections.defaultdict(float)
    for member in family(pid):
        prefix = "" if member == pid else "child/"
        try:
            tasks = list(pathlib.Path(f"/proc/{member}/task").iterdir())
        except (FileNotFoundError, ProcessLookupError):
            continue
        for task in tasks:
            try:
                name, seconds = _cpu_seconds(task / "stat")
            except (FileNotFoundError, ProcessLookupError):
                continue
            totals[prefix + (_THREAD_NUMBER.sub("", name) or name)] += seconds
    return dict(totals)


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by the process (ended threads included) and
    its living children."""
    total = 0.0
    for member in family(pid):
        try:
            total += _cpu_seconds(pathlib.Path(f"/proc/{member}/stat"))[1]
        except (FileNotFoundError, ProcessLookupError):
            if member == pid:
                raise
    return total


def rss_bytes(pid: int) -> int:
    """Resident memory of the process and its living children."""
    total = 0
    for member in family(pid):
        try:
            lines = pathlib.Path(f"/proc/{member}/status").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            if member == pid:
                raise
            continue
        total += next(int(line.split()[1]) * 1024 for line in lines if line.startswith("VmRSS:"))
    return total


def machine_idle() -> tuple[float, float]:
    """(idle, total) CPU seconds of the whole machine so far (/proc/stat);
    the idle share between two reads says whether the load generator left
    the machine room to measure."""
    fields = [int(value) for value in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return idle / _TICK, sum(fields[:8]) / _TICK


def idle_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The machine's idle share between two machine_idle() reads: near 0, the
    load generator and the target together saturate it, and what is measured
    is the machine, not the target."""
    return (after[0] - before[0]) / max(1e-9, after[1] - before[1])


def pss_kib(pid: int) -> dict[str, int]:
    """The process's proportional set size from /proc/PID/smaps_rollup, in
    KiB: "pss" (a page shared by k processes counts 1/k in each, so summing
    a family's counts each page once), and its parts "pss_anon" (heaps,
    stacks: Python's and native), "pss_file" (code, libraries, mapped files)
    and "pss_shmem"."""
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        if name.startswith("Pss"):
            fields[name.lower()] = int(value.split()[0])
    return fields
