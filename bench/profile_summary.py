"""The heaviest frames of a py-spy speedscope profile, per thread."""

from __future__ import annotations

import collections
import json
import pathlib
import shutil
import subprocess


def summarize(path: pathlib.Path, top: int = 20) -> str:
    """Per thread: its share of samples, then the frames with the most
    samples inclusive (on the stack) and self (at its top)."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    profiles = data["profiles"]
    total = sum(sum(profile["weights"]) for profile in profiles) or 1
    lines = []
    for profile in sorted(profiles, key=lambda p: -sum(p["weights"])):
        weight = sum(profile["weights"])
        if weight < 0.02 * total:
            continue
        inclusive: collections.Counter[str] = collections.Counter()
        own: collections.Counter[str] = collections.Counter()
        for stack, sample_weight in zip(profile["samples"], profile["weights"]):
            names = [f"{frames[i]['name']} ({pathlib.Path(frames[i].get('file', '?')).name}:{frames[i].get('line', '')})"
                     for i in stack]
            for name in set(names):
                inclusive[name] += sample_weight
            if names:
                own[names[-1]] += sample_weight
        lines.append(f"\n### {profile['name']}: {100 * weight / total:.1f} % of samples")
        lines.append("inclusive:")
        lines += [f"  {100 * w / weight:5.1f} %  {name}" for name, w in inclusive.most_common(top)]
        lines.append("self:")
        lines += [f"  {100 * w / weight:5.1f} %  {name}" for name, w in own.most_common(top)]
    return "\n".join(lines)


def perf_summary(path: pathlib.Path) -> str:
    """CPU samples of every thread by thread name and library (perf report),
    the view py-spy lacks: threads that never run Python."""
    if not path.exists() or not shutil.which("perf"):
        return "(no perf profile)"
    report = subprocess.run(["perf", "report", "-i", str(path), "--stdio", "--no-children", "--sort", "comm,dso",
                             "--percent-limit", "1", "-g", "none"], capture_output=True, text=True)
    return "\n".join(line for line in report.stdout.splitlines() if line.strip() and not line.startswith("#"))
