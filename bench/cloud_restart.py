"""A cloud restart, measured: N users streaming, the cloud process killed
(no LeaveRoom), a new one that joins every user at once.

    python -m bench.cloud_restart [--users 20 50] [--gap 2.0]   (part of `just bench`)

For each N, with adoption on and off (BRIDGE_ADOPT_LINKS): phones in
processes of their own send stamped 100 ms packets from the start
(bench/phones_process.py); a first cloud process (bench/cloud_process.py)
joins them and holds their StreamAudio; it is killed; ``gap`` seconds later a
second one joins every user at once and opens a new StreamAudio for each.
Reported:
- each user's first chunk on the new stream, from the new cloud's first
  JoinRoom (p50, max);
- the bridge's CPU for the restart: its CPU from the new cloud's JoinRooms
  until 2 s after the last first chunk, less what streaming alone costs in
  that time (measured before the kill);
- packets lost in the gap: of the packets each phone sent from the kill on,
  those the new stream never brought;
- how many replacements the bridge adopted, and how many rejoined in full.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

from actors.livekit.dev_server import DevLiveKit, start_dev_livekit
from bench.ladder import (Commanded, bridge_process, histogram_buckets, percentile, phones, profiled,
                          stage_quantiles, start_phones_sending)
from bench.proc_stats import cpu_seconds, idle_share, machine_idle

INTERVAL = 0.1
SETTLE = 2.0


def restart_once(livekit: DevLiveKit, users: int, gap: float, adopt: bool, tag: str,
                 profile: pathlib.Path | None = None) -> dict[str, Any]:
    names = [f"{tag}-{'adopt' if adopt else 'rejoin'}-u{i}" for i in range(users)]
    env = dict(os.environ, LIVEKIT_URL=livekit.url, LIVEKIT_API_KEY=livekit.api_key,
               LIVEKIT_API_SECRET=livekit.api_secret, PYTHONPATH=str(pathlib.Path(__file__).parent.parent))
    bridge_env = {"BRIDGE_ADOPT_LINKS": "1" if adopt else "0"}
    with contextlib.ExitStack() as stack:
        bridge, address, metrics_port = stack.enter_context(bridge_process(livekit, env, bridge_env))
        phone_processes = stack.enter_context(phones(livekit, names, INTERVAL, env))
        start_phones_sending(phone_processes)
        first = Commanded([sys.executable, "cloud_process.py", address], env)
        stack.callback(first.stop)
        joined = first.ask("join", users=names)
        if joined["failed"]:
            raise RuntimeError(f"the first cloud's joins failed: {joined['failed'][:3]}")
        time.sleep(3.0)  # every stream flowing
        cpu_before, steady_from, idle_before = cpu_seconds(bridge.pid), time.monotonic(), machine_idle()
        time.sleep(2.0)
        streaming_cpu_rate = (cpu_seconds(bridge.pid) - cpu_before) / (time.monotonic() - steady_from)
        idle_after = machine_idle()
        streaming_idle = idle_share(idle_before, idle_after)

        first.process.send_signal(signal.SIGKILL)  # the cloud dies: no LeaveRoom
        first.process.wait()
        killed_ns = time.monotonic_ns()
        time.sleep(gap)

        second = Commanded([sys.executable, "cloud_process.py", address], env)
        stack.callback(second.stop)
        cpu_start, started = cpu_seconds(bridge.pid), time.monotonic()
        idle_start = machine_idle()
        joins_before = rpc_buckets(metrics_port)
        rejoin_ns = time.monotonic_ns()
        with profiled(bridge.pid, profile, SETTLE + 2):
            rejoined = second.ask("join", users=names)
            time.sleep(SETTLE)
        arrivals: dict[str, list] = second.ask("arrivals")
        first_chunks = {user: min(received for _, received, _ in got) for user, got in arrivals.items() if got}
        last_first = max(first_chunks.values(), default=rejoin_ns)
        # CPU until SETTLE s after the last first chunk, less streaming's own.
        time.sleep(max(0.0, (last_first / 1e9 + SETTLE) - time.monotonic()))
        window = time.monotonic() - started
        restart_cpu = cpu_seconds(bridge.pid) - cpu_start - streaming_cpu_rate * window
        idle_end = machine_idle()
        server_joins = stage_quantiles(joins_before, rpc_buckets(metrics_port),
                                       (("p50", 0.5), ("max", 1.0))).get("JoinRoom", {})
        supervisor = second.ask("supervisor")
        lost = sum(_lost_after(arrivals.get(user, []), killed_ns) for user in names)
    waits = [(first_chunks[user] - rejoin_ns) / 1e6 for user in names if user in first_chunks]
    return {
        "users": users, "gap_s": gap, "adopt": adopt,
        "joins_failed": len(rejoined["failed"]),
        "join_ms": {"p50": statistics.median(rejoined["ms"]), "max": max(rejoined["ms"]), "all": rejoined["all_ms"]},
        "server_join_ms": server_joins,
        "machine_idle": idle_share(idle_start, idle_end),
        "machine_idle_streaming": streaming_idle,
        "first_chunk_ms": {"n": len(waits), "p50": statistics.median(waits) if waits else None,
                           "p95": percentile(waits, 0.95) if waits else None, "max": max(waits, default=None)},
        "users_without_audio": users - len(waits),
        "restart_cpu_s": restart_cpu,
        "gap_packets_lost": lost,
        "adopted": supervisor.get("adoptions", 0),
        "rejoined": supervisor.get("replacements", 0) - supervisor.get("adoptions", 0),
    }


def rpc_buckets(metrics_port: int) -> dict[str, list[tuple[float, float]]]:
    """The bridge's RPC duration histogram, by method (all codes)."""
    return histogram_buckets(metrics_port, "bridge_rpc_seconds", "method")


def _lost_after(got: list[tuple[int, int, int]], killed_ns: int) -> int:
    """Packets sent from ``killed_ns`` on that are missing from ``got``
    (sent_ns, received_ns, 16-bit counter), before the last one received."""
    if not got:
        return 0
    by_sent = sorted(got)
    first_sent, _, first_counter = by_sent[0]
    # Missing at the start: the phone sent a packet every INTERVAL from the kill on.
    lost = max(0, round((first_sent - killed_ns) / 1e9 / INTERVAL) - 1) if first_sent > killed_ns else 0
    counters = [counter for sent, _, counter in by_sent if sent >= killed_ns]
    if counters:
        span = (counters[-1] - counters[0]) % 65536 + 1
        lost += span - len(set(counters))
    return lost


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| users | gap | adoption | JoinRoom p50 / max at the cloud (ms) | in the bridge, bucket bounds (ms) "
             "| first chunk p50 / max (ms) | restart CPU (s) | gap packets lost | adopted / rejoined | joins failed "
             "| machine idle |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        chunk = r["first_chunk_ms"]
        lines.append(f"| {r['users']} | {r['gap_s']:g} s | {'on' if r['adopt'] else 'off'} | "
                     f"{_ms(r['join_ms']['p50'])} / {_ms(r['join_ms']['max'])} | "
                     f"≤{_ms(r['server_join_ms'].get('p50'))} / ≤{_ms(r['server_join_ms'].get('max'))} | "
                     f"{_ms(chunk['p50'])} / {_ms(chunk['max'])} | {r['restart_cpu_s']:.2f} | "
                     f"{r['gap_packets_lost']} | {r['adopted']} / {r['rejoined']} | {r['joins_failed']} | "
                     f"{r['machine_idle_streaming']:.0%} / {r['machine_idle']:.0%} |")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def run(users: list[int], gap: float, adoption: tuple[bool, ...] = (True, False),
        profile: pathlib.Path | None = None) -> list[dict[str, Any]]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bridge-cloud-restart-"))
    livekit = start_dev_livekit(workdir, udp_ports=(46000, 46999))
    results = []
    try:
        for index, n in enumerate(users):
            for adopt in adoption:
                print(f"cloud restart: N={n}, adoption {'on' if adopt else 'off'}", flush=True)
                output = profile and profile.with_name(f"{profile.name}-{n}-{'on' if adopt else 'off'}.speedscope.json")
                results.append(restart_once(livekit, n, gap, adopt, f"r{index}", output))
    finally:
        livekit.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between the kill and the new cloud")
    parser.add_argument("--adoption", choices=["on", "off", "both"], default="both")
    parser.add_argument("--profile", type=pathlib.Path, metavar="PREFIX",
                        help="py-spy (and perf, where installed) on the bridge while the new cloud joins")
    args = parser.parse_args(argv)
    adoption = {"on": (True,), "off": (False,), "both": (True, False)}[args.adoption]
    results = run(args.users, args.gap, adoption, args.profile)
    out = pathlib.Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"cloud-restart-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
