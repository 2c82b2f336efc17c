"""The memory rung: where the bridge's memory goes, beside the floor's.

    python -m bench.memory [--users 20] [--churn-users 10] [--cycles 30] [--rounds 1] [--quick]

For the bridge as deployed (`bridge_main.py serve`, the ladder's
bridge_process, fed by the cloud's own grpc-js client) and for the floor
(bench/floor_process.py: the bare SDK receiving the phones' packets and
publishing the cloud's audio back, so a published track is not counted as
ours), on the same livekit-server, one after the other (and again, in
alternating order, with --rounds), it reads the PSS of the target's whole
process family (the bridge and its SDK workers; /proc/PID/smaps_rollup, so a
page shared by k processes counts once) at:

1. idle: before any user (2 s after the listener answers);
2. after warm-up: one user joined, streamed both ways for 3 s and left;
3. streaming: N users joined at once, streaming both ways (the phones send
   100 ms microphone packets, the cloud 100 ms audio chunks back), after
   STEADY seconds; per streaming user = (streaming - after warm-up) / N;
4. after leaving: every user left, SETTLE seconds later;
5. churn: cycles of K users joining, streaming both ways for a second and
   leaving (the phones stay in their rooms); the family's PSS after each
   cycle, and the slope over the second half of the cycles, per join, with
   its 95 % interval (least squares).

Each process's PSS is split into anonymous memory (heaps: Python's and
native) and file-backed (code, libraries); its Python small-object heap
(obmalloc's arenas) and glibc malloc's totals (in use, kept free) are read
by bench/memory_probe/sitecustomize.py inside the process, which nothing of
the bridge carries. native = anonymous - Python arenas. The machine's idle share is given for each target's run (the bench
and another agent share the 2 cores). Results: bench/results/memory-*.json, .md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

from actors.livekit.dev_server import DevLiveKit, start_dev_livekit
from bench.ladder import RESULTS, Commanded, RungPlan, bridge_process, cloud_command, phones, start_phones_sending
from bench.proc_stats import family, idle_share, machine_idle, pss_kib

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
PROBE_PATH = HERE / "memory_probe"
STEADY = 5.0
SETTLE = 3.0


class Probe:
    """The family's memory, process by process: PSS from /proc, and the
    Python arenas each process's probe reports."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.counter = 0

    def read(self, pid: int) -> dict[str, Any]:
        self.counter += 1
        (self.directory / "request").write_text(str(self.counter))
        members = family(pid)
        deadline = time.monotonic() + 3
        answers: dict[int, dict] = {}
        while time.monotonic() < deadline and len(answers) < len(members):
            time.sleep(0.1)
            for member in members:
                with contextlib.suppress(OSError, ValueError):
                    answer = json.loads((self.directory / f"{member}.json").read_text())
                    if answer["request"] == str(self.counter):
                        answers[member] = answer
        processes = []
        for member in members:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                pss = pss_kib(member)
                python = answers.get(member, {}).get("arena_bytes", 0) // 1024
                processes.append({"pid": member, "role": "main" if member == pid else "worker",
                                  "pss_kib": pss["pss"], "anon_kib": pss.get("pss_anon", 0),
                                  "file_kib": pss.get("pss_file", 0), "python_arenas_kib": python,
                                  "python_allocated_kib": answers.get(member, {}).get("allocated_bytes", 0) // 1024,
                                  "native_kib": pss.get("pss_anon", 0) - python, "probed": member in answers,
                                  **{key.replace("_bytes", "_kib"): value // 1024
                                     for key, value in answers.get(member, {}).items() if key.startswith("malloc_")}})
        return {"pss_kib": sum(p["pss_kib"] for p in processes), "processes": processes}


def slope(ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ``ys`` against their index, and the half-width of its 95 % interval."""
    n = len(ys)
    if n < 3:
        return float("nan"), float("nan")
    xs = range(n)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    residual = sum((y - my - b * (x - mx)) ** 2 for x, y in zip(xs, ys)) / (n - 2)
    t = 2.0 if n > 30 else {3: 12.7, 4: 4.3, 5: 3.18, 6: 2.78, 7: 2.57, 8: 2.45, 9: 2.36, 10: 2.31}.get(n, 2.2)
    return b, t * math.sqrt(residual / sxx)


def _check(answer: dict[str, Any], what: str) -> None:
    if answer.get("failed"):
        raise RuntimeError(f"{what}: {len(answer['failed'])} joins failed: {list(answer['failed'].items())[:2]}")


def run_target(livekit: DevLiveKit, target: str, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    """One run of the rung for "bridge" or "floor"."""
    probe_dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-memory-probe-"))
    env = dict(os.environ, LIVEKIT_URL=livekit.url, LIVEKIT_API_KEY=livekit.api_key,
               LIVEKIT_API_SECRET=livekit.api_secret, BENCH_MEMORY_PROBE=str(probe_dir),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(PROBE_PATH)]))
    # Phones: no probe (they are the load, not what is measured).
    phone_env = dict(env, PYTHONPATH=str(ROOT))
    phone_env.pop("BENCH_MEMORY_PROBE")
    probe = Probe(probe_dir)
    warm, streaming = [f"{tag}-w0"], [f"{tag}-s{i}" for i in range(args.users)]
    churn = [f"{tag}-c{i}" for i in range(args.churn_users)]
    result: dict[str, Any] = {"target": target, "users": args.users, "churn_users": args.churn_users,
                              "cycles": args.cycles, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    idle_before = machine_idle()
    with contextlib.ExitStack() as stack:
        if target == "bridge":
            process, address, _ = stack.enter_context(bridge_process(livekit, env, dict(args.bridge_env)))
            receiver = Commanded(cloud_command(RungPlan(users=args.users), address), phone_env)
            if receiver.process.args[0] != "node":
                raise RuntimeError("the memory rung needs the cloud's grpc-js client (`just setup`): "
                                   "bench/cloud_process.py sends no audio back")
        else:
            receiver = Commanded([sys.executable, "floor_process.py"], env)
            process = receiver.process
        stack.callback(receiver.stop)
        pid = process.pid
        receiver.ask("talk", on=True)
        phone_processes = stack.enter_context(phones(livekit, warm + streaming + churn, 0.1, phone_env))
        start_phones_sending(phone_processes)
        time.sleep(2)
        result["idle"] = probe.read(pid)

        _check(receiver.ask("join", users=warm), "warm-up")
        time.sleep(3)
        receiver.ask("leave", users=warm)
        time.sleep(SETTLE)
        result["after_warmup"] = probe.read(pid)

        joined = receiver.ask("join", users=streaming)
        _check(joined, "streaming")
        result["join_all_ms"] = joined["all_ms"]
        receiver.ask("arrivals")
        time.sleep(args.steady)
        arrivals = receiver.ask("arrivals")
        result["streaming_packets_received"] = sum(len(packets) for packets in arrivals.values())
        result["streaming"] = probe.read(pid)
        if target == "bridge":
            result["counters"] = receiver.ask("counters")
        receiver.ask("leave", users=streaming)
        time.sleep(SETTLE)
        result["after_leaving"] = probe.read(pid)

        cycle_pss = []
        for _ in range(args.cycles):
            _check(receiver.ask("join", users=churn), "churn")
            time.sleep(1.0)
            receiver.ask("leave", users=churn)
            receiver.ask("arrivals")  # the receiver's own record of packets is not the target's memory
            cycle_pss.append(probe.read(pid)["pss_kib"])
        time.sleep(SETTLE)
        result["after_churn"] = probe.read(pid)
        result["churn_pss_kib"] = cycle_pss
        half = cycle_pss[len(cycle_pss) // 2:]
        per_cycle, interval = slope(half)
        result["churn_kib_per_join"] = per_cycle / max(1, args.churn_users)
        result["churn_kib_per_join_ci95"] = interval / max(1, args.churn_users)
        result["churn_joins_fitted"] = len(half) * args.churn_users
    result["machine_idle"] = idle_share(idle_before, machine_idle())
    baseline = result["after_warmup"]["pss_kib"]
    result["per_streaming_user_kib"] = (result["streaming"]["pss_kib"] - baseline) / max(1, args.users)
    return result


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def _split(reading: dict[str, Any]) -> str:
    """main / workers: PSS (Python arenas, native anonymous, files) in MiB."""
    parts = []
    for process in reading["processes"]:
        name = "bridge" if process["role"] == "main" else "worker"
        parts.append(f"{name} {_mib(process['pss_kib'])} (py {_mib(process['python_arenas_kib'])}, "
                     f"native {_mib(process['native_kib'])}, files {_mib(process['file_kib'])}; malloc in use "
                     f"{_mib(process.get('malloc_in_use_kib', 0))}, free in its heaps "
                     f"{_mib(process.get('malloc_free_kib', 0))})")
    return "; ".join(parts)


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [f"# memory rung, {time.strftime('%Y-%m-%d')}", "", f"`{command}`, {os.cpu_count()} cores", "",
             "| target | idle share | idle MiB | after warm-up | N streaming | per streaming user KiB | "
             "after leaving | after churn | churn KiB/join (95 %) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['target']} ({r['started'][11:16]}) | {r['machine_idle']:.2f} | {_mib(r['idle']['pss_kib'])} | "
            f"{_mib(r['after_warmup']['pss_kib'])} | {_mib(r['streaming']['pss_kib'])} (N={r['users']}) | "
            f"{r['per_streaming_user_kib']:.0f} | {_mib(r['after_leaving']['pss_kib'])} | "
            f"{_mib(r['after_churn']['pss_kib'])} | {r['churn_kib_per_join']:.1f} ± "
            f"{r['churn_kib_per_join_ci95']:.1f} ({r['churn_joins_fitted']} joins) |")
    lines += ["", "Per process, MiB of PSS (py: Python's obmalloc arenas; native: the rest of the anonymous "
                  "memory; files: code and libraries; malloc: glibc's mallinfo2, in use and kept free):", ""]
    for r in results:
        for moment in ("idle", "streaming", "after_leaving", "after_churn"):
            lines.append(f"- {r['target']} {moment}: {_split(r[moment])}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20, help="streaming users (default 20)")
    parser.add_argument("--churn-users", type=int, default=10, help="users joining and leaving per cycle (10)")
    parser.add_argument("--cycles", type=int, default=30, help="churn cycles (default 30)")
    parser.add_argument("--steady", type=float, default=STEADY, help="seconds of streaming before the reading")
    parser.add_argument("--rounds", type=int, default=1, help="bridge and floor this many times, alternating order")
    parser.add_argument("--no-floor", action="store_true", help="the bridge alone")
    parser.add_argument("--bridge-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment for the bridge process, e.g. BRIDGE_SDK_WORKERS=0")
    parser.add_argument("--label", default="", help="a word for the result files' names")
    parser.add_argument("--quick", action="store_true", help="a 2-minute run: 10 users, 8 cycles of 5")
    args = parser.parse_args(argv)
    args.bridge_env = tuple(tuple(item.split("=", 1)) for item in args.bridge_env)
    if args.quick:
        args.users, args.churn_users, args.cycles, args.steady = 10, 5, 8, 3.0
    RESULTS.mkdir(exist_ok=True)
    base = RESULTS / f"memory{'-' + args.label if args.label else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    command = "python -m bench.memory " + " ".join(argv if argv is not None else sys.argv[1:])
    livekit = start_dev_livekit(pathlib.Path(tempfile.mkdtemp(prefix="bench-memory-")), udp_ports=(46000, 46999))
    results: list[dict[str, Any]] = []
    try:
        for index in range(args.rounds):
            order = ["bridge"] if args.no_floor else (["bridge", "floor"] if index % 2 == 0 else ["floor", "bridge"])
            for target in order:
                print(f"memory: {target}, round {index + 1}", flush=True)
                results.append(run_target(livekit, target, args, f"m{time.strftime('%H%M%S')}-{target[0]}{index}"))
                base.with_suffix(".json").write_text(json.dumps(results, indent=1))
                base.with_suffix(".md").write_text(markdown(results, command))
    finally:
        livekit.stop()
    print(base.with_suffix(".md").read_text(), flush=True)
    print(f"memory: results in {base}.json, .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
