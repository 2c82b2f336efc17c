"""The chaos suite, short: a few users, half a minute of random faults, then
every invariant (tests/chaos_run.py; `just chaos` runs the long version)."""

from __future__ import annotations

import os

from chaos_run import FAULTS, print_table, run_chaos

ROUNDS = 6
EXPECTED_INVARIANTS = [
    "the bridge holds at most one link and one session per user",
    "LiveKit never disconnects the bridge with DUPLICATE_IDENTITY",
    "every RPC answered",
    "every user's audio flows again",
    "quiet window: each packet exactly once, in order",
    "GetStatus agrees with LiveKit",
    "actor tree back to its baseline",
    f"memory levels off over {ROUNDS} join/stream/leave rounds of 10 users",
]


async def test_a_short_chaos_run_keeps_every_invariant() -> None:
    seed = int(os.environ.get("CHAOS_SEED", "74"))
    outcome = await run_chaos(seed, users=4, seconds=25, rounds=ROUNDS)
    print_table(outcome.invariants)
    broken = {name: invariant.detail for name, invariant in outcome.invariants.items() if not invariant.held}
    assert not broken, f"seed {seed}: {broken}"
    assert list(outcome.invariants) == EXPECTED_INVARIANTS
    # Every kind of fault was carried out, however slow the machine (the run goes on until each has).
    never = [kind for kind in FAULTS if outcome.faults[kind] == 0]
    assert not never, f"seed {seed}: fault kinds never carried out: {never} (carried out: {dict(outcome.faults)})"
