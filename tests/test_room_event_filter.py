"""python-sdks issue 812: the SDK hands every FFI event of the process to every
Room. The bridge routes each event to its own room and takes data packets at
the source, so 30 rooms in one process do not multiply the work each data
packet costs."""

from __future__ import annotations

import collections

import pytest
import trio
from livekit.rtc._ffi_client import FfiClient

from actors.livekit import event_filter

from bridge_harness import cloud, join_request, phone_in_room

ROOMS = 30
PACKETS = 50


def bridge_rooms(bridge) -> dict[str, object]:
    """user id -> the livekit Room of that user's link (white-box, for counting)."""
    links = bridge.sessions.actor._links
    return {user: child.actor._room.room for user, child in links.items()}  # (SdkRoom.room: the rtc.Room)


@pytest.mark.sdk_in_process
async def test_a_packet_reaches_only_its_own_rooms_queue(bridge, livekit) -> None:
    users = [f"filtered-{index}" for index in range(ROOMS)]
    async with cloud(bridge.address) as client:
        limiter = trio.CapacityLimiter(10)

        async def join(user: str) -> None:
            async with limiter:
                assert (await client.join(join_request(livekit, user))).success

        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(join, user)

        rooms = bridge_rooms(bridge)
        assert len(rooms) == ROOMS
        # Routed rooms are off the SDK's subscriber list, so the work of an
        # event does not grow with the number of rooms.
        subscribed = {id(entry[0]) for entry in FfiClient.instance.queue._subscribers}
        assert not subscribed & {id(room._ffi_queue) for room in rooms.values()}
        delivered: collections.Counter[str] = collections.Counter()
        for user, room in rooms.items():
            queue = room._ffi_queue
            original = queue.put_nowait

            def counting_put(event, user=user, original=original) -> None:
                if event.WhichOneof("message") == "room_event" and event.room_event.HasField("data_packet_received"):
                    delivered[user] += 1
                original(event)

            queue.put_nowait = counting_put

        talker = users[0]
        async with client.audio_stream(talker) as stream, phone_in_room(livekit, talker) as phone:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(phone.keep_talking, 0.02)
                with trio.fail_after(30):
                    for _ in range(PACKETS):
                        assert await stream.recv() is not None
                nursery.cancel_scope.cancel()
            tree = await client.actor_tree()
        # Data packets are taken at the source: no room's queue is handed any,
        # its own included, and no other session saw the talker's packets.
        assert delivered == {}, f"rooms were handed data packets through their queues: {dict(delivered)}"
        [supervisor] = tree["children"]
        heard = {node["name"]: node["counters"]["mic_packets_received"] for node in supervisor["children"]
                 if node["kind"] == "UserSession"}
        assert heard.pop(f"session:{talker}") >= PACKETS
        assert set(heard.values()) == {0}
        # A room that left is no longer routed (once its listener has seen its last event).
        handle = rooms[talker]._ffi_handle.handle
        assert handle in event_filter._the_router._by_room
        await client.leave(talker)
        with trio.move_on_after(5):
            while handle in event_filter._the_router._by_room:
                await trio.sleep(0.01)
        assert handle not in event_filter._the_router._by_room
