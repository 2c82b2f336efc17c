"""One SDK process or several? The measurements that decide it.

    python -m bench.processes [--users 20 50]   (part of `just bench`)

The livekit SDK runs a room's connect on its native threads, about one core
per process however many the machine has. Spreading sessions over several
SDK processes (one per core) would multiply that, at the price of a hop
between processes for every microphone packet. Measured here with the floor
(bench/floor_process.py: the bare SDK, run as the bridge runs it):

- deploy: N new users joined at once by one SDK process, and by two
  processes with N/2 each at the same moment (time until all joined);
- isolation: N users stream into process A (their phones talk); N more join
  either A itself or another process B; A's users' latency p99 in the 3 s
  after the storm began;
- the hop: a 3.2 KB packet through a bare Unix socket to another process and
  a 1-byte reply (the floor of a hop), and a ping through a real SDK worker
  process with the bridge's frames and both event loops (bench/worker_hop.py),
  CPU per packet on both sides.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from actors.livekit.dev_server import DevLiveKit, start_dev_livekit
from bench.ladder import Commanded, latencies, latency_summary, phones, start_phones_sending
from bench.proc_stats import cpu_seconds
from bench import worker_hop

HERE = pathlib.Path(__file__).resolve().parent
STORM_WINDOW = 3.0


def _env(livekit: DevLiveKit) -> dict[str, str]:
    return dict(os.environ, LIVEKIT_URL=livekit.url, LIVEKIT_API_KEY=livekit.api_key,
                LIVEKIT_API_SECRET=livekit.api_secret, PYTHONPATH=str(HERE.parent))


def deploy(livekit: DevLiveKit, users: int, processes: int, tag: str) -> dict[str, Any]:
    """``users`` new users joined at once, split over ``processes`` SDK processes."""
    env = _env(livekit)
    floors = [Commanded([sys.executable, "floor_process.py"], env) for _ in range(processes)]
    try:
        groups = [[f"{tag}-p{index}-u{user}" for user in range(index, users, processes)] for index in range(processes)]
        cpu_before = sum(cpu_seconds(floor.process.pid) for floor in floors)
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(processes) as pool:
            answers = list(pool.map(lambda pair: pair[0].ask("join", users=pair[1]), zip(floors, groups)))
        took = (time.monotonic() - started) * 1000
        cpu = sum(cpu_seconds(floor.process.pid) for floor in floors) - cpu_before
    finally:
        for floor in floors:
            floor.stop()
    return {"users": users, "processes": processes, "all_ms": took,
            "failed": sum(len(answer["failed"]) for answer in answers), "cpu_ms_per_join": cpu * 1000 / users}


def isolation(livekit: DevLiveKit, users: int, storm_elsewhere: bool, tag: str) -> dict[str, Any]:
    """A's users' latency while N more join A itself, or another process."""
    env = _env(livekit)
    streaming = [f"{tag}-a{index}" for index in range(users)]
    storm = [f"{tag}-b{index}" for index in range(users)]
    with contextlib.ExitStack() as stack:
        a = Commanded([sys.executable, "floor_process.py"], env)
        stack.callback(a.stop)
        b = a
        if storm_elsewhere:
            b = Commanded([sys.executable, "floor_process.py"], env)
            stack.callback(b.stop)
        phone_processes = stack.enter_context(phones(livekit, streaming, 0.1, env))
        start_phones_sending(phone_processes)
        a.ask("join", users=streaming)
        time.sleep(3.0)
        a.ask("arrivals")
        steady_start = time.monotonic_ns()
        time.sleep(3.0)
        storm_start = time.monotonic_ns()
        stormed = b.ask("join", users=storm)
        time.sleep(max(0.0, STORM_WINDOW - (time.monotonic_ns() - storm_start) / 1e9) + 1.0)
        arrivals = a.ask("arrivals")
    names = set(streaming)
    return {"users": users, "storm_in": "another process" if storm_elsewhere else "the same process",
            "steady_ms": latency_summary(latencies(arrivals, names, steady_start, storm_start)),
            "storm_ms": latency_summary(latencies(arrivals, names, storm_start,
                                                  storm_start + int(STORM_WINDOW * 1e9))),
            "storm_all_ms": stormed["all_ms"]}


def hop(packets: int = 20_000, size: int = 3201) -> dict[str, float]:
    """A packet to another process and back over a Unix socket: microseconds
    per round trip, and CPU per packet on each side."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    echo = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys\n"
        "s = socket.socket(fileno=int(sys.argv[1]))\n"
        "while (data := s.recv(65536)):\n"
        "    s.send(data[:1])\n"), str(child.fileno())], pass_fds=[child.fileno()])
    child.close()
    payload = bytes(size)
    cpu_before, started = time.process_time(), time.perf_counter()
    for _ in range(packets):
        parent.send(payload)
        parent.recv(16)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    echo_cpu = cpu_seconds(echo.pid)
    parent.close()
    echo.wait(timeout=10)
    return {"round_trip_us": elapsed / packets * 1e6, "sender_cpu_us": cpu / packets * 1e6,
            "receiver_cpu_us": echo_cpu / packets * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[20, 50])
    args = parser.parse_args(argv)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bridge-processes-"))
    livekit = start_dev_livekit(workdir, udp_ports=(47000, 47999))
    lines = ["| N | deploy: one process, all joined ms (CPU ms/join) | two processes | "
             "storm in the same process: streaming p99 ms | in another process |", "|---|---|---|---|---|"]
    try:
        for index, n in enumerate(args.users):
            one = deploy(livekit, n, 1, f"d{index}-one")
            two = deploy(livekit, n, 2, f"d{index}-two")
            same = isolation(livekit, n, False, f"i{index}-same")
            other = isolation(livekit, n, True, f"i{index}-other")
            lines.append(f"| {n} | {one['all_ms']:.0f} ({one['cpu_ms_per_join']:.0f}) | "
                         f"{two['all_ms']:.0f} ({two['cpu_ms_per_join']:.0f}) | "
                         f"{same['storm_ms'].get('p99', float('nan')):.0f} | "
                         f"{other['storm_ms'].get('p99', float('nan')):.0f} |")
            print(lines[-1], flush=True)
    finally:
        livekit.stop()
    trip = hop()
    print("\n".join(lines))
    print(f"\nthe hop, 3.2 KB over a bare Unix socket and back: {trip['round_trip_us']:.0f} us a round trip; CPU "
          f"{trip['sender_cpu_us']:.0f} us sending, {trip['receiver_cpu_us']:.0f} us receiving, per packet")
    worker_hop.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
