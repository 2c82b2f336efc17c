"""The chaos suite, short: a few users, half a minute of random faults, then
every invariant (tests/chaos_run.py; `just chaos` runs the long version)."""

from __future__ import annotations

import os

from chaos_run import print_table, run_chaos


async def test_a_short_chaos_run_keeps_every_invariant() -> None:
    seed = int(os.environ.get("CHAOS_SEED", "74"))  # a seed whose 25 s hold every kind of fault
    invariants = await run_chaos(seed, users=4, seconds=25, rounds=6)
    print_table(invariants)
    broken = {name: invariant.detail for name, invariant in invariants.items() if not invariant.held}
    assert not broken, f"seed {seed}: {broken}"
    assert len(invariants) == 6
