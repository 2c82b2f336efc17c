"""The hop between the bridge and an SDK worker process, with the bridge's
real frames (actors/sdk_workers/frames.py) and the worker's real event loop.

    python -m bench.worker_hop [--requests 2000]

A real worker process (actors/sdk_workers/worker_process.py, started as the
bridge starts it) is asked "ping" over its socketpair, through the bridge's
own WorkerConnection (an Outbox frame out, the worker's dispatch, a task that
answers, its Outbox frame back), one request at a time: the round trip's p50,
p99 and max, and CPU per round trip on each side: the cost of the frames,
the wake-ups and the two event loops. A packet's own bytes add a pickled
copy of 3.2 KB (a microsecond or two). The one-way hop of real packets, in
the SDK worker's loop among its rooms, is the ladder's worker_hop stage
(bridge_mic_stage_seconds), read in `just bench`.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import time

import trio

from actors.operations.stderr_redaction import DRAIN_SECONDS, open_child_stderr
from actors.sdk_workers.command import worker_command, worker_environment
from actors.sdk_workers.frames import FrameChannel
from actors.sdk_workers.worker import WorkerConnection
from bench.ladder import percentile
from bench.proc_stats import cpu_seconds, idle_share, machine_idle


async def round_trips(requests: int) -> dict[str, float]:
    ours, theirs = socket.socketpair()
    # Started as the bridge starts its workers: the same command and environment, its fd 2 through the redactor.
    stderr, relay = open_child_stderr("bench-worker")
    try:
        process = await trio.lowlevel.open_process(
            worker_command(str(theirs.fileno()), "bench-worker", "WARNING", "text"), pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL, stderr=stderr, env=worker_environment(os.environ))
    finally:
        theirs.close()
        os.close(stderr)
    channel = FrameChannel(ours)
    connection = WorkerConnection(channel, "bench-worker")
    took: list[float] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.outbox.run_until_closed)
            with trio.fail_after(30):
                await nursery.start(connection.receive)
            for _ in range(200):  # warm-up
                await connection.request("ping")
            idle, cpu_here, cpu_there = machine_idle(), time.process_time(), cpu_seconds(process.pid)
            for _ in range(requests):
                started = time.perf_counter()
                await connection.request("ping")
                took.append((time.perf_counter() - started) * 1e6)
            result = {"requests": requests, "p50_us": statistics.median(took),
                      "p99_us": percentile(took, 0.99), "max_us": max(took),
                      "bridge_cpu_us": (time.process_time() - cpu_here) / requests * 1e6,
                      "worker_cpu_us": (cpu_seconds(process.pid) - cpu_there) / requests * 1e6,
                      "machine_idle": idle_share(idle, machine_idle())}
            nursery.cancel_scope.cancel()
    finally:
        await channel.aclose()
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
        await trio.to_thread.run_sync(relay.join, DRAIN_SECONDS)
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_hop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args(argv)
    result = trio.run(round_trips, args.requests)
    print(f"the hop with the bridge's frames and both event loops (a ping): round trip p50 "
          f"{result['p50_us']:.0f} us, p99 {result['p99_us']:.0f} us, max {result['max_us']:.0f} us; CPU per round "
          f"trip {result['bridge_cpu_us']:.0f} us in the bridge, {result['worker_cpu_us']:.0f} us in the worker; "
          f"machine idle {result['machine_idle']:.0%}", flush=True)
    return result


if __name__ == "__main__":
    main()
