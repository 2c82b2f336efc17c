"""What each import costs a fresh process: wall time and PSS (all, anonymous, file-backed).

    python -m bench.import_memory MODULE [MODULE ...]   (in the order given)

For deciding what the bridge's process should import at start (issue 27):
anonymous PSS is the figure to compare, since file-backed PSS is split with
whatever other processes map the same libraries at that moment.
"""

from __future__ import annotations

import importlib
import sys
import time


def pss_mib() -> dict[str, float]:
    """This process's Pss, Pss_Anon and Pss_File from /proc/self/smaps_rollup, in MiB."""
    fields = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            name, _, value = line.partition(":")
            if name in ("Pss", "Pss_Anon", "Pss_File"):
                fields[name] = int(value.split()[0]) / 1024
    return fields


def main(modules: list[str]) -> None:
    before = pss_mib()
    print(f"{'at start':32} {'':>9}  pss {before['Pss']:6.1f}  anon {before['Pss_Anon']:5.1f}")
    for module in modules:
        started = time.perf_counter()
        importlib.import_module(module)
        took, after = (time.perf_counter() - started) * 1000, pss_mib()
        print(f"{module:32} {took:6.0f} ms  pss +{after['Pss'] - before['Pss']:5.1f}  "
              f"anon +{after['Pss_Anon'] - before['Pss_Anon']:5.1f}  file +{after['Pss_File'] - before['Pss_File']:5.1f}"
              f"  total {after['Pss']:6.1f} MiB")
        before = after


if __name__ == "__main__":
    main(sys.argv[1:])
