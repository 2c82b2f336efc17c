"""The load ladder: the bridge as deployed, beside its floors, at N users.

For each N, on the same livekit-server, one rung for each target (targets_of):
the bridge on each of its listeners (its own process, `bridge_main.py serve`,
fed by the cloud's own grpc-js client, bench/node_cloud_process.mjs, on one
HTTP/2 connection; bench/cloud_process.py where Node is missing), the gRPC
floor on each listener (bench/grpc_floor_process.py: the bare SDK forwarding
each packet over a minimal grpclib stream to the same client, so the gRPC
leg's own cost is known), and the floor (bench/floor_process.py, the bare SDK
joining the same rooms and only receiving). Phones run in processes of their
own (bench/phones_process.py, at most PHONES_PER_PROCESS each), one for each
of the N streaming users, all sending from the start. One rung:

1. N users join at once (the "A" users): the deploy, every user new to an idle
   bridge: how long until all are joined, joins per second, CPU per join;
2. a warm-up, then the steady window: latency of A's packets, CPU of the
   bridge (or floor) process from its /proc, per thread, and its RSS;
3. the storm: the other N users ("B") join at once while A stream; A's
   latency in the STORM_WINDOW seconds after it began, and how long it took;
4. (bridge) replacing and leaving users one at a time: JoinRoom and LeaveRoom latency;
5. loss: packets missing at the receiver by the phones' 16-bit counters, and
   for the bridge, what LiveKit lost (the bridge's sequence-gap counter) apart
   from what the bridge dropped.

Latency is phone send -> receiver, from a CLOCK_MONOTONIC stamp in the PCM
(the bridge forwards the payload untouched). The bridge's per-stage times come
from its Prometheus histograms (bridge_mic_stage_seconds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from actors.livekit.dev_server import DevLiveKit, free_port, start_dev_livekit
from bench.proc_stats import cpu_by_thread, cpu_seconds, idle_share, machine_idle, rss_bytes
from bench.report import markdown, plot

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
PHONES_PER_PROCESS = 25


@dataclasses.dataclass(frozen=True)
class RungPlan:
    users: int
    interval: float = 0.1      # phone packet interval (0.1 = the app's 100 ms packets)
    warmup: float = 3.0
    steady: float = 10.0
    storm_window: float = 3.0
    replacements: int = 20
    #: Extra environment for the bridge (e.g. BRIDGE_MAX_CONCURRENT_CONNECTS).
    bridge_env: tuple[tuple[str, str], ...] = ()
    #: Where py-spy writes a profile of the bridge's steady window (speedscope JSON); None: no profile.
    profile: pathlib.Path | None = None
    #: The bridge's listeners measured, each in a rung of its own: "tcp", "unix".
    listeners: tuple[str, ...] = ("tcp",)
    #: The cloud client: "node" (the cloud's own grpc-js, bench/node_cloud_process.mjs) or "python" (grpclib).
    cloud: str = "node"
    #: Also run the gRPC floor (bench/grpc_floor_process.py) on each listener.
    grpc_floor: bool = True


def cloud_command(plan: RungPlan, address: str) -> list[str]:
    """The cloud client process for ``address``: the cloud's own grpc-js where Node and its
    packages are installed (`just setup`), else the Python stand-in."""
    if plan.cloud == "node" and shutil.which("node") and (ROOT / "tests" / "node_cloud" / "node_modules").is_dir():
        return ["node", str(HERE / "node_cloud_process.mjs"), address]
    return [sys.executable, "cloud_process.py", address]


@contextlib.contextmanager
def grpc_floor_process(env: dict[str, str], unix_socket: str | None) -> Iterator[tuple[subprocess.Popen, str]]:
    """The gRPC floor (bench/grpc_floor_process.py) listening on TCP or ``unix_socket``: (process, address)."""
    address = f"unix:{unix_socket}" if unix_socket else f"127.0.0.1:{free_port()}"
    process = subprocess.Popen([sys.executable, "grpc_floor_process.py", address], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, env=env, text=True, cwd=HERE)
    try:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the gRPC floor did not start")
        yield process, address
    finally:
        with contextlib.suppress(Exception):
            process.stdin.close()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def targets_of(plan: RungPlan, floor: bool) -> list[str]:
    """The rungs run for ``plan``: the bridge and the gRPC floor on each listener, then the floor."""
    targets = [f"bridge-{listener}" for listener in plan.listeners]
    if plan.grpc_floor:
        targets += [f"grpc-floor-{listener}" for listener in plan.listeners]
    return targets + (["floor"] if floor else [])


class Commanded:
    """A receiver process driven by JSON lines (bench/receiver_commands.py)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
                                        cwd=HERE)
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.process.args[1]} exited before it was ready")

    def ask(self, op: str, **fields: Any) -> Any:
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.process.args[1]} exited while asked {op!r}")
        answer = json.loads(line)
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"{self.process.args[1]} failed {op!r}: {answer['error']}")
        return answer

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.process.stdin.write('{"op": "quit"}\n')
            self.process.stdin.close()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def phones(livekit: DevLiveKit, users: list[str], interval: float, env: dict[str, str]) -> Iterator[list[subprocess.Popen]]:
    groups = [users[i:i + PHONES_PER_PROCESS] for i in range(0, len(users), PHONES_PER_PROCESS)]
    processes = [subprocess.Popen([sys.executable, "phones_process.py", livekit.url, str(interval), *group],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, cwd=HERE)
                 for group in groups]
    try:
        for process in processes:
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("a phones process failed to join its rooms")
        yield processes
    finally:
        for process in processes:
            with contextlib.suppress(Exception):
                process.stdin.close()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def start_phones_sending(processes: list[subprocess.Popen]) -> None:
    """The phones send (again, after pause_phones)."""
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()


def pause_phones(processes: list[subprocess.Popen]) -> None:
    """The phones stop sending (within one packet interval) and stay in their rooms."""
    for process in processes:
        process.stdin.write("pause\n")
        process.stdin.flush()


@contextlib.contextmanager
def bridge_process(livekit: DevLiveKit, env: dict[str, str], extra: dict[str, str],
                   unix_socket: str | None = None, stderr: Any = None
                   ) -> Iterator[tuple[subprocess.Popen, str, int]]:
    """The bridge as deployed (`bridge_main.py serve`) at WARNING (LOG_LEVEL in ``extra`` wins), listening on
    TCP, or on ``unix_socket`` when given, its log lines to ``stderr`` (a file; None: this process's):
    (process, its address, its metrics port)."""
    port, metrics_port = free_port(), free_port()
    bridge_env = dict(env, PORT=str(port), BRIDGE_HOST="127.0.0.1", METRICS_PORT=str(metrics_port),
                      BRIDGE_LOG_LEVEL="WARNING", BRIDGE_IDLE_SESSION_TTL="600", **extra)
    if unix_socket:
        bridge_env["LIVEKIT_GRPC_SOCKET"] = unix_socket
    family, target = (socket.AF_UNIX, unix_socket) if unix_socket else (socket.AF_INET, ("127.0.0.1", port))
    process = subprocess.Popen([sys.executable, str(ROOT / "bridge_main.py"), "serve"], env=bridge_env, cwd=ROOT,
                               stderr=stderr)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(1)
                probe.connect(target)
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bridge did not start listening")
            time.sleep(0.1)
        yield process, f"unix:{unix_socket}" if unix_socket else f"127.0.0.1:{port}", metrics_port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def profiled(pid: int, output: pathlib.Path | None, seconds: float) -> Iterator[None]:
    """While the block runs, py-spy samples ``pid``'s threads that run Python
    (Python and native frames) into ``output``, and, where perf is installed,
    perf samples every thread (software clock) into ``output`` + ".perf"."""
    if output is None:
        yield
        return
    profilers = [subprocess.Popen(
        [str(pathlib.Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--native",
         "--threads", "--rate", "200", "--duration", str(int(seconds)), "--format", "speedscope",
         "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    if shutil.which("perf"):
        profilers.append(subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-p", str(pid), "-o", f"{output}.perf",
             "--", "sleep", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        yield
    finally:
        for profiler in profilers:
            profiler.wait(timeout=seconds + 60)


def histogram_buckets(metrics_port: int, family_name: str = "bridge_mic_stage_seconds",
                      by: str = "stage") -> dict[str, list[tuple[float, float]]]:
    """One of the bridge's Prometheus histograms, scraped from /metrics: the
    value of label ``by`` -> [(upper bound s, cumulative count)], summed over
    its other labels (e.g. bridge_rpc_seconds by method, over codes)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    series: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != family_name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets = series.setdefault(sample.labels[by], {})
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return {name: sorted(buckets.items()) for name, buckets in series.items()}


def stage_buckets(metrics_port: int) -> dict[str, list[tuple[float, float]]]:
    """The bridge's mic stage histograms: stage -> [(upper bound s, cumulative count)]."""
    return histogram_buckets(metrics_port)


def stage_quantiles(before: dict, after: dict,
                    quantiles: tuple[tuple[str, float], ...] = (("p50", 0.5), ("p99", 0.99)),
                    ) -> dict[str, dict[str, float]]:
    """Each series' ``quantiles`` (ms) between two scrapes (histogram_buckets),
    interpolated linearly inside the bucket that holds them, as Prometheus'
    histogram_quantile does; series without observations are left out."""
    result = {}
    for stage, buckets in after.items():
        earlier = dict(before.get(stage, []))
        deltas = [(bound, count - earlier.get(bound, 0.0)) for bound, count in buckets]
        total = deltas[-1][1] if deltas else 0
        if not total:
            continue
        bounds = {}
        for name, q in quantiles:
            rank = q * total
            lower, below = 0.0, 0.0
            for bound, count in deltas:
                if count >= rank:
                    break
                lower, below = bound, count
            if not math.isfinite(bound):
                bounds[name] = lower * 1000  # past the last bound: at least that
            else:
                bounds[name] = round((lower + (bound - lower) * (rank - below) / max(1e-9, count - below)) * 1000, 3)
        bounds["n"] = total
        result[stage] = bounds
    return result


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * q) - 1))]


def latency_summary(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    return {"n": len(samples), "p50": statistics.median(samples), "p90": percentile(samples, 0.9),
            "p99": percentile(samples, 0.99), "max": max(samples)}


def latencies(arrivals: dict[str, list], users: set[str], start_ns: int, end_ns: int) -> list[float]:
    return [(received - sent) / 1e6 for user in users for sent, received, _ in arrivals.get(user, [])
            if start_ns <= sent < end_ns]


def missing(arrivals: dict[str, list], users: set[str], start_ns: int, end_ns: int) -> tuple[int, int]:
    """(packets expected, packets missing) of ``users`` sent in the window, by their counters."""
    expected = lost = 0
    for user in users:
        counters = sorted({counter for sent, _, counter in arrivals.get(user, []) if start_ns <= sent < end_ns})
        if len(counters) < 2:
            continue
        span = counters[-1] - counters[0] + 1
        expected += span
        lost += span - len(counters)
    return expected, lost


def run_rung(livekit: DevLiveKit, target: str, plan: RungPlan, tag: str) -> dict[str, Any]:
    """One rung of the ladder for ``target`` ("bridge-tcp", "bridge-unix", "grpc-floor-tcp",
    "grpc-floor-unix" or "floor"; see targets_of)."""
    n = plan.users
    group_a = [f"{tag}-{target}-a{i}" for i in range(n)]
    group_b = [f"{tag}-{target}-b{i}" for i in range(n)]
    env = dict(os.environ, LIVEKIT_URL=livekit.url, LIVEKIT_API_KEY=livekit.api_key,
               LIVEKIT_API_SECRET=livekit.api_secret, PYTHONPATH=str(ROOT))
    result: dict[str, Any] = {"target": target, "users": n, "interval_ms": plan.interval * 1000}
    kind, _, listener = target.rpartition("-") if target != "floor" else ("floor", "", "")
    with contextlib.ExitStack() as stack:
        unix_socket = (str(pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory())) / "bridge.sock")
                       if listener == "unix" else None)
        if kind == "bridge":
            process, address, metrics_port = stack.enter_context(
                bridge_process(livekit, env, dict(plan.bridge_env), unix_socket))
        elif kind == "grpc-floor":
            (process, address), metrics_port = stack.enter_context(grpc_floor_process(env, unix_socket)), None
        if kind == "floor":
            receiver = Commanded([sys.executable, "floor_process.py"], env)
            process, metrics_port = receiver.process, None
        else:
            receiver = Commanded(cloud_command(plan, address), env)
            result["cloud"] = "node" if receiver.process.args[0] == "node" else "python"
        stack.callback(receiver.stop)
        pid = process.pid
        time.sleep(1)
        rss_idle = rss_bytes(pid)
        # Phones for the streaming users only: the storm's users join empty rooms, so
        # that the load generator leaves the two cores to what is measured.
        phone_processes = stack.enter_context(phones(livekit, group_a, plan.interval, env))
        start_phones_sending(phone_processes)

        cpu_before_joins, idle_before_joins = cpu_seconds(pid), machine_idle()
        joined = receiver.ask("join", users=group_a)
        result["machine_idle_deploy"] = idle_share(idle_before_joins, machine_idle())
        result["join_all_ms"] = joined["all_ms"]
        # The deploy: every user new to an idle bridge at once.
        result["deploy_joins_per_second"] = n / max(1e-9, joined["all_ms"] / 1000)
        result["deploy_cpu_ms_per_join"] = (cpu_seconds(pid) - cpu_before_joins) * 1000 / n
        result["join_ms"] = latency_summary(joined["ms"])
        result["join_failed"] = len(joined["failed"])
        time.sleep(plan.warmup)
        receiver.ask("arrivals")  # forget the warm-up

        stages_before = stage_buckets(metrics_port) if metrics_port else {}
        threads_before, cpu_before, idle_before = cpu_by_thread(pid), cpu_seconds(pid), machine_idle()
        steady_start = time.monotonic_ns()
        with profiled(pid, plan.profile if kind == "bridge" else None, plan.steady):
            time.sleep(plan.steady)
        steady_end = time.monotonic_ns()
        threads_after, cpu_after = cpu_by_thread(pid), cpu_seconds(pid)
        result["machine_idle_steady"] = idle_share(idle_before, machine_idle())
        stages_steady = stage_buckets(metrics_port) if metrics_port else {}
        session_seconds = n * (steady_end - steady_start) / 1e9
        result["cpu_ms_per_session_second"] = (cpu_after - cpu_before) * 1000 / session_seconds
        result["cpu_ms_per_session_second_by_thread"] = {
            name: round((seconds - threads_before.get(name, 0.0)) * 1000 / session_seconds, 3)
            for name, seconds in sorted(threads_after.items()) if seconds - threads_before.get(name, 0.0) > 0}
        rss = rss_bytes(pid)
        result["rss_mib"] = rss / 2**20
        result["rss_mib_per_session"] = (rss - rss_idle) / 2**20 / n

        storm_start, cpu_before_storm, idle_before_storm = time.monotonic_ns(), cpu_seconds(pid), machine_idle()
        stormed = receiver.ask("join", users=group_b)
        result["machine_idle_storm"] = idle_share(idle_before_storm, machine_idle())
        # Less what streaming the N users costs meanwhile, as measured in the steady window.
        streaming_rate = (cpu_after - cpu_before) / ((steady_end - steady_start) / 1e9)
        streaming = streaming_rate * (time.monotonic_ns() - storm_start) / 1e9
        result["storm_cpu_ms_per_join"] = (cpu_seconds(pid) - cpu_before_storm - streaming) * 1000 / n
        result["storm_all_ms"] = stormed["all_ms"]
        result["storm_join_ms"] = latency_summary(stormed["ms"])
        result["storm_failed"] = len(stormed["failed"])
        storm_end = storm_start + int(plan.storm_window * 1e9)
        time.sleep(max(0.0, (storm_end - time.monotonic_ns()) / 1e9) + 1.0)
        stages_storm = stage_buckets(metrics_port) if metrics_port else {}

        arrivals: dict[str, list] = receiver.ask("arrivals")
        set_a = set(group_a)
        result["steady_latency_ms"] = latency_summary(latencies(arrivals, set_a, steady_start, steady_end))
        result["storm_latency_ms"] = latency_summary(latencies(arrivals, set_a, storm_start, storm_end))
        expected, lost = missing(arrivals, set_a, steady_start, storm_end)
        result["packets_expected"], result["packets_missing"] = expected, lost
        if kind == "bridge":
            result["stages_steady_ms"] = stage_quantiles(stages_before, stages_steady)
            result["stages_storm_ms"] = stage_quantiles(stages_steady, stages_storm)
            counters = receiver.ask("counters")
            result["livekit_lost"] = counters.get("mic_packets_lost", 0)
            result["bridge_dropped"] = counters.get("mic_buffer_dropped", 0)
            result["bridge_received"] = counters.get("mic_packets_received", 0)
            sample = group_a[:plan.replacements]
            replaced = receiver.ask("replace", users=sample)
            result["replace_ms"] = latency_summary(replaced["ms"])
            result["replace_failed"] = len(replaced["failed"])
            result["leave_ms"] = latency_summary(receiver.ask("leave", users=group_b[:plan.replacements])["ms"])
    return result


RESULTS = HERE / "results"
#: A floor whose steady p99 is past this has collapsed (python-sdks issue 812: every
#: event to every room); larger N would only take minutes to say so again.
FLOOR_GIVES_UP_MS = 2000


def holds(result: dict[str, Any]) -> bool:
    """The bridge still works at this load: every join succeeded, nothing
    much was lost, and steady latency stays under half a second."""
    return ("broke" not in result and not result["join_failed"] and not result["storm_failed"]
            and result["packets_missing"] <= 0.05 * max(1, result["packets_expected"])
            and result["steady_latency_ms"].get("p99", float("inf")) < 500)


def ladder(plans: list[RungPlan], *, floor: bool, until_it_breaks: int, label: str,
           floor_max_users: int | None = None) -> list[dict[str, Any]]:
    """Run the rungs (bridge, then floor, for each plan), then more rungs of
    100 ms packets in steps of 50 up to ``until_it_breaks`` users while the
    bridge holds; write the results under bench/results/ as they come."""
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = RESULTS / f"{label}-{stamp}"
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bridge-ladder-"))
    livekit = start_dev_livekit(workdir, udp_ports=(45000, 45999))
    results: list[dict[str, Any]] = []
    plans = list(plans)
    try:
        index = 0
        #: Packet interval -> the N at which the floor stopped keeping up; it is not run above it.
        floor_broke_at: dict[float, int] = {}
        while index < len(plans):
            plan = plans[index]
            targets = targets_of(plan, floor and plan.users <= min(floor_broke_at.get(plan.interval, plan.users),
                                                                   floor_max_users or plan.users))
            for target in targets:
                print(f"ladder: {target}, N={plan.users}, packets every {plan.interval * 1000:.0f} ms", flush=True)
                try:
                    result = run_rung(livekit, target, plan, f"{stamp[-6:]}-{index}")
                except RuntimeError as error:  # a receiver gave up: this is where it breaks
                    print(f"ladder: {target} broke at N={plan.users}: {error}", flush=True)
                    result = {"target": target, "users": plan.users, "interval_ms": plan.interval * 1000,
                              "broke": str(error)}
                results.append(result)
                _write(results, base, label)
                if target == "floor" and ("broke" in result or
                                          result["steady_latency_ms"].get("p99", float("inf")) > FLOOR_GIVES_UP_MS):
                    floor_broke_at.setdefault(plan.interval, plan.users)
                    print(f"ladder: the floor no longer keeps up at N={plan.users}; not run above it", flush=True)
            bridge_result = next(r for r in reversed(results) if r["target"].startswith("bridge"))
            largest = max(p.users for p in plans if p.interval == plan.interval)
            if plan.users == largest and plan.users + 50 <= until_it_breaks and holds(bridge_result):
                plans.insert(index + 1, dataclasses.replace(plan, users=plan.users + 50))
            index += 1
    finally:
        livekit.stop()
    print(f"ladder: results in {base}.json, .md, .png", flush=True)
    for table in _write(results, base, label):
        print(table.read_text(), flush=True)
    return results


def _write(results: list[dict[str, Any]], base: pathlib.Path, label: str) -> list[pathlib.Path]:
    """Write the results as JSON, and a Markdown table and a plot for each
    packet interval; returns the tables' paths."""
    base.with_suffix(".json").write_text(json.dumps(results, indent=1))
    tables = []
    for interval in sorted({r["interval_ms"] for r in results}):
        rows = [r for r in results if r["interval_ms"] == interval]
        suffix = "" if interval == 100 else f"-{interval:.0f}ms"
        title = f"{label}: packets every {interval:.0f} ms"
        table = base.parent / f"{base.name}{suffix}.md"
        table.write_text(markdown(rows, title))
        plot(rows, base.parent / f"{base.name}{suffix}.png", title)
        tables.append(table)
    return tables
