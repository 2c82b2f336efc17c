"""One user through a LiveKit cluster while a node fails: what the tests and the bench measure.

The room is placed on node 0 (CreateRoom with its node id), the phone
signals through node 1 and the bridge through node 2 (the JoinRoom's
livekit_url). The phone talks all along, numbering its packets, and joins
again whenever LiveKit disconnects it, as the app does; the cloud holds one
StreamAudio open from before the fault to after it. ``run_scenario``
applies a fault to the cluster and returns once the phone is back in the
room and one of the packets it sent since has arrived on that same stream:
tests/test_livekit_cluster.py asserts on the outcome, bench/cluster.py
prints its timings.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import trio
from livekit import api, rtc
from trio_asyncio import aio_as_trio

from actors.livekit.dev_server import DevLiveKit
from actors.livekit.room import RoomConnectError, joined_room
from bridge_harness import (Cloud, _room_service, bridge_identity, counter_of, join_request, list_participants,
                            numbered_pcm, token)
from livekit_cluster import LiveKitCluster
from proto.mentra.livekit import bridge as pb

#: The nodes' roles (indices into LiveKitCluster.nodes).
ROOM_NODE, PHONE_NODE, BRIDGE_NODE = 0, 1, 2
#: The phone's packet spacing (s), as the app sends them.
PACKET_INTERVAL = 0.1


class StreamEnded(AssertionError):
    """The StreamAudio call the scenario holds ended: the cloud lost the user's audio for good."""


class RejoiningPhone:
    """The user's phone, signalling through one node: it sends a numbered
    packet every PACKET_INTERVAL and, whenever LiveKit disconnects it, joins
    the room again (the SDK itself restores only an interrupted connection).

    ``sent_at[n]`` is when packet ``n`` was sent (time.monotonic()); ``back``
    lists, for each time the phone was in the room again (joined, or the SDK
    reconnected), when, and the number of the next packet it sent.
    """

    def __init__(self, node: DevLiveKit, user: str, room: str) -> None:
        self.node, self.user, self.room = node, user, room
        self.sent_at: dict[int, float] = {}
        self.back: list[tuple[float, int]] = []
        self.disconnects: list[str] = []
        self._next = 0

    def _is_back(self) -> None:
        self.back.append((time.monotonic(), self._next))

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stay in the room until cancelled; started once first joined."""
        started = False
        while True:
            lost = trio.Event()

            def on_disconnected(reason: int, lost: trio.Event = lost) -> None:
                self.disconnects.append(rtc.DisconnectReason.Name(reason))
                lost.set()

            try:
                async with joined_room(self.node.url, token(self.node, self.user, self.room), connect_timeout=10,
                                       teardown_timeout=5, on_data=lambda *_: None,
                                       subscribe={"disconnected": on_disconnected,
                                                  "reconnected": self._is_back}) as room:
                    self._is_back()
                    if not started:
                        started = True
                        task_status.started()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._talk, room)
                        await lost.wait()
                        nursery.cancel_scope.cancel()
            except RoomConnectError:
                if not started:
                    raise
                await trio.sleep(0.2)  # the room is not back yet: ask again, as the app does

    async def _talk(self, room: rtc.Room) -> None:
        publish = aio_as_trio(room.local_participant.publish_data)
        while True:
            number, self._next = self._next, self._next + 1
            self.sent_at[number] = time.monotonic()
            try:
                await publish(bytes([number % 256]) + numbered_pcm(number), reliable=False)
            except Exception:  # (the SDK refuses while it reconnects: a lost packet, as on a phone)
                pass
            await trio.sleep(PACKET_INTERVAL)


@dataclasses.dataclass
class Outcome:
    """What one scenario showed; times are time.monotonic()."""

    #: When the fault was applied.
    fault_at: float
    #: When the phone was first in the room again after it, the first packet it sent then, and when.
    phone_back_at: float
    phone_first_packet: int
    phone_first_sent_at: float
    #: When the first packet the phone sent since arrived on the StreamAudio opened before the fault.
    bridge_audio_at: float
    #: How the phone's connection ended on the way (LiveKit's disconnect reasons).
    phone_disconnects: list[str]
    #: After the audio came back: the room's participants as LiveKit lists them, GetStatus.
    participants: list[str]
    status: pb.BridgeStatusResponse
    #: The node Redis routes the room to, before and after (indices into the cluster's nodes; None: none of them).
    room_node_before: int | None
    room_node_after: int | None

    @property
    def bridge_after_phone(self) -> float:
        """How long after the phone's first packet since it was back the
        cloud had audio again, in seconds."""
        return self.bridge_audio_at - self.phone_first_sent_at


async def place_room(cluster: LiveKitCluster, room: str, node: int) -> None:
    """Create ``room`` on node ``node`` (CreateRoom with its node id, asked of another node)."""
    request = api.CreateRoomRequest(name=room, node_id=cluster.nodes[node].node_id)
    await _room_service(cluster.nodes[PHONE_NODE], lambda rooms: rooms.create_room(request))
    assert cluster.room_node(room) == cluster.nodes[node].node_id


async def run_scenario(cluster: LiveKitCluster, client: Cloud, user: str,
                       fault: Callable[[LiveKitCluster], None], timeout: float = 90.0) -> Outcome:
    """Join ``user`` (room on ROOM_NODE, phone through PHONE_NODE, bridge
    through BRIDGE_NODE), wait for audio on a StreamAudio, apply ``fault``
    (in a thread), and return once a packet the phone sent after it was back
    in the room arrived on that same stream and GetStatus says connected.

    Raises:
        trio.TooSlowError: not so within ``timeout`` s of the fault.
        StreamEnded: the StreamAudio call ended meanwhile.
    """
    room = f"room-{user}"
    await place_room(cluster, room, ROOM_NODE)
    phone = RejoiningPhone(cluster.nodes[PHONE_NODE], user, room)
    arrivals: list[tuple[float, int]] = []  # (time.monotonic(), packet number) of each chunk on the stream
    arrived = trio.Event()

    async def receive(stream) -> None:
        nonlocal arrived
        while (chunk := await stream.recv()) is not None:
            arrivals.append((time.monotonic(), counter_of(chunk)))
            arrived.set()
            arrived = trio.Event()
        raise StreamEnded(f"the StreamAudio call ended after {len(arrivals)} chunks")

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():
            await arrived.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(phone.run)
        joined = await client.join(join_request(cluster.nodes[BRIDGE_NODE], user, room))
        assert joined.success, joined.error
        async with client.audio_stream(user) as stream:
            nursery.start_soon(receive, stream)
            with trio.fail_after(30):
                await until(lambda: len(arrivals) >= 3)
            room_node_before = cluster.index_of(cluster.room_node(room))
            fault_at = time.monotonic()  # (the phone may be back before a slow fault returns)
            await trio.to_thread.run_sync(fault, cluster)
            with trio.fail_after(timeout):
                await until(lambda: _audio_back(phone, arrivals, fault_at) is not None)
                back_at, first, audio_at = _audio_back(phone, arrivals, fault_at)
                while not (status := await client.status(user)).connected:
                    await trio.sleep(0.1)
            participants = await list_participants(cluster.nodes[PHONE_NODE], room)
            room_node_after = cluster.index_of(cluster.room_node(room))
            disconnects = list(phone.disconnects)  # (before the phone's own leave adds one)
        nursery.cancel_scope.cancel()
    return Outcome(fault_at, back_at, first, phone.sent_at[first], audio_at, disconnects, participants,
                   status, room_node_before, room_node_after)


def _audio_back(phone: RejoiningPhone, arrivals: list[tuple[float, int]],
                fault_at: float) -> tuple[float, int, float] | None:
    """(when the phone was back, its first packet then, when a packet from
    then on arrived), for the phone's first return after ``fault_at``; None
    while no such packet has arrived."""
    back = next(((at, first) for at, first in phone.back if at > fault_at), None)
    if back is None or back[1] not in phone.sent_at:
        return None
    audio_at = next((at for at, number in arrivals if number >= back[1]), None)
    return None if audio_at is None else (back[0], back[1], audio_at)


def bridge_participants(outcome: Outcome, user: str) -> int:
    """How many participants of the bridge's identity for ``user`` the room had."""
    return outcome.participants.count(bridge_identity(user))
