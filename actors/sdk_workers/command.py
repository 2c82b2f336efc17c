"""How an SDK worker process is started, whatever runs the bridge.

From a Python environment, a worker is ``python -m
actors.sdk_workers.worker_process``. A frozen bundle (deploy/, the cloud
image's ``./livekit-bridge``) has no ``python -m``: its executable runs a
worker when its first argument is WORKER_ARGUMENT, and the bridge otherwise
(deploy/bundle_main.py).
"""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Mapping

#: The first argument that makes a frozen bundle's executable run an SDK
#: worker process instead of the bridge. Not a command for people: it is not
#: in --help.
WORKER_ARGUMENT = "__sdk_worker_process__"
#: Where `python -m actors.sdk_workers.worker_process` is found, however the bridge was started.
_PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _frozen() -> bool:
    return bool(getattr(sys, "frozen", False))  # set by PyInstaller's bootloader


def worker_command(*arguments: str) -> list[str]:
    """The command line that runs a worker process (worker_process.main) with
    ``arguments``, from the interpreter or bundle running this process."""
    if _frozen():
        return [sys.executable, WORKER_ARGUMENT, *arguments]
    return [sys.executable, "-m", "actors.sdk_workers.worker_process", *arguments]


#: A worker's PATH, which finds no program (no such directory). The SDK core
#: runs `lsb_release -a` and `getconf LONG_BIT` as child processes on every
#: connect (the os_info crate, telling LiveKit the client's OS), blocking a
#: tokio worker meanwhile: 13-15 ms of CPU and 10-20 ms of wall time a join
#: (bench/reports/join-cost-2026-12-08.md, `python -m bench.join_cost`).
#: Without them it reads /etc/os-release. The worker itself starts no
#: program, and is started by absolute path (worker_command).
NO_PROGRAMS_PATH = "/nonexistent-sdk-worker-path"


def worker_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """``environment``, with what worker_command needs to find the bridge's
    code: the project's root on PYTHONPATH (a bundle holds the code itself);
    its PATH finds no program (NO_PROGRAMS_PATH)."""
    environment = dict(environment, PATH=NO_PROGRAMS_PATH)
    if not _frozen():
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT),
                                                                   environment.get("PYTHONPATH")]))
    return environment
