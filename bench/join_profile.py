"""Where a burst of joins spends its CPU: `python -m bench.join_profile`.

N users, their phones already talking in their rooms, are joined at once by
the cloud's client (bench/cloud_process.py) to a bridge process that holds
nobody yet (a deploy). Two views of the burst, from its first JoinRoom to
its last answer:

- CPU by thread, per join, read from /proc (bench/proc_stats.py): the main
  thread (Python: ours, gRPC, the event loops, the SDK's Python side, the
  FFI callbacks) against the SDK's native threads (its tokio workers,
  libwebrtc's signaling, network and worker threads). With SDK worker
  processes (``--bridge-env BRIDGE_SDK_WORKERS=2``) their threads count too,
  prefixed "child/".
- py-spy of the bridge's main thread (not pausing it: Python frames only), each sample put
  under the library its innermost Python frame belongs to, and the bridge's
  own functions by the samples under them.

Writes bench/results/join-profile-<label>-<time>.md and prints it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from actors.livekit.dev_server import start_dev_livekit
from bench.ladder import HERE, RESULTS, Commanded, bridge_process, phones, start_phones_sending
from bench.proc_stats import cpu_by_thread, cpu_seconds, idle_share, machine_idle

#: Where a sample's innermost Python frame lives -> the part of the program it is.
LIBRARIES = [
    ("/actors/", "the bridge's own code"),
    ("/grpclib/", "gRPC (grpclib, h2, hpack)"), ("/h2/", "gRPC (grpclib, h2, hpack)"),
    ("/hpack/", "gRPC (grpclib, h2, hpack)"),
    ("/trio_asyncio/", "event loops (trio, trio-asyncio, asyncio)"), ("/trio/", "event loops (trio, trio-asyncio, asyncio)"),
    ("/asyncio/", "event loops (trio, trio-asyncio, asyncio)"), ("selectors.py", "event loops (trio, trio-asyncio, asyncio)"),
    ("/livekit/", "the livekit SDK's Python side"), ("/google/protobuf/", "protobuf (the SDK's FFI messages)"),
    ("/betterproto/", "betterproto (the contract's messages)"),
    ("/loguru/", "logging"), ("/logging/", "logging"), ("/prometheus_client/", "metrics"),
]


def part_of(frame: dict[str, Any]) -> str:
    path = frame.get("file", "") or ""
    for marker, part in LIBRARIES:
        if marker in path:
            return part
    return "other Python" if path.endswith(".py") else "native (the SDK's FFI, CPython itself)"


def main_thread_profile(path: pathlib.Path, bridge_pid: int) -> tuple[collections.Counter, collections.Counter, int]:
    """(samples by part, samples under each of our functions, all samples) of
    the bridge process's main thread."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    parts: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    total = 0
    for profile in data["profiles"]:
        # py-spy names a thread's profile "Process <pid> Thread <id> "MainThread"".
        if f"Process {bridge_pid} " not in profile["name"] or "MainThread" not in profile["name"]:
            continue
        for stack, weight in zip(profile["samples"], profile["weights"]):
            total += weight
            python = [frames[i] for i in stack if (frames[i].get("file") or "").endswith(".py")]
            innermost = python[-1] if python else (frames[stack[-1]] if stack else {})
            parts[part_of(innermost)] += weight
            for name in {f"{f['name']} ({pathlib.Path(f['file']).name})" for f in python if "/actors/" in f["file"]}:
                ours[name] += weight
    return parts, ours, total


def run(users: int, bridge_env: dict[str, str], label: str) -> str:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bridge-join-profile-"))
    livekit = start_dev_livekit(workdir, udp_ports=(46000, 46999))
    names = [f"profile-{n}" for n in range(users)]
    env = dict(os.environ, LIVEKIT_URL=livekit.url, LIVEKIT_API_KEY=livekit.api_key,
               LIVEKIT_API_SECRET=livekit.api_secret, PYTHONPATH=str(HERE.parent))
    spy_output = workdir / "joins.speedscope.json"
    try:
        with bridge_process(livekit, env, bridge_env) as (process, address, _), \
                phones(livekit, names, 0.1, env) as phone_processes:
            receiver = Commanded([sys.executable, "cloud_process.py", address], env)
            try:
                start_phones_sending(phone_processes)
                time.sleep(2)
                spy = subprocess.Popen(
                    [str(pathlib.Path(sys.executable).parent / "py-spy"), "record", "--pid", str(process.pid),
                     "--threads", "--subprocesses", "--nonblocking", "--rate", "250", "--format", "speedscope",
                     "--output", str(spy_output)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # py-spy attaches
                threads_before, cpu_before, idle_before = cpu_by_thread(process.pid), cpu_seconds(process.pid), \
                    machine_idle()
                joined = receiver.ask("join", users=names)
                threads_after, cpu_after, idle_after = cpu_by_thread(process.pid), cpu_seconds(process.pid), \
                    machine_idle()
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            finally:
                receiver.stop()
    finally:
        livekit.stop()
    idle = idle_share(idle_before, idle_after)
    lines = [f"# A burst of {users} joins ({label}; bridge env: {bridge_env or 'defaults'})", "",
             f"- all joined in {joined['all_ms']:.0f} ms, {len(joined['failed'])} failed; machine idle {100 * idle:.0f} %",
             f"- bridge CPU {1000 * (cpu_after - cpu_before) / users:.0f} ms per join "
             f"({cpu_after - cpu_before:.2f} s in all)", "", "| thread | CPU ms per join |", "|---|---|"]
    spent = {name: seconds - threads_before.get(name, 0.0) for name, seconds in threads_after.items()}
    for name, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        if seconds * 1000 / users >= 0.5:
            lines.append(f"| {name} | {seconds * 1000 / users:.1f} |")
    if spy_output.exists():
        parts, ours, total = main_thread_profile(spy_output, process.pid)
        lines += ["", f"The main thread, by where its innermost Python frame lives ({total:.1f} s of samples at 250 Hz):", "",
                  "| part | share of the main thread |", "|---|---|"]
        lines += [f"| {part} | {100 * weight / max(1, total):.1f} % |" for part, weight in parts.most_common()]
        lines += ["", "The bridge's own functions, by the samples under them (inclusive):", "",
                  "| function | share of the main thread |", "|---|---|"]
        lines += [f"| {name} | {100 * weight / max(1, total):.1f} % |" for name, weight in ours.most_common(15)]
    else:
        lines.append("\n(py-spy wrote no profile)")
    report = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"join-profile-{label}-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(report + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--bridge-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--label", default="bridge")
    args = parser.parse_args(argv)
    bridge_env = dict(item.split("=", 1) for item in args.bridge_env)
    print(run(args.users, bridge_env, args.label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
