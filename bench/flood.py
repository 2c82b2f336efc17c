"""A connection flood against the bridge while a user streams.

    python -m bench.flood [--connections 1800] [--listener tcp unix] [--bridge-env NAME=VALUE ...]

The bridge runs as deployed (`bridge_main.py serve`, its own process, SDK
workers by default); one phone streams 20 ms packets to its cloud client
(bench/cloud_process.py). Then tests/flood_process.py opens CONNECTIONS
connections at once (idle, preface-only, and Health/Watch streams never
read), and a second user's JoinRoom is made meanwhile. Reported per listener:

- accept: seconds until the last flood connection had the server's SETTINGS,
  connections refused, and those still unanswered after FLOOD_DEADLINE, and
  the kernel's listen-queue overflows (TcpExt ListenOverflows: connections
  past the queue, which wait for a retransmit, or forever when idle);
- pause: the streaming user's worst packet latency from the flood's start to
  a second after its last answer, less its median before the flood;
- the JoinRoom's time, the streaming user's packets lost, the machine's idle share.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from actors.livekit.dev_server import DevLiveKit, start_dev_livekit
from bench.ladder import (RESULTS, Commanded, bridge_process, latencies, missing, percentile, phones,
                          start_phones_sending)
from bench.proc_stats import idle_share, machine_idle

HERE = pathlib.Path(__file__).resolve().parent
FLOOD = HERE.parent / "tests" / "flood_process.py"
sys.path.insert(0, str(FLOOD.parent))

from flood_process import listen_overflows  # noqa: E402

PACKET_INTERVAL = 0.02
#: Seconds the flood waits for its connections to be answered.
FLOOD_DEADLINE = 30.0


def flood_once(livekit: DevLiveKit, listener: str, connections: int, bridge_env: dict[str, str],
               tag: str) -> dict[str, Any]:
    env = dict(os.environ, LIVEKIT_URL=livekit.url, LIVEKIT_API_KEY=livekit.api_key,
               LIVEKIT_API_SECRET=livekit.api_secret, PYTHONPATH=str(HERE.parent))
    streaming, joining = f"{tag}-streaming", f"{tag}-joining"
    result: dict[str, Any] = {"listener": listener, "connections": connections, "bridge_env": bridge_env}
    with contextlib.ExitStack() as stack:
        socket_path = (str(pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory())) / "bridge.sock")
                       if listener == "unix" else None)
        _process, address, _metrics = stack.enter_context(bridge_process(livekit, env, bridge_env, socket_path))
        cloud = Commanded([sys.executable, "cloud_process.py", address], env)
        stack.callback(cloud.stop)
        phone = stack.enter_context(phones(livekit, [streaming], PACKET_INTERVAL, env))
        start_phones_sending(phone)
        if cloud.ask("join", users=[streaming])["failed"]:
            raise RuntimeError("the streaming user could not join")
        time.sleep(3)
        cloud.ask("arrivals")
        before_start = time.monotonic_ns()
        time.sleep(2)
        overflows, idle = listen_overflows(), machine_idle()
        flood_start = time.monotonic_ns()
        flood = subprocess.Popen([sys.executable, str(FLOOD), address, str(connections), str(FLOOD_DEADLINE)],
                                 stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        stack.callback(flood.wait, 30)
        stack.callback(flood.stdin.close)
        joined = cloud.ask("join", users=[joining])
        answer = flood.stdout.readline()
        if not answer:
            raise RuntimeError("the flood process failed")
        flooded = json.loads(answer)
        flood_end = flood_start + int(flooded["seconds"] * 1e9)
        time.sleep(max(0.0, (flood_end - time.monotonic_ns()) / 1e9) + 1.0)
        result["machine_idle"] = idle_share(idle, machine_idle())
        result["listen_overflows"] = listen_overflows() - overflows
        arrivals = cloud.ask("arrivals")
        users = {streaming}
        before = latencies(arrivals, users, before_start, flood_start)
        during = latencies(arrivals, users, flood_start, flood_end + int(1e9))
        expected, lost = missing(arrivals, users, before_start, flood_end + int(1e9))
        result.update(
            accept_all_s=flooded["seconds"], answered=flooded["answered"], failed=flooded["failed"],
            unanswered=flooded["unanswered"],
            join_ms=round(joined["all_ms"], 1), join_failed=bool(joined["failed"]),
            before_p50_ms=round(statistics.median(before), 2) if before else None,
            during_p99_ms=round(percentile(during, 0.99), 2) if during else None,
            pause_ms=round(max(during) - statistics.median(before), 1) if before and during else None,
            packets_expected=expected, packets_missing=lost)
    return result


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1800)
    parser.add_argument("--listener", nargs="+", choices=("tcp", "unix"), default=["tcp", "unix"])
    parser.add_argument("--rounds", type=int, default=1, help="floods per listener (default 1)")
    parser.add_argument("--bridge-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--label", default="flood")
    args = parser.parse_args(argv)
    bridge_env = dict(item.split("=", 1) for item in args.bridge_env)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bridge-flood-"))
    livekit = start_dev_livekit(workdir, udp_ports=(45000, 45999))
    results = []
    try:
        for round_ in range(args.rounds):
            for listener in args.listener:
                print(f"flood: {args.connections} connections on {listener}, round {round_ + 1}", flush=True)
                result = flood_once(livekit, listener, args.connections, bridge_env, f"f{round_}{listener}")
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        livekit.stop()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.label}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"flood: results in {path}")
    return results


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| listener | accepted in | answered / failed | listen overflows | JoinRoom | streaming p50 before "
             "| pause | lost | idle |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['listener']} | {r['accept_all_s']:.2f} s | {r['answered']} / {r['failed']} / {r['unanswered']} "
                     f"| {r['listen_overflows']} | {r['join_ms']:.0f} ms{' (failed)' if r['join_failed'] else ''} "
                     f"| {r['before_p50_ms']} ms | {r['pause_ms']} ms | {r['packets_missing']}/{r['packets_expected']} "
                     f"| {r['machine_idle']:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
