"""Spawns worker-like children the way the bridge spawns its SDK workers
(actors/sdk_workers/own_group_process.py) while a thread sends SIGTERM to
this process's group every 0.2 ms, as a service manager's stop would, only
without end.

Usage: python tests/group_signal_process.py COUNT   (run it as a process group's leader)

Each child takes the passed socket at PASSED_FD, ignores the group's signals
first thing (as worker_process.main does), answers "ready" and exits 0 once
its stdin, which must be /dev/null, reads empty. Prints one JSON line:
{"exit_codes": {code: how many}, "ready": how many answered, "own_group": how
many ran in a group of their own and started with SIGINT and SIGTERM held}.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import signal
import socket
import sys
import threading
import time

import trio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from actors.sdk_workers.own_group_process import PASSED_FD, OwnGroupProcess  # noqa: E402

CHILD = f"""
import signal
held = {{signal.SIGINT, signal.SIGTERM}} <= signal.pthread_sigmask(signal.SIG_BLOCK, [])
from actors.sdk_workers.own_group_process import discard_group_signals_and_unblock
discard_group_signals_and_unblock()
import os, socket, time
own_group = os.getpgid(0) == os.getpid() and held
time.sleep(0.01)  # the group's signals keep coming meanwhile
with socket.socket(fileno={PASSED_FD}) as bridge:
    bridge.sendall(b"ready" + (b"+" if own_group else b"-"))
os._exit(0 if os.read(0, 1) == b"" else 3)
"""


def keep_signalling(stop: threading.Event) -> None:
    group = os.getpgid(0)
    while not stop.is_set():
        os.killpg(group, signal.SIGTERM)
        time.sleep(0.0002)


async def main(count: int) -> None:
    signal.signal(signal.SIGTERM, lambda *_: None)  # the spawner itself is the bridge: it drains
    stop = threading.Event()
    threading.Thread(target=keep_signalling, args=(stop,), daemon=True).start()
    exit_codes: collections.Counter[int] = collections.Counter()
    ready = own_group = 0
    environment = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]))
    try:
        for _ in range(count):
            ours, theirs = socket.socketpair()
            with ours, theirs:
                child = OwnGroupProcess.spawn([sys.executable, "-c", CHILD], environment, theirs.fileno())
                theirs.close()
                answer = await trio.to_thread.run_sync(ours.recv, 16)
            ready += answer.startswith(b"ready")
            own_group += answer == b"ready+"
            exit_codes[await child.wait()] += 1
    finally:
        stop.set()
    print(json.dumps({"exit_codes": exit_codes, "ready": ready, "own_group": own_group}), flush=True)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))
