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


def worker_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """``environment``, with what worker_command needs to find the bridge's
    code: the project's root on PYTHONPATH (a bundle holds the code itself)."""
    environment = dict(environment)
    if not _frozen():
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT),
                                                                   environment.get("PYTHONPATH")]))
    return environment
