"""CPU and memory of another process, read from its /proc."""

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


def cpu_by_thread(pid: int) -> dict[str, float]:
    """CPU seconds used so far by the process's threads, summed by thread name
    (numbers at the end dropped); threads that ended are left out, so read
    differences between two calls, during which threads live on."""
    totals: dict[str, float] = collections.defaultdict(float)
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            name, seconds = _cpu_seconds(task / "stat")
        except (FileNotFoundError, ProcessLookupError):
            continue
        totals[_THREAD_NUMBER.sub("", name) or name] += seconds
    return dict(totals)


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by the whole process (ended threads included)."""
    return _cpu_seconds(pathlib.Path(f"/proc/{pid}/stat"))[1]


def rss_bytes(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ProcessLookupError(pid)


def machine_idle() -> tuple[float, float]:
    """(idle, total) CPU seconds of the whole machine so far (/proc/stat);
    the idle share between two reads says whether the load generator left
    the machine room to measure."""
    fields = [int(value) for value in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return idle / _TICK, sum(fields[:8]) / _TICK
