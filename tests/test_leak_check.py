"""The chaos suite's memory invariant can fail: a bridge process that keeps
one object per session it served is caught, and the real bridge is not.

Both run as the chaos suite runs them (tests/chaos_run.py): a bridge process
of their own against the real livekit-server, rounds of users that join,
stream and leave, and the leak-check fault counting the bridge's live objects
after each round.
"""

from __future__ import annotations

import sys

import pytest
import trio
import trio_asyncio

from chaos_run import BRIDGE_COMMAND, Chaos, HeapGrowth, bridge_process, heap_over_rounds
from bridge_harness import Cloud
from proto.mentra.livekit import bridge as pb

USERS = 5
ROUNDS = 5

#: The bridge, changed to keep a list for every session it starts.
LEAKING_BRIDGE = (sys.executable, "-c", """
import sys
from actors.session import user_session
kept = []
start = user_session.UserSession.__init__
def leaking_init(self, join, *args, **kwargs):
    start(self, join, *args, **kwargs)
    kept.append([join.user_id])
user_session.UserSession.__init__ = leaking_init
import bridge_main
sys.exit(bridge_main.main(["serve"]))
""")


async def _heap_growth(livekit, workdir, command) -> HeapGrowth:
    async with trio_asyncio.open_loop(), bridge_process(livekit, workdir, command) as (address, process):
        client = Cloud(address)
        try:
            chaos = Chaos(0, [], [livekit], {}, workdir, client, None, process.pid)
            with trio.fail_after(30):
                while not isinstance(await chaos.rpc(client.health()), pb.HealthCheckResponse):
                    await trio.sleep(0.2)
            growth = await heap_over_rounds(chaos, ROUNDS, USERS, warm_up=1)
        finally:
            await client.close()
    assert growth is not None, "the leak check did not answer"
    return growth


async def test_the_real_bridge_keeps_no_object_per_session(livekit, tmp_path) -> None:
    growth = await _heap_growth(livekit, tmp_path, BRIDGE_COMMAND)
    assert not growth.leaks, growth.describe()


async def test_a_bridge_that_keeps_one_object_per_session_fails_the_invariant(livekit, tmp_path) -> None:
    growth = await _heap_growth(livekit, tmp_path, LEAKING_BRIDGE)
    assert growth.leaks, growth.describe()
    # One planted list per session, from the first round measured to the last; the
    # total's slope also carries what happens to be in flight (a worker's reply, a deque).
    assert next(iter(growth.grown)) == "builtins.list", growth.describe()
    assert growth.grown["builtins.list"] >= (ROUNDS - 2) * USERS, growth.describe()
    assert growth.per_session == pytest.approx(1.0, abs=0.5), growth.describe()
