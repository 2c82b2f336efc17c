"""A LiveKit cluster losing the room's node: how soon the cloud has audio again.

    tests/isolated .venv/bin/python -m bench.cluster [--runs 3]

Each run starts a fresh 3-node cluster (tests/livekit_cluster.py) and the
bridge as deployed (`bridge_main.py serve`, its own process), and plays one
scenario of tests/test_livekit_cluster.py (tests/cluster_scenarios.py): the
room on node 0, the phone signalling through node 1, the bridge through
node 2, the phone talking (100 ms packets) and the cloud holding one
StreamAudio. The faults:

- kill: node 0 SIGKILLed;
- force-stop: node 0 sent SIGTERM twice (every participant told SERVER_SHUTDOWN).

For each run it prints how long after the fault the phone was back in the
room, and how long after the phone's first packet since then the cloud had
audio again on the same stream ("bridge after phone"), then a table; the
table and each run's figures go to bench/results/cluster-<time>/cluster.json,
beside each run's Redis and node logs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys

import trio_asyncio

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from actors.livekit.sdk_core import configure_sdk_core  # noqa: E402
from actors.operations.log_setup import configure_logging  # noqa: E402
from bench.ladder import RESULTS, bridge_process  # noqa: E402
from bridge_harness import cloud  # noqa: E402
from cluster_scenarios import BRIDGE_NODE, ROOM_NODE, run_scenario  # noqa: E402
from livekit_cluster import livekit_cluster  # noqa: E402

FAULTS = {"kill": lambda cluster: cluster.kill(ROOM_NODE),
          "force-stop": lambda cluster: cluster.force_stop(ROOM_NODE)}


async def one_run(address: str, cluster, fault: str, user: str) -> dict:
    async with cloud(address) as client:
        outcome = await run_scenario(cluster, client, user, FAULTS[fault])
    return {"fault": fault, "phone_back_s": round(outcome.phone_back_at - outcome.fault_at, 3),
            "bridge_after_phone_s": round(outcome.bridge_after_phone, 3),
            "status_reason": outcome.status.last_disconnect_reason,
            "phone_disconnects": outcome.phone_disconnects,
            "room_node_after": outcome.room_node_after}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each fault")
    parser.add_argument("--faults", default=",".join(FAULTS), help="which, comma-separated")
    args = parser.parse_args(argv)
    configure_sdk_core()  # (the phone's SDK, in this process, as the bridge runs its own)
    results = RESULTS / f"cluster-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    results.mkdir(parents=True, exist_ok=True)
    rows = []
    for fault in args.faults.split(","):
        for run in range(args.runs):
            with livekit_cluster(results / f"{fault}-{run + 1}") as cluster:  # (the nodes' logs stay there)
                bridge_node = cluster.nodes[BRIDGE_NODE]
                with bridge_process(bridge_node, dict(os.environ, LIVEKIT_URL=bridge_node.url), {}) as (
                        _, address, _):
                    row = trio_asyncio.run(one_run, address, cluster, fault, f"bench-{fault}-{run}")
            rows.append(row)
            print(f"{fault} #{run + 1}: phone back {row['phone_back_s']:.2f} s after the fault, the bridge's audio "
                  f"{row['bridge_after_phone_s']:.2f} s after the phone's ({row['status_reason']})", flush=True)
    table = ["## The room's node lost, one user (bridge after phone: s from the phone's first packet back "
             "to the cloud's first chunk from then on, on the same StreamAudio)", "",
             "| fault | runs | phone back after the fault (median) | bridge after phone: median | max |",
             "|---|---|---|---|---|"]
    for fault in args.faults.split(","):
        mine = [row for row in rows if row["fault"] == fault]
        after = [row["bridge_after_phone_s"] for row in mine]
        table.append(f"| {fault} | {len(mine)} | {statistics.median(row['phone_back_s'] for row in mine):.2f} s | "
                     f"{statistics.median(after):.2f} s | {max(after):.2f} s |")
    report = "\n".join(table)
    print(report)
    saved = results / "cluster.json"
    saved.write_text(json.dumps({"table": report, "runs": rows}, indent=2))
    print(f"\nthe table and each run's figures: {saved}")
    return 0


if __name__ == "__main__":
    configure_logging(level="WARNING", log_format="text")
    sys.exit(main())
