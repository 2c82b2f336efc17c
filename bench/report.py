"""The ladder's results as a Markdown table and a PNG plot."""

from __future__ import annotations

import pathlib
from typing import Any


STAGES = ("ffi_to_trio", "worker_hop", "queued", "grpc_write", "to_kernel")


def _cells(results: dict[str, dict], targets: list[str], key: str, sub: str | None = None,
           fmt: str = "{:.1f}") -> str:
    def one(result: dict | None) -> str:
        if result is None or key not in result:
            return "-"
        value = result[key] if sub is None else result[key].get(sub)
        return "-" if value is None else fmt.format(value)
    return " / ".join(one(results.get(target)) for target in targets)


def stage_sum(result: dict, window: str, quantile: str = "p50") -> float:
    """The bridge's stages' ``quantile`` (ms), summed: what the bridge says it adds to a packet."""
    return sum(stage.get(quantile, 0.0) for stage in result.get(f"stages_{window}_ms", {}).values())


def markdown(results: list[dict[str, Any]], title: str) -> str:
    """One column per N; each cell lists the targets measured, in the order the header says."""
    by_n: dict[int, dict[str, dict]] = {}
    targets: list[str] = []
    for result in results:
        by_n.setdefault(result["users"], {})[result["target"]] = result
        if result["target"] not in targets:
            targets.append(result["target"])
    clouds = sorted({r["cloud"] for r in results if "cloud" in r})
    rows = [
        ("CPU ms per session-second", "cpu_ms_per_session_second", None, "{:.1f}"),
        ("RSS MiB per session", "rss_mib_per_session", None, "{:.2f}"),
        ("steady latency p50 ms", "steady_latency_ms", "p50", "{:.1f}"),
        ("steady latency p90 ms", "steady_latency_ms", "p90", "{:.1f}"),
        ("steady latency p99 ms", "steady_latency_ms", "p99", "{:.1f}"),
        ("steady latency max ms", "steady_latency_ms", "max", "{:.0f}"),
        ("storm: streaming users' p50 ms", "storm_latency_ms", "p50", "{:.1f}"),
        ("storm: streaming users' p99 ms", "storm_latency_ms", "p99", "{:.0f}"),
        ("storm: streaming users' max ms", "storm_latency_ms", "max", "{:.0f}"),
        ("deploy (N join an idle bridge at once): all done ms", "join_all_ms", None, "{:.0f}"),
        ("deploy: joins per second", "deploy_joins_per_second", None, "{:.1f}"),
        ("deploy: CPU ms per join", "deploy_cpu_ms_per_join", None, "{:.0f}"),
        ("storm (N more join while N stream): all done ms", "storm_all_ms", None, "{:.0f}"),
        ("storm: CPU ms per join", "storm_cpu_ms_per_join", None, "{:.0f}"),
        ("packets missing / expected", "packets_missing", None, "{:d}"),
        # Near 0 %, the load generator saturates the machine: what is measured is the machine.
        ("machine idle during the deploy", "machine_idle_deploy", None, "{:.0%}"),
        ("machine idle in the steady window", "machine_idle_steady", None, "{:.0%}"),
        ("machine idle during the storm", "machine_idle_storm", None, "{:.0%}"),
    ]
    ns = sorted(by_n)
    lines = [f"## {title}", "", f"Each cell: {' / '.join(targets)}. Latency: phone send -> "
             f"the cloud client's data callback ({', '.join(clouds) or 'no'} cloud client) for the bridge and "
             "the gRPC floor (the bare SDK forwarding over a minimal grpclib stream), the data callback for "
             "the floor.", "",
             "| | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for label, key, sub, fmt in rows:
        cells = [_cells(by_n[n], targets, key, sub, fmt) for n in ns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for bridge in (t for t in targets if t.startswith("bridge")):
        lines += ["", f"{bridge} only:", "", "| | " + " | ".join(f"N={n}" for n in ns) + " |",
                  "|---|" + "---|" * len(ns)]
        bridge_rows = [
            ("packets: expected / missing / LiveKit lost / bridge dropped",
             lambda r: f"{r['packets_expected']} / {r['packets_missing']} / {r['livekit_lost']} / {r['bridge_dropped']}"),
            ("JoinRoom failures: N at once / storm", lambda r: f"{r['join_failed']} / {r['storm_failed']}"),
            ("JoinRoom p50 / p99 ms (N at once)", lambda r: f"{r['join_ms']['p50']:.0f} / {r['join_ms']['p99']:.0f}"),
            ("replace p50 / p99 ms", lambda r: f"{r['replace_ms']['p50']:.0f} / {r['replace_ms']['p99']:.0f}"),
            ("LeaveRoom p50 / p99 ms", lambda r: f"{r['leave_ms']['p50']:.0f} / {r['leave_ms']['p99']:.0f}"),
        ]
        for stage in STAGES:
            for window in ("steady", "storm"):
                bridge_rows.append((f"stage {stage}, {window}: p50 / p99 ms",
                                    lambda r, s=stage, w=window: "{} / {}".format(
                                        r[f"stages_{w}_ms"].get(s, {}).get("p50", "-"),
                                        r[f"stages_{w}_ms"].get(s, {}).get("p99", "-"))))
        if "floor" in targets:
            # What the stages account for: the bridge's p50 less the floor's, beside the stages' p50s summed.
            bridge_rows.append(("steady p50 less the floor's / stages' p50 summed, ms", lambda r: "{:.2f} / {:.2f}".format(
                r["steady_latency_ms"]["p50"] - by_n[r["users"]]["floor"]["steady_latency_ms"].get("p50", float("nan")),
                stage_sum(r, "steady")) if "floor" in by_n[r["users"]] else "-"))
        broken = {n: by_n[n][bridge]["broke"] for n in ns if "broke" in by_n[n].get(bridge, {})}
        for label, cell in bridge_rows:
            cells = [cell(by_n[n][bridge]) if bridge in by_n[n] and n not in broken else "-" for n in ns]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for n, why in sorted(broken.items()):
            lines += ["", f"{bridge} broke at N={n}: {why}"]
    lines += ["", "CPU ms per session-second by thread:", ""]
    for n in ns:
        parts = []
        for target in targets:
            threads = by_n[n].get(target, {}).get("cpu_ms_per_session_second_by_thread", {})
            parts.append(f"{target}: " + ", ".join(f"{name.strip()} {ms:.1f}" for name, ms in
                                                    sorted(threads.items(), key=lambda kv: -kv[1]) if ms >= 0.1))
        lines.append(f"- N={n}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: pathlib.Path, title: str) -> None:
    """p99 latency (steady and storm) and CPU per session against N, bridge beside floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency_axes, cpu_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = iter(("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:gray"))
    for target in dict.fromkeys(r["target"] for r in results):
        colour = next(colours, "black")
        rows = sorted((r for r in results if r["target"] == target and "broke" not in r), key=lambda r: r["users"])
        if not rows:
            continue
        ns = [r["users"] for r in rows]
        latency_axes.plot(ns, [r["steady_latency_ms"].get("p99", float("nan")) for r in rows], "o-", color=colour,
                          label=f"{target}: steady p99")
        latency_axes.plot(ns, [r["storm_latency_ms"].get("p99", float("nan")) for r in rows], "s--", color=colour,
                          label=f"{target}: during join storm p99")
        cpu_axes.plot(ns, [r["cpu_ms_per_session_second"] for r in rows], "o-", color=colour, label=target)
    latency_axes.set(xlabel="users (N streaming; N more join in the storm)", ylabel="phone -> receiver ms",
                     yscale="log", title="latency p99")
    cpu_axes.set(xlabel="users streaming", ylabel="CPU ms per session-second", title="CPU per session")
    cpu_axes.set_ylim(bottom=0)
    for axes in (latency_axes, cpu_axes):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
