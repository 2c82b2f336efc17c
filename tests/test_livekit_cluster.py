"""The bridge on a real LiveKit cluster: Redis and three livekit-server nodes
(tests/livekit_cluster.py), the room on node 0, the phone signalling through
node 1, the bridge through node 2 (tests/cluster_scenarios.py).

Each scenario waits out LiveKit's own timeouts (the relays' ~12 s after a
node dies), so each test starts a fresh cluster and asserts only behaviour:
every bound below is a generous timeout, not a figure (those are in
docs/operations.md, measured with bench/cluster.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge_harness import about_user, cloud
from cluster_scenarios import ROOM_NODE, Outcome, bridge_participants, run_scenario
from livekit_cluster import LiveKitCluster, livekit_cluster
from test_healing import session_node


@pytest.fixture
def cluster(tmp_path) -> Iterator[LiveKitCluster]:
    with livekit_cluster(tmp_path / "cluster") as started:
        yield started


def assert_healed(outcome: Outcome, user: str) -> None:
    """The audio came back on the StreamAudio opened before the fault (run_scenario
    waited for it), with one bridge participant in the room and GetStatus connected."""
    assert bridge_participants(outcome, user) == 1, outcome.participants
    assert user in outcome.participants, outcome.participants
    assert outcome.status.connected, outcome.status


async def test_the_rooms_node_killed_both_rejoin_a_recreated_room_and_the_audio_comes_back_on_the_same_stream(
        bridge, cluster) -> None:
    """SIGKILL of the node hosting the room: nobody is told; the signalling
    nodes' relays give up on it (after ~12 s), both clients' connections are
    restored and LiveKit recreates the room on a live node."""
    user = "cluster-killed"
    async with cloud(bridge.address) as client:
        outcome = await run_scenario(cluster, client, user, lambda nodes: nodes.kill(ROOM_NODE))
    assert outcome.room_node_before == ROOM_NODE
    assert outcome.room_node_after not in (None, ROOM_NODE)  # recreated on a live node
    assert_healed(outcome, user)


async def test_the_rooms_node_stopped_by_force_the_bridge_rejoins_by_itself(bridge, cluster, log_records) -> None:
    """A second SIGTERM to the node hosting the room: it closes the room at
    once, and every participant is told SERVER_SHUTDOWN, after which its SDK
    does not reconnect. The phone joins again (as the app does); the bridge
    must rejoin by itself, and the audio flow again on the same StreamAudio."""
    user = "cluster-stopped"
    async with cloud(bridge.address) as client:
        outcome = await run_scenario(cluster, client, user, lambda nodes: nodes.force_stop(ROOM_NODE))
        session = await session_node(client, user)
    assert "SERVER_SHUTDOWN" in outcome.phone_disconnects  # the scenario is what it says
    # (GetStatus names the last disconnect: a first rejoin that raced the room's close would replace it.)
    assert any("LiveKit room disconnected (SERVER_SHUTDOWN)" in record["message"]
               for record in about_user(log_records, user))
    assert session is not None and session["counters"]["rejoins"] >= 1, session
    assert session["restarts"] == 0  # healed inside the session: the link rejoined
    assert outcome.room_node_after not in (None, ROOM_NODE)
    assert_healed(outcome, user)
