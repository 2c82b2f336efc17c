"""What shipping log lines to Better Stack costs, with shipping on against off
in the same run, in alternating windows.

    python -m bench.log_shipping [--blocks 2] [--window 10] [--rate 1000] [--case both]   (in `just bench`)

The ingest host is the tests' HTTPS ingest server (its own CA, trusted through
SSL_CERT_FILE; it checks the token, decodes each batch and answers 202) in a
process of its own (bench/ingest_process.py), so that its CPU is not counted
as the shipper's. Two cases:

1. Streaming. Two bridges, each its own process (`bridge_main.py serve`, as
   the ladder starts it) at LOG_LEVEL=debug, JSON lines on stderr (to a
   file), started the same way but for BETTERSTACK_SOURCE_TOKEN and
   BETTERSTACK_INGESTING_HOST: the first ships, the second does not. Each has
   its own cloud process and its own N users, joined once, with phones that
   stay in their rooms (bench/phones_process.py). In each window only one
   bridge's phones send their 100 ms packets; the other bridge's users are
   paused, so that bridge idles with its sessions held. Per window: the
   streaming users' latency phone -> cloud (the ladder's stamps), the active
   bridge's CPU (its process and SDK workers, /proc), the lines it wrote on
   stderr, the lines the ingest host received, the shipping bridge's drop
   and failure counters (/metrics) and the machine's idle share.
2. Synthetic, RATE lines a second. The bridge at DEBUG with N users
   streaming writes few lines a second, so the shipper's own cost (the sink,
   which runs in the thread that logs, and the Trio task that sends) is also
   measured at a known rate: in this process, a Trio task logs RATE lines a
   second through loguru, configured as the bridge's (flat JSON on stderr,
   here /dev/null), as lines about users (user_id and room bound); in
   alternating windows the real LogShipper (ship_logs) ships them to the
   ingest host, or not. Per window: the process's CPU per line, the Trio
   loop's lag (a task that sleeps 5 ms, timing how late it wakes), lines
   shipped, drops and failures.

Why two long-lived bridges and not one restarted per window: every window
then measures a steady state only (no start-up, joins or SDK workers starting
in it), so windows can be short and many; the bridge that idles costs both
conditions alike. The windows go ABBA ABBA..., so that a drift of the
machine's load over the run (other work on it) weighs on both conditions
alike. Compare a difference between the conditions with the spread between
the windows of one condition: that spread is the noise. Two processes can
still differ by themselves (bench/reports/log-shipping-2026-12-06.md, run B:
15 % more CPU in the one that had nothing to ship): compare runs too.

Results: bench/results/log-shipping-<time>.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from actors.livekit.dev_server import DevLiveKit, start_dev_livekit
from bench.ladder import (RESULTS, ROOT, Commanded, bridge_process, latencies, missing, pause_phones,
                          percentile, phones, start_phones_sending)
from bench.proc_stats import cpu_seconds, idle_share, machine_idle

#: Built, so that no source line shows it whole (the redaction looks for it too).
TOKEN = "-".join(["bench", "ingest", "token", "5e0b7a"])
#: The two conditions, in the order of a block of windows (ABBA).
ORDER = ("on", "off", "off", "on")
COUNTERS = ("bridge_log_lines_shipped_total", "bridge_log_lines_dropped_total", "bridge_log_batches_failed_total")


@dataclasses.dataclass
class Ingest:
    """The ingest host's process."""
    process: Commanded
    host: str
    ca_file: str

    def lines(self) -> int:
        return self.process.ask("count")["lines"]


@contextlib.contextmanager
def ingest_host(env: dict[str, str]) -> Iterator[Ingest]:
    process = Commanded([sys.executable, "ingest_process.py", TOKEN], env)
    try:
        where = process.ask("where")
        yield Ingest(process, where["host"], where["ca_file"])
    finally:
        process.stop()


def windows_in_order(blocks: int) -> list[str]:
    return [condition for _ in range(blocks) for condition in ORDER]


# -- 1. streaming --------------------------------------------------------------


@dataclasses.dataclass
class Bridge:
    """One condition's bridge, its cloud, its users and their phones."""
    condition: str
    pid: int
    metrics_port: int
    cloud: Commanded
    users: list[str]
    phones: list
    stderr: pathlib.Path
    _read: int = 0

    def json_lines_written(self) -> int:
        """JSON lines the bridge (and its SDK workers) wrote on stderr since the last call."""
        with self.stderr.open("rb") as file:
            file.seek(self._read)
            text = file.read()
        complete = text[:text.rfind(b"\n") + 1]
        self._read += len(complete)
        return sum(1 for line in complete.splitlines() if line.startswith(b"{"))


def counters(metrics_port: int) -> dict[str, float]:
    """The shipping counters of a bridge's /metrics, each summed over its labels."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    totals = dict.fromkeys(COUNTERS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


@contextlib.contextmanager
def streaming_bridges(livekit: DevLiveKit, ingest: Ingest, users: int, interval: float, workdir: pathlib.Path,
                      env: dict[str, str]) -> Iterator[dict[str, Bridge]]:
    shipping = {"BETTERSTACK_SOURCE_TOKEN": TOKEN, "BETTERSTACK_INGESTING_HOST": ingest.host}
    with contextlib.ExitStack() as stack:
        bridges = {}
        for condition in ("on", "off"):
            stderr_path = workdir / f"bridge-{condition}.stderr"
            stderr = stack.enter_context(stderr_path.open("wb"))
            extra = {"LOG_LEVEL": "debug", "LOG_FORMAT": "json", "BRIDGE_LOG_ENV": "bench",
                     "SSL_CERT_FILE": ingest.ca_file, **(shipping if condition == "on" else {})}
            process, address, metrics_port = stack.enter_context(bridge_process(livekit, env, extra, stderr=stderr))
            cloud = Commanded([sys.executable, "cloud_process.py", address], env)
            stack.callback(cloud.stop)
            names = [f"ship-{condition}-u{i}" for i in range(users)]
            phone_processes = stack.enter_context(phones(livekit, names, interval, env))
            joined = cloud.ask("join", users=names)
            if joined["failed"]:
                raise RuntimeError(f"the {condition} bridge's joins failed: {list(joined['failed'].items())[:3]}")
            bridges[condition] = Bridge(condition, process.pid, metrics_port, cloud, names, phone_processes,
                                        stderr_path)
        yield bridges


def streaming_window(bridge: Bridge, other: Bridge, shipper: Bridge, ingest: Ingest, window: float,
                     warmup: float) -> dict[str, Any]:
    """One window: ``bridge``'s users stream, ``other``'s are paused."""
    start_phones_sending(bridge.phones)
    time.sleep(warmup)
    bridge.cloud.ask("arrivals")  # forget the warm-up
    bridge.json_lines_written()
    ingest_before, counters_before = ingest.lines(), counters(shipper.metrics_port)
    cpu_before, other_before, idle_before = cpu_seconds(bridge.pid), cpu_seconds(other.pid), machine_idle()
    start = time.monotonic_ns()
    time.sleep(window)
    end = time.monotonic_ns()
    cpu_after, other_after, idle_after = cpu_seconds(bridge.pid), cpu_seconds(other.pid), machine_idle()
    seconds = (end - start) / 1e9
    written = bridge.json_lines_written()
    ingest_after, counters_after = ingest.lines(), counters(shipper.metrics_port)
    pause_phones(bridge.phones)
    arrivals = bridge.cloud.ask("arrivals")
    samples = latencies(arrivals, set(bridge.users), start, end)
    expected, lost = missing(arrivals, set(bridge.users), start, end)
    return {
        "condition": bridge.condition, "seconds": seconds, "packets": len(samples),
        "packets_expected": expected, "packets_missing": lost,
        "p50_ms": statistics.median(samples) if samples else None,
        "p99_ms": percentile(samples, 0.99) if samples else None,
        "samples_ms": samples,
        "cpu_ms_per_s": (cpu_after - cpu_before) * 1000 / seconds,
        "idle_bridge_cpu_ms_per_s": (other_after - other_before) * 1000 / seconds,
        "machine_idle": idle_share(idle_before, idle_after),
        "lines_written_per_s": written / seconds,
        "lines_received_per_s": (ingest_after - ingest_before) / seconds,
        **{name: counters_after[name] - counters_before[name] for name in COUNTERS},
    }


def streaming(livekit: DevLiveKit, ingest: Ingest, env: dict[str, str], users: int, interval: float,
              blocks: int, window: float, warmup: float) -> list[dict[str, Any]]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-log-shipping-"))
    with streaming_bridges(livekit, ingest, users, interval, workdir, env) as bridges:
        time.sleep(2)  # the joins' lines shipped
        results = []
        for index, condition in enumerate(windows_in_order(blocks)):
            other = bridges["off" if condition == "on" else "on"]
            result = streaming_window(bridges[condition], other, bridges["on"], ingest, window, warmup)
            print(f"streaming window {index + 1}: {_window_line(result)}", flush=True)
            results.append(result)
        results.append({"condition": "totals", **counters(bridges["on"].metrics_port)})
    return results


# -- 2. synthetic ----------------------------------------------------------------


async def synthetic_windows(ingest: Ingest, rate: int, blocks: int, window: float, warmup: float,
                            users: int) -> list[dict[str, Any]]:
    """In this process: RATE lines a second, shipped in the "on" windows (see the module's docstring)."""
    import trio
    from loguru import logger
    from prometheus_client import REGISTRY

    from actors.operations.log_setup import configure_logging
    from actors.operations.log_shipping import ship_logs
    from actors.operations.settings import BridgeSettings

    os.environ["SSL_CERT_FILE"] = ingest.ca_file
    settings = BridgeSettings(log_level="debug", log_format="json", log_env="bench",
                              betterstack_source_token=TOKEN, betterstack_ingesting_host=ingest.host)
    stderr = open(os.devnull, "w")  # noqa: SIM115 (open for the run)
    configure_logging(stderr, level="DEBUG", log_format="json", env="bench", secrets=settings.secret_values)
    speakers = [logger.bind(user_id=f"user-{i}", room=f"room-user-{i}", request_id=f"req-{i:04x}")
                for i in range(users)]
    logged = 0
    lags: list[float] = []

    def counter(name: str) -> float:
        return sum(sample.value for metric in REGISTRY.collect() for sample in metric.samples
                   if sample.name == name)

    async def log_lines() -> None:
        """RATE lines a second, in bursts every 10 ms."""
        nonlocal logged
        tick, per_tick = 0.01, rate // 100
        next_at = trio.current_time()
        while True:
            for _ in range(per_tick):
                speakers[logged % users].debug("user {}: packet {} of {} bytes forwarded to the cloud's stream",
                                               f"user-{logged % users}", logged, 3200)
                logged += 1
            next_at += tick
            await trio.sleep_until(next_at)

    async def probe_lag() -> None:
        while True:
            wake_at = trio.current_time() + 0.005
            await trio.sleep_until(wake_at)
            lags.append(trio.current_time() - wake_at)

    async def measure(condition: str) -> dict[str, Any]:
        await trio.sleep(warmup)
        lags.clear()
        lines_before, ingest_before = logged, ingest.lines()
        counters_before = {name: counter(name) for name in COUNTERS}
        cpu_before, idle_before, started = time.process_time(), machine_idle(), time.monotonic()
        ingest_cpu_before = cpu_seconds(ingest.process.process.pid)
        await trio.sleep(window)
        seconds = time.monotonic() - started
        cpu = time.process_time() - cpu_before
        ingest_cpu = cpu_seconds(ingest.process.process.pid) - ingest_cpu_before
        lines, idle = logged - lines_before, idle_share(idle_before, machine_idle())
        taken = sorted(lags)
        return {
            "condition": condition, "seconds": seconds, "lines_logged_per_s": lines / seconds,
            "cpu_ms_per_s": cpu * 1000 / seconds, "cpu_us_per_line": cpu * 1e6 / max(1, lines),
            "lag_p50_ms": statistics.median(taken) * 1000, "lag_p99_ms": percentile(taken, 0.99) * 1000,
            "lag_max_ms": taken[-1] * 1000, "machine_idle": idle,
            "ingest_cpu_ms_per_s": ingest_cpu * 1000 / seconds,
            # (the last lines of the window arrive in the next one's warm-up: these count the window's own)
            "lines_received_per_s": (ingest.lines() - ingest_before) / seconds,
            **{name: counter(name) - counters_before[name] for name in COUNTERS},
        }

    results = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log_lines)
        nursery.start_soon(probe_lag)
        for index, condition in enumerate(windows_in_order(blocks)):
            if condition == "on":
                async with ship_logs(settings):
                    result = await measure(condition)
            else:
                result = await measure(condition)
            print(f"synthetic window {index + 1}: {_window_line(result)}", flush=True)
            results.append(result)
        nursery.cancel_scope.cancel()
    logger.remove()
    stderr.close()
    return results


# -- the report ----------------------------------------------------------------------


def _window_line(result: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in result.items() if key != "samples_ms")


def _spread(values: list[float], fmt: str) -> str:
    """The median of the windows' values, and their range."""
    values = [value for value in values if value is not None]
    if not values:
        return "-"
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def streaming_table(results: list[dict[str, Any]], users: int, interval: float) -> str:
    lines = [f"Streaming: {users} users, {interval * 1000:.0f} ms packets, the bridge at LOG_LEVEL=debug. "
             "Each cell: the median of the condition's windows (their range); latency over all its windows' "
             "packets pooled, then per window.",
             "",
             "| shipping | windows | packets (missing) | p50 ms, pooled | p99 ms, pooled | p99 ms per window "
             "| bridge CPU ms/s per window | lines written/s | lines received by the host/s | dropped | "
             "batches failed | machine idle per window |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for condition in ("on", "off"):
        rows = [r for r in results if r["condition"] == condition]
        pooled = sorted(sample for r in rows for sample in r["samples_ms"])
        lines.append(
            f"| {condition} | {len(rows)} | {sum(r['packets'] for r in rows)} "
            f"({sum(r['packets_missing'] for r in rows)}) | "
            f"{statistics.median(pooled):.1f} | {percentile(pooled, 0.99):.1f} | "
            f"{_spread([r['p99_ms'] for r in rows], '{:.1f}')} | "
            f"{_spread([r['cpu_ms_per_s'] for r in rows], '{:.0f}')} | "
            f"{_spread([r['lines_written_per_s'] for r in rows], '{:.1f}')} | "
            f"{_spread([r['lines_received_per_s'] for r in rows], '{:.1f}')} | "
            f"{sum(r['bridge_log_lines_dropped_total'] for r in rows):.0f} | "
            f"{sum(r['bridge_log_batches_failed_total'] for r in rows):.0f} | "
            f"{_spread([r['machine_idle'] for r in rows], '{:.0%}')} |")
    totals = next((r for r in results if r["condition"] == "totals"), None)
    if totals:
        lines += ["", f"Over the whole run (start-up and joins included), the shipping bridge shipped "
                      f"{totals['bridge_log_lines_shipped_total']:.0f} lines, dropped "
                      f"{totals['bridge_log_lines_dropped_total']:.0f}; "
                      f"{totals['bridge_log_batches_failed_total']:.0f} requests failed."]
    return "\n".join(lines)


def synthetic_table(results: list[dict[str, Any]], rate: int) -> str:
    lines = [f"Synthetic: {rate} lines/s logged from the Trio loop, the real LogShipper shipping them (on) or not "
             "(off). Each cell: the median of the condition's windows (their range).",
             "",
             "| shipping | windows | lines logged/s | CPU ms/s | CPU µs per line | loop lag p50 ms | loop lag p99 ms "
             "| loop lag max ms | lines received by the host/s | dropped | batches failed | ingest host's CPU ms/s "
             "| machine idle |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for condition in ("on", "off"):
        rows = [r for r in results if r["condition"] == condition]
        lines.append(
            f"| {condition} | {len(rows)} | {_spread([r['lines_logged_per_s'] for r in rows], '{:.0f}')} | "
            f"{_spread([r['cpu_ms_per_s'] for r in rows], '{:.0f}')} | "
            f"{_spread([r['cpu_us_per_line'] for r in rows], '{:.0f}')} | "
            f"{_spread([r['lag_p50_ms'] for r in rows], '{:.2f}')} | "
            f"{_spread([r['lag_p99_ms'] for r in rows], '{:.2f}')} | "
            f"{_spread([r['lag_max_ms'] for r in rows], '{:.1f}')} | "
            f"{_spread([r['lines_received_per_s'] for r in rows], '{:.0f}')} | "
            f"{sum(r['bridge_log_lines_dropped_total'] for r in rows):.0f} | "
            f"{sum(r['bridge_log_batches_failed_total'] for r in rows):.0f} | "
            f"{_spread([r['ingest_cpu_ms_per_s'] for r in rows], '{:.0f}')} | "
            f"{_spread([r['machine_idle'] for r in rows], '{:.0%}')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.log_shipping", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20, help="streaming users per bridge (default 20)")
    parser.add_argument("--interval", type=float, default=0.1, help="the phones' packet interval (default 0.1 s)")
    parser.add_argument("--blocks", type=int, default=2,
                        help="blocks of four windows (on, off, off, on) per case (default 2)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured per window (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each window (default 2)")
    parser.add_argument("--rate", type=int, default=1000, help="the synthetic case's lines a second (default 1000)")
    parser.add_argument("--case", choices=("streaming", "synthetic", "both"), default="both")
    args = parser.parse_args(argv)
    import trio

    RESULTS.mkdir(exist_ok=True)
    base = RESULTS / f"log-shipping-{time.strftime('%Y%m%d-%H%M%S')}"
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-log-shipping-livekit-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    results: dict[str, Any] = {"command": " ".join(["python -m bench.log_shipping", *(argv or sys.argv[1:])])}
    tables = []
    with ingest_host(env) as ingest:
        if args.case in ("streaming", "both"):
            livekit = start_dev_livekit(workdir, udp_ports=(47000, 47999))
            try:
                env.update(LIVEKIT_URL=livekit.url, LIVEKIT_API_KEY=livekit.api_key,
                           LIVEKIT_API_SECRET=livekit.api_secret)
                results["streaming"] = streaming(livekit, ingest, env, args.users, args.interval, args.blocks,
                                                 args.window, args.warmup)
            finally:
                livekit.stop()
            tables.append(streaming_table(results["streaming"], args.users, args.interval))
        if args.case in ("synthetic", "both"):
            results["synthetic"] = trio.run(synthetic_windows, ingest, args.rate, args.blocks, args.window,
                                            args.warmup, args.users)
            tables.append(synthetic_table(results["synthetic"], args.rate))
    report = f"# Log shipping, on against off\n\n`{results['command']}`\n\n" + "\n\n".join(tables) + "\n"
    base.with_suffix(".json").write_text(json.dumps(results, indent=1))
    base.with_suffix(".md").write_text(report)
    print(report)
    print(f"results in {base}.json, .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
