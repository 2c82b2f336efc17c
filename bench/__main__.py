"""Benchmarks of the bridge against a real livekit-server on loopback.

    just bench              everything (tens of minutes: five rungs for each N)
    just bench --quick      a 2-minute smoke run of the ladder (N=10, 100 ms and 20 ms packets)
    just bench --help       the options (a ladder's N values, the bridge's environment, ...)

The load ladder (bench/ladder.py) runs the bridge as its own process, on TCP
and on the Unix socket, read by the cloud's own grpc-js client
(bench/node_cloud_process.mjs), beside two floors: the bare livekit receiver
at its data callback, and the gRPC floor (the same receiver forwarding over a
minimal grpclib stream to the same client), at N = 10, 20, 50, 100 users and
on while it holds; it writes JSON, a Markdown table and a PNG plot under
bench/results/. Then the single-session benchmarks, printed as a table:
- join latency: JoinRoom for a user without a session, to its answer;
- replace latency: JoinRoom for a user with a session (old one torn down first);
- leave latency;
- microphone path latency: publish_data in a phone process -> AudioChunk
  received by the cloud's gRPC client, 100 ms packets every 20 ms;
- CPU of the bridge process (bridge + in-process cloud client, the phone is
  another process) per forwarded packet, with 1 and with 30 sessions (the
  per-room event filter keeps the second close to the first);
- playback latency: PlayAudio -> first sound at a listener subscribed as the
  phone is, on a fresh track (published and subscribed first) and on a warm
  one (bench/playback.py);
- healing after a LiveKit server restart: 50 sessions, the server down 10 s,
  the time until each session is back (bench/heal.py; `python -m bench.heal`
  compares BRIDGE_MAX_CONCURRENT_CONNECTS values);
- a cloud restart: 20 and 50 users streaming, the cloud killed, a new one
  joining every user at once 2 s later, with adoption on and off: each
  user's first chunk on the new stream, the bridge's CPU, packets lost in
  the gap (bench/cloud_restart.py; `python -m bench.cloud_restart`);
- one SDK process or two: a deploy's joins, a storm's effect on the users
  of the other process, the hop's cost (bench/processes.py);
- where a burst of 20 joins spends its CPU, by thread and in the main
  thread by library, with SDK worker processes and without
  (bench/join_profile.py);
- the drop-in bundle's cold start in the cloud image's layout: to a
  listening socket and to its SDK workers ready, beside `python
  bridge_main.py` (bench/cold_start.py; `just bundle` builds the bundle).
- a flood of 1,800 connections at once while a user streams, on TCP and the
  Unix socket: how long until all are answered, the streaming user's pause,
  a JoinRoom meanwhile (bench/flood.py; `python -m bench.flood`).
- log shipping to Better Stack, on against off in alternating windows:
  20 users streaming through a bridge at DEBUG, and 1,000 lines/s through
  the real shipper to a local HTTPS ingest host: the users' latency, CPU,
  the Trio loop's lag, lines shipped and dropped (bench/log_shipping.py).
- memory (bench/memory.py; `python -m bench.memory [--quick]`): the PSS of
  the bridge's process family and of the floor (the bare SDK, publishing the
  cloud's audio back) before any user, with 20 streaming both ways, after
  they left and per join under churn, split by process into Python's
  arenas, native and file-backed memory.
- a 3-node LiveKit cluster losing the room's node (killed, and stopped by
  force): how long after the phone the cloud has audio again on the same
  StreamAudio (bench/cluster.py; `python -m bench.cluster`).
Numbers depend on the machine; compare runs on the same one.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import trio
import trio_asyncio

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from actors.bridge import run_bridge  # noqa: E402
from actors.livekit.dev_server import start_dev_livekit  # noqa: E402
from actors.operations.log_setup import configure_logging  # noqa: E402
from actors.operations.settings import BridgeSettings  # noqa: E402
from bridge_harness import cloud, join_request  # noqa: E402
from bench.ladder import RESULTS, RungPlan, ladder, percentile as nearest_rank  # noqa: E402
from bench.profile_summary import perf_summary, summarize  # noqa: E402
from bench.stamps import STAMP  # noqa: E402
from bench.playback import playback_latency  # noqa: E402
from bench import cloud_restart, cluster, cold_start, flood, heal, join_profile, log_shipping, memory, processes  # noqa: E402

JOINS = 30
PACKETS = 300
PLAYBACKS = 30


def summary(name: str, samples: list[float], unit: str = "ms", percentile: int = 95) -> str:
    """median, p``percentile`` (nearest rank) and max of the samples."""
    samples = sorted(samples)
    high = nearest_rank(samples, percentile / 100)
    return (f"{name:<60} n={len(samples):<4} median {statistics.median(samples):8.2f} {unit}   "
            f"p{percentile} {high:8.2f} {unit}   max {samples[-1]:8.2f} {unit}")


async def timed(call) -> float:
    started = time.perf_counter()
    await call
    return (time.perf_counter() - started) * 1000


async def mic_path(client, livekit, user: str, packets: int) -> tuple[list[float], float]:
    """Latency of each packet from a phone in another process, and this
    process's CPU seconds per forwarded packet (bridge + cloud client)."""
    env = dict(os.environ, LIVEKIT_API_KEY=livekit.api_key, LIVEKIT_API_SECRET=livekit.api_secret,
               PYTHONPATH=str(HERE.parent))
    phone = await trio.lowlevel.open_process(
        [sys.executable, str(HERE / "phones_process.py"), livekit.url, "0.02", user],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=HERE)
    latencies: list[float] = []
    try:
        async with client.audio_stream(user) as stream:
            lines = phone.stdout
            with trio.fail_after(30):
                assert (await lines.receive_some(100)).strip() == b"ready"
            await trio.sleep(4)  # past LiveKit's first batch of participant updates
            cpu_before = time.process_time()
            await phone.stdin.send_all(b"go\n")
            with trio.move_on_after(packets * 0.02 + 10):
                while len(latencies) < packets:
                    chunk = await stream.recv()
                    sent_ns, _, _ = STAMP.unpack_from(chunk.pcm_data)
                    latencies.append((time.monotonic_ns() - sent_ns) / 1e6)
            cpu = (time.process_time() - cpu_before) / max(1, len(latencies))
            await phone.stdin.aclose()  # the phone stops sending at the end of its input
    finally:
        with trio.move_on_after(10):
            await phone.wait()
        phone.kill()
    return latencies, cpu


async def single_session_benchmarks() -> None:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    livekit = start_dev_livekit(workdir, udp_ports=(45000, 45999))
    try:
        settings = BridgeSettings(host="127.0.0.1", port=0, default_livekit_url=livekit.url, connect_timeout=30)
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            bridge = await nursery.start(run_bridge, settings)
            async with cloud(bridge.address) as client:
                joins = [await timed(client.join(join_request(livekit, f"bench-{i}"))) for i in range(JOINS)]
                replaces = [await timed(client.join(join_request(livekit, f"bench-{i}"))) for i in range(JOINS)]
                leaves = [await timed(client.leave(f"bench-{i}")) for i in range(JOINS)]

                await client.join(join_request(livekit, "solo"))
                solo_latency, solo_cpu = await mic_path(client, livekit, "solo", PACKETS)
                for i in range(29):
                    await client.join(join_request(livekit, f"crowd-{i}"))
                crowd_latency, crowd_cpu = await mic_path(client, livekit, "solo", PACKETS)
                playback = await playback_latency(client, livekit, PLAYBACKS)

            lines = [
                summary("JoinRoom, new user", joins),
                summary("JoinRoom, replacing a session", replaces),
                summary("LeaveRoom", leaves),
                summary("mic packet: phone -> cloud, 1 session", solo_latency),
                summary("mic packet: phone -> cloud, 30 sessions", crowd_latency),
                f"{'bridge CPU per forwarded packet, 1 session':<60} {solo_cpu * 1e6:8.0f} us",
                f"{'bridge CPU per forwarded packet, 30 sessions':<60} {crowd_cpu * 1e6:8.0f} us",
                f"{'packets forwarded / sent (1 / 30 sessions)':<60} "
                f"{len(solo_latency)}/{PACKETS}, {len(crowd_latency)}/{PACKETS}",
            ] + [summary(f"PlayAudio -> {case}", latencies, percentile=99)
                 for case, latencies in playback.items()]
            print("\n".join(lines), flush=True)
            nursery.cancel_scope.cancel()
    finally:
        livekit.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the 2-minute smoke run: the ladder at N=10 only")
    parser.add_argument("--users", default="10,20,50,100", help="the ladder's N values (default 10,20,50,100)")
    parser.add_argument("--until-it-breaks", type=int, default=200, metavar="MAX_N",
                        help="after the last N, go on in steps of 50 up to MAX_N while the bridge holds (0: don't)")
    parser.add_argument("--steady", type=float, default=10.0, help="seconds of the steady window (default 10)")
    parser.add_argument("--bridge-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the bridge process, e.g. BRIDGE_MAX_CONCURRENT_CONNECTS=4")
    parser.add_argument("--no-floor", action="store_true", help="measure the bridge alone")
    parser.add_argument("--listeners", default="tcp,unix",
                        help="the bridge's listeners, each measured in a rung of its own (default tcp,unix)")
    parser.add_argument("--cloud", choices=("node", "python"), default="node",
                        help="the cloud client: the cloud's own grpc-js (default, where Node is installed) or grpclib")
    parser.add_argument("--no-grpc-floor", action="store_true",
                        help="skip the gRPC floor (the bare SDK forwarding over a minimal grpclib stream)")
    parser.add_argument("--storm-window", type=float, default=3.0,
                        help="seconds after a storm's start in which the streaming users' latency is read")
    parser.add_argument("--floor-max-users", type=int, metavar="N",
                        help="run the floor only up to N users (it collapses past about 50: python-sdks issue 812)")
    parser.add_argument("--ladder-only", action="store_true", help="skip the single-session benchmarks")
    parser.add_argument("--label", default="", help="a word for the result files' names")
    parser.add_argument("--profile", type=int, metavar="N",
                        help="only profile the bridge (py-spy, native frames too) in the steady state of N users")
    args = parser.parse_args()
    bridge_env = tuple(tuple(item.split("=", 1)) for item in args.bridge_env)
    shape = dict(bridge_env=bridge_env, listeners=tuple(args.listeners.split(",")), cloud=args.cloud,
                 grpc_floor=not args.no_grpc_floor, storm_window=args.storm_window)
    if args.profile:
        output = RESULTS / f"profile-{args.profile}-{time.strftime('%Y%m%d-%H%M%S')}.speedscope.json"
        ladder([RungPlan(users=args.profile, steady=args.steady, replacements=1, profile=output,
                         **dict(shape, grpc_floor=False, listeners=shape["listeners"][:1]))],
               floor=False, until_it_breaks=0, label=args.label or "profile")
        print(summarize(output), flush=True)
        print("\n### every thread, by library (perf, software clock)\n" + perf_summary(pathlib.Path(f"{output}.perf")))
        print(f"profile: {output} (open in https://www.speedscope.app)", flush=True)
        return
    if args.quick:
        plans = [RungPlan(users=10, steady=5, warmup=2, replacements=10, **shape),
                 RungPlan(users=10, interval=0.02, steady=5, warmup=2, replacements=10, **shape)]
        ladder(plans, floor=not args.no_floor, until_it_breaks=0, label=args.label or "quick")
        return
    plans = [RungPlan(users=int(n), steady=args.steady, **shape) for n in args.users.split(",")]
    plans.append(RungPlan(users=20, interval=0.02, steady=args.steady, **shape))
    ladder(plans, floor=not args.no_floor, until_it_breaks=args.until_it_breaks, label=args.label or "ladder",
           floor_max_users=args.floor_max_users)
    if not args.ladder_only:
        trio.run(single_session_benchmarks)
        heal.main(["--users", "50", "--connects", "2", "--outage", "10"])
        cloud_restart.main(["--users", "20", "50", "--gap", "2"])
        processes.main(["--users", "20", "50"])
        join_profile.main(["--users", "20", "--label", "workers"])
        join_profile.main(["--users", "20", "--label", "in-process", "--bridge-env", "BRIDGE_SDK_WORKERS=0"])
        cold_start.main(["--python"])
        flood.main([])
        log_shipping.main([])
        memory.main([])
        cluster.main([])


if __name__ == "__main__":
    configure_logging(level="WARNING", log_format="text")
    main()
