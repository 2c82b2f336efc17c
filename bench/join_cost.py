"""What one bare SDK join costs, with and without programs on PATH.

    tests/isolated .venv/bin/python -m bench.join_cost [--joins 10] [--pairs 3]

The livekit SDK's Rust core runs `lsb_release -a` and `getconf LONG_BIT` as
child processes on every connect (the os_info crate, telling LiveKit the
client's OS), blocking a tokio worker meanwhile. An SDK worker process of
the bridge runs with a PATH that finds no program
(actors/sdk_workers/command.py). This measures the floor: the bare SDK in a
process of its own (tests/floor_process.py's kind, no bridge), joining and
leaving ``--joins`` rooms one after the other, in pairs of runs alternating
the machine's PATH and one that finds nothing. Each run reports, per join,
its own CPU, its children's CPU (the programs) and the wall time; and the
machine's idle share during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from actors.sdk_workers.command import NO_PROGRAMS_PATH
from bench.proc_stats import idle_share, machine_idle


def _cpu() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


async def _joins(url: str, api_key: str, api_secret: str, joins: int) -> dict[str, float]:
    from livekit import api, rtc

    def token(index: int) -> str:
        return (api.AccessToken(api_key, api_secret).with_identity(f"cost-{index}")
                .with_grants(api.VideoGrants(room_join=True, room=f"cost-{index}")).to_jwt())

    async def join_and_leave(index: int) -> None:
        room = rtc.Room()
        await room.connect(url, token(index), rtc.RoomOptions(auto_subscribe=False))
        await room.disconnect()

    await join_and_leave(-1)  # the SDK's first connect starts its core: not counted
    own, children = _cpu()
    started = time.monotonic()
    for index in range(joins):
        await join_and_leave(index)
    wall = time.monotonic() - started
    own_after, children_after = _cpu()
    return {"own_cpu_ms": 1000 * (own_after - own) / joins, "children_cpu_ms": 1000 * (children_after - children) / joins,
            "wall_ms": 1000 * wall / joins}


def _one_run(url: str, api_key: str, api_secret: str, joins: int) -> None:
    """In a process of its own (the PATH it was started with): print the figures."""
    from actors.livekit.sdk_core import configure_sdk_core

    configure_sdk_core()
    figures = asyncio.run(_joins(url, api_key, api_secret, joins))
    print(" ".join(f"{name}={value:.1f}" for name, value in figures.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.join_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--joins", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--run", nargs=3, metavar=("URL", "KEY", "SECRET"), help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.run:
        _one_run(*arguments.run, arguments.joins)
        return 0
    from actors.livekit.dev_server import start_dev_livekit

    server = start_dev_livekit(pathlib.Path(tempfile.mkdtemp(prefix="join-cost-")), udp_ports=(41000, 41999))
    root = pathlib.Path(__file__).resolve().parents[1]
    print(f"{arguments.joins} joins a run, one after the other; {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{os.cpu_count()} cores")
    print("| PATH | own CPU ms/join | children's CPU ms/join | wall ms/join | idle share |")
    print("| --- | --- | --- | --- | --- |")
    try:
        for _ in range(arguments.pairs):
            for path in (os.environ.get("PATH", ""), NO_PROGRAMS_PATH):
                before = machine_idle()
                done = subprocess.run(
                    [sys.executable, "-m", "bench.join_cost", "--joins", str(arguments.joins),
                     "--run", server.url, server.api_key, server.api_secret],
                    env=dict(os.environ, PATH=path), cwd=root, capture_output=True, text=True, timeout=300)
                if done.returncode != 0:
                    raise SystemExit(f"a run failed:\n{done.stderr[-2000:]}")
                figures = dict(item.split("=") for item in done.stdout.split())
                label = "finds nothing" if path == NO_PROGRAMS_PATH else "the machine's"
                print(f"| {label} | {figures['own_cpu_ms']} | {figures['children_cpu_ms']} | "
                      f"{figures['wall_ms']} | {idle_share(before, machine_idle()):.0%} |")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
