"""A JoinRoom that replaces a healthy session in the same room keeps its
LiveKit connection (adoption), and anything else rejoins in full; against a
real livekit-server, with the phone talking in numbered packets."""

from __future__ import annotations

import dataclasses

import pytest
import trio
from prometheus_client import REGISTRY

from bridge_harness import (Phone, bridge_identity, cloud, counter_of, join_request, numbered_pcm,
                            participant_sids, phone_in_room, running_bridge, token)
from proto.mentra.livekit.bridge import debug as debug_pb


def joins(result: str) -> float:
    return REGISTRY.get_sample_value("bridge_joins_total", {"result": result}) or 0.0


async def talk(phone: Phone, first: int, count: int, interval: float = 0.02) -> int:
    """Send packets ``first`` .. ``first + count - 1``; the next counter."""
    for counter in range(first, first + count):
        await phone.send_mic(counter, numbered_pcm(counter))
        await trio.sleep(interval)
    return first + count


async def receive_until(stream, last: int) -> list[int]:
    """The counters a StreamAudio brings, up to and including ``last``."""
    counters: list[int] = []
    with trio.fail_after(20):
        while not counters or counters[-1] < last:
            counters.append(counter_of(await stream.recv()))
    return counters


async def node(client, name: str) -> dict:
    def find(nodes):
        for child in nodes:
            if child["name"] == name:
                return child
            if (found := find(child.get("children", []))) is not None:
                return found
        return None

    return find((await client.actor_tree())["children"])


async def test_a_cloud_restart_keeps_the_connection_and_delivers_the_gap_in_order(bridge, livekit, log_records) -> None:
    user = "adopted"
    room = f"room-{user}"
    adopted_before, replaced_before = joins("adopted"), joins("replaced")
    async with phone_in_room(livekit, user) as phone:
        async with cloud(bridge.address) as first_cloud:
            first = await first_cloud.join(join_request(livekit, user))
            assert first.success, first.error
            async with first_cloud.audio_stream(user) as stream:
                sent = await talk(phone, 0, 5)
                assert await receive_until(stream, sent - 1) == list(range(sent))
        # The cloud died: no LeaveRoom. What the phone says now waits in the bridge.
        before = await participant_sids(livekit, room)
        sid, phone_sid = before[bridge_identity(user)], before[user]
        gap_starts = sent
        sent = await talk(phone, sent, 20)
        async with cloud(bridge.address) as second_cloud:
            second = await second_cloud.join(join_request(livekit, user))
            assert second.success and second.participant_id == first.participant_id == bridge_identity(user)
            assert (await participant_sids(livekit, room)) == {user: phone_sid, bridge_identity(user): sid}
            async with second_cloud.audio_stream(user) as stream:
                sent = await talk(phone, sent, 5)
                assert await receive_until(stream, sent - 1) == list(range(gap_starts, sent))
            link = await node(second_cloud, f"link:{user}")
            supervisor = await node(second_cloud, "sessions")
            assert (await second_cloud.leave(user)).success
    # One connection all along: the same participant, never rejoined.
    assert link["counters"]["adoptions"] == 1 and link["counters"]["rejoins"] == 0
    assert supervisor["counters"]["adoptions"] == 1
    assert joins("adopted") == adopted_before + 1 and joins("replaced") == replaced_before
    replacing = [r for r in log_records if r["message"].startswith("Replacing existing bridge session")]
    assert [r["replacement"] for r in replacing] == ["adopted"], replacing
    assert sum(r["message"].startswith("Successfully joined room") for r in log_records) == 2


async def test_the_adopted_participant_is_the_same_connection(bridge, livekit) -> None:
    user = "same-sid"
    room = f"room-{user}"
    async with phone_in_room(livekit, user), cloud(bridge.address) as client:
        assert (await client.join(join_request(livekit, user))).success
        before = await participant_sids(livekit, room)
        assert (await client.join(join_request(livekit, user))).success
        assert await participant_sids(livekit, room) == before
        assert (await client.leave(user)).success


@dataclasses.dataclass(frozen=True)
class Refusal:
    why: str
    room: str | None = None
    identity: str | None = None
    joins_before: int = 1


REFUSALS = [
    Refusal("another room", room="room-elsewhere"),
    Refusal("another identity", identity="cloud-agent:someone-else"),
    Refusal("a JoinRoom again within the window after an adoption", joins_before=2),
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=[refusal.why for refusal in REFUSALS])
async def test_anything_but_a_healthy_link_for_the_same_target_rejoins_in_full(
        bridge, livekit, log_records, refusal: Refusal) -> None:
    user = "not-adopted"
    home = f"room-{user}"
    replaced_before = joins("replaced")
    async with phone_in_room(livekit, user), cloud(bridge.address) as client:
        for _ in range(refusal.joins_before):
            assert (await client.join(join_request(livekit, user))).success
        before = await participant_sids(livekit, home)
        room = refusal.room or home
        identity = refusal.identity or bridge_identity(user)
        request = join_request(livekit, user, room, token=token(livekit, identity, room))
        assert (await client.join(request)).success
        after = await participant_sids(livekit, room)
        assert after.get(identity) and after[identity] != before.get(identity), (before, after)
        if room != home or identity != bridge_identity(user):  # the old connection left
            assert bridge_identity(user) not in await participant_sids(livekit, home)
        assert (await client.leave(user)).success
    assert joins("replaced") == replaced_before + 1
    replacing = [r["replacement"] for r in log_records
                 if r["message"].startswith("Replacing existing bridge session")]
    assert replacing[-1] == "rejoined", replacing


async def test_with_adoption_off_every_replacement_rejoins(bridge_settings, livekit) -> None:
    settings = dataclasses.replace(bridge_settings, adopt_links=False)
    user = "adoption-off"
    async with running_bridge(settings) as bridge, phone_in_room(livekit, user), cloud(bridge.address) as client:
        assert (await client.join(join_request(livekit, user))).success
        before = await participant_sids(livekit, f"room-{user}")
        assert (await client.join(join_request(livekit, user))).success
        assert await participant_sids(livekit, f"room-{user}") != before
        assert (await node(client, f"link:{user}"))["counters"]["adoptions"] == 0


async def test_a_link_that_is_rejoining_is_not_adopted(bridge_settings, livekit) -> None:
    settings = dataclasses.replace(bridge_settings, chaos_enabled=True, rejoin_backoff_initial=3.0,
                                   rejoin_backoff_max=3.0)
    user = "rejoining"
    async with running_bridge(settings) as bridge, phone_in_room(livekit, user), cloud(bridge.address) as client:
        assert (await client.join(join_request(livekit, user))).success
        await client.unary("/mentra.livekit.bridge.debug.BridgeDebug/InjectFault", debug_pb.InjectFaultRequest(
            actor_path=f"sessions/session:{user}", kind="drop-room"), debug_pb.InjectFaultResponse)
        assert not (await client.status(user)).connected
        assert (await client.join(join_request(livekit, user))).success
        assert (await client.status(user)).connected
        assert (await node(client, f"link:{user}"))["counters"]["adoptions"] == 0


@pytest.mark.parametrize("phone_talks", [False, True], ids=["a silent phone", "a talking phone"])
async def test_an_adopted_link_that_hears_nothing_from_a_present_phone_rejoins(
        bridge_settings, livekit, phone_talks: bool) -> None:
    settings = dataclasses.replace(bridge_settings, adoption_silence=1.0)
    user = "silent-link"
    async with running_bridge(settings) as bridge, phone_in_room(livekit, user) as phone, \
            cloud(bridge.address) as client, trio.open_nursery() as nursery:
        if phone_talks:
            nursery.start_soon(phone.keep_talking)
        assert (await client.join(join_request(livekit, user))).success
        assert (await client.join(join_request(livekit, user))).success
        if phone_talks:
            # Twice the silence window: under load the check may run later, which
            # can only make this case pass without it, never fail.
            await trio.sleep(2 * settings.adoption_silence)
            link = await node(client, f"link:{user}")
            assert link["counters"]["rejoins"] == 0, link
        else:
            with trio.fail_after(15):
                while (link := await node(client, f"link:{user}"))["counters"]["rejoins"] == 0:
                    await trio.sleep(0.1)
            assert link["counters"]["rejoins"] == 1, link
            assert (await client.status(user)).last_disconnect_reason.startswith("ADOPTED_LINK_SILENT")
            with trio.fail_after(10):
                while not (await client.status(user)).connected:
                    await trio.sleep(0.1)
        assert link["counters"]["adoptions"] == 1
        nursery.cancel_scope.cancel()
