"""Healing after a LiveKit server restart: how soon every session is back.

    python -m bench.heal [--users 50] [--connects 1,2,4,8] [--outage 2]

For each value of BRIDGE_MAX_CONCURRENT_CONNECTS, the bridge runs as its own
process against a livekit-server of this benchmark's own; the cloud (this
process) joins N users and holds their StreamAudio calls. The server is
killed (no goodbye, as a crash), stays down ``--outage`` seconds, and is
started again on the same port with the same keys, so the sessions' tokens
stay valid. No RPC is made after that: the sessions rejoin by themselves.
The time from the restarted server's first answer to each session's
``connected`` (read from DescribeActors every 50 ms) is the healing time.

Prints a Markdown table and writes it, with the raw times as JSON, under
bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import secrets
import sys
import time
from collections.abc import Callable

import trio
import trio_asyncio

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from actors.livekit.dev_server import DevLiveKit, free_port, start_dev_livekit  # noqa: E402
from actors.operations.tree_view import walk  # noqa: E402
from bench.ladder import RESULTS, bridge_process, percentile  # noqa: E402
from bridge_harness import cloud, join_request  # noqa: E402


def connected_sessions(tree: dict) -> set[str]:
    return {node["name"].removeprefix("session:") for node in walk(tree["children"])
            if node["name"].startswith("session:") and node["counters"].get("connected")}


async def hold_stream(client, user: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with client.audio_stream(user) as stream:
        task_status.started()
        while await stream.recv() is not None:
            pass


async def heal_once(address: str, server: DevLiveKit, restart: Callable[[], DevLiveKit], users: list[str],
                    outage: float) -> dict:
    async with cloud(address) as client, trio.open_nursery() as streams:
        for user in users:
            joined = await client.join(join_request(server, user))
            assert joined.success, joined.error
            await streams.start(hold_stream, client, user)
        assert connected_sessions(await client.actor_tree()) == set(users)

        server.process.kill()
        server.process.wait()
        with trio.fail_after(60):
            while connected_sessions(await client.actor_tree()):
                await trio.sleep(0.05)
        await trio.sleep(outage)
        await trio.to_thread.run_sync(restart)
        back_at = time.monotonic()
        healed_after: dict[str, float] = {}
        with trio.move_on_after(120):
            while len(healed_after) < len(users):
                for user in connected_sessions(await client.actor_tree()) - healed_after.keys():
                    healed_after[user] = time.monotonic() - back_at
                await trio.sleep(0.05)
        streams.cancel_scope.cancel()
    times = sorted(healed_after.values())
    return {"healed": len(times), "users": len(users), "first_s": times[0] if times else None,
            "p50_s": percentile(times, 0.5) if times else None, "all_s": times[-1] if len(times) == len(users) else None,
            "times_s": times}


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.heal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--connects", default="1,2,4,8", help="BRIDGE_MAX_CONCURRENT_CONNECTS values to compare")
    parser.add_argument("--outage", type=float, default=2.0, help="seconds the server stays down")
    args = parser.parse_args(argv)
    users = [f"heal-{index:03d}" for index in range(args.users)]
    workdir = RESULTS / f"heal-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for connects in [int(value) for value in args.connects.split(",")]:
        # The same port and keys each time, so the sessions' tokens stay valid across the restart.
        config = dict(port=free_port(), rtc_tcp_port=free_port(), udp_ports=(45000, 45999),
                      api_secret=secrets.token_hex(24))
        with contextlib.ExitStack() as servers:
            def start(name: str) -> DevLiveKit:
                server = start_dev_livekit(workdir / name, **config)
                servers.callback(server.stop)
                return server

            first = start(f"livekit-{connects}")
            with bridge_process(first, dict(os.environ), {"BRIDGE_MAX_CONCURRENT_CONNECTS": str(connects)}) as (
                    _, address, _):
                result = trio_asyncio.run(heal_once, address, first, lambda: start(f"livekit-{connects}-restarted"),
                                          users, args.outage)
        rows.append({"connects": connects, **result})
        print(f"connects {connects}: {result['healed']}/{result['users']} healed; first {_seconds(result['first_s'])}, "
              f"p50 {_seconds(result['p50_s'])}, all {_seconds(result['all_s'])}", flush=True)
    table = [f"## LiveKit server restart, {args.users} sessions, {args.outage:g} s outage",
             "", "| connects in flight | healed | first | p50 | all (seconds after the server is back) |", "|---|---|---|---|---|"]
    for row in rows:
        table.append(f"| {row['connects']} | {row['healed']}/{row['users']} | {_seconds(row['first_s'])} | "
                     f"{_seconds(row['p50_s'])} | {_seconds(row['all_s'])} |")
    (workdir / "heal.md").write_text("\n".join(table) + "\n")
    (workdir / "heal.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(table))
    print(f"\nresults: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
