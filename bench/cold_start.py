"""Cold start of the drop-in, in the cloud image's layout, to a listening socket.

    python -m bench.cold_start [--app DIR] [--runs 9] [--drop-caches]   (part of `just bench`)

As the cloud's start.sh does, ``./livekit-bridge`` is started from the folder
that holds it (the bundle `just bundle` builds, build/bundle/livekit-bridge,
unless --app names another) with LIVEKIT_GRPC_SOCKET set, and no argument.
Measured from the spawn, each run a new process:

- socket: the socket file exists (start.sh's ``[ -S ... ]``);
- accepts: a connect() to it succeeds;
- workers: every SDK worker process said it is ready (its log line), so a
  JoinRoom needs no wait for one;
- the RSS of the bridge and of its workers, once ready.

Then SIGTERM, as a deploy sends, and the time to exit. ``--python`` measures
``python bridge_main.py serve`` the same way, for comparison.
``--drop-caches`` empties the kernel's page cache before each run (root
only; it slows every other process on the machine for a moment): the start
of a new node, where nothing of the image has been read yet. Without it the
files are in the page cache, as when the container restarts on its node.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench.proc_stats import family

REPO = pathlib.Path(__file__).resolve().parents[1]
BUNDLE = REPO / "build" / "bundle" / "livekit-bridge"
#: Generous: a run that takes longer failed.
GIVE_UP = 30.0


def _rss_mib(pid: int) -> float:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def one_start(command: list[str], cwd: pathlib.Path, workers: int) -> dict[str, float]:
    """Start ``command`` once and time it (seconds, see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="cold-start-") as folder:
        path = os.path.join(folder, "livekit-bridge.sock")
        env = dict(os.environ, LIVEKIT_GRPC_SOCKET=path, LOG_FORMAT="json", LOG_LEVEL="info",
                   BRIDGE_SDK_WORKERS=str(workers))
        ready_at: list[float] = []
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)

        def read_log() -> None:
            for line in process.stderr:
                if b" started (pid " in line:
                    ready_at.append(time.monotonic())

        reader = threading.Thread(target=read_log, daemon=True)
        reader.start()
        try:
            times: dict[str, float] = {}
            while "accepts" not in times:
                if time.monotonic() - started > GIVE_UP or process.poll() is not None:
                    raise RuntimeError(f"{command} did not listen within {GIVE_UP:g} s (exit code {process.poll()})")
                if "socket" not in times and os.path.exists(path):
                    times["socket"] = time.monotonic() - started
                if "socket" in times and _accepts(path):
                    times["accepts"] = time.monotonic() - started
                else:
                    time.sleep(0.002)
            while len(ready_at) < workers:
                if time.monotonic() - started > GIVE_UP:
                    raise RuntimeError(f"only {len(ready_at)} of {workers} SDK workers were ready after {GIVE_UP:g} s")
                time.sleep(0.01)
            if workers:
                times["workers"] = ready_at[-1] - started
            members = family(process.pid)
            times["rss_bridge_mib"] = _rss_mib(process.pid)
            times["rss_workers_mib"] = sum(_rss_mib(pid) for pid in members[1:])
            stopping = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=GIVE_UP)
            times["exit_after_sigterm"] = time.monotonic() - stopping
            return times
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            reader.join(timeout=5)


def drop_page_cache() -> None:
    os.sync()
    pathlib.Path("/proc/sys/vm/drop_caches").write_text("3\n")


def measure(label: str, command: list[str], cwd: pathlib.Path, runs: int, workers: int,
            drop_caches: bool) -> list[dict[str, float]]:
    results = []
    for _ in range(runs):
        if drop_caches:
            drop_page_cache()
        results.append(one_start(command, cwd, workers))
    print(f"\n{label}: {runs} runs, {workers} SDK workers" + (", page cache dropped before each" if drop_caches
                                                                 else ""))
    for key in results[0]:
        values = sorted(result[key] for result in results)
        unit, scale = ("MiB", 1) if key.startswith("rss") else ("ms", 1000)
        print(f"  {key:<20} median {statistics.median(values) * scale:8.1f} {unit}   min {values[0] * scale:8.1f}"
              f"   max {values[-1] * scale:8.1f}")
    return results


def folder_mib(path: pathlib.Path) -> float:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file() and not item.is_symlink()) / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", type=pathlib.Path, default=BUNDLE,
                        help="the folder holding ./livekit-bridge (default: the bundle `just bundle` builds)")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--workers", type=int, default=2, help="BRIDGE_SDK_WORKERS (default 2)")
    parser.add_argument("--drop-caches", action="store_true", help="empty the page cache before each run (root)")
    parser.add_argument("--python", action="store_true", help="also `python bridge_main.py serve`, for comparison")
    args = parser.parse_args(argv)
    if not (args.app / "livekit-bridge").exists():
        sys.exit(f"no {args.app / 'livekit-bridge'}: build the bundle first (`just bundle`)")
    print(f"{args.app}: {folder_mib(args.app):.0f} MiB")
    measure(f"./livekit-bridge in {args.app}", ["./livekit-bridge"], args.app, args.runs, args.workers,
            args.drop_caches)
    if args.python:
        measure("python bridge_main.py serve", [sys.executable, str(REPO / "bridge_main.py"), "serve"], REPO,
                args.runs, args.workers, args.drop_caches)


if __name__ == "__main__":
    main()
