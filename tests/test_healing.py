"""Sessions that heal: crashes restarted from their JoinRoom, rooms rejoined after
LiveKit loses them (a livekit-server killed and started again), zombies
reaped, and faults injected through the debug service. Every fault stays with
its user."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from livekit import api

from actors.livekit.dev_server import DevLiveKit, free_port, start_dev_livekit
from actors.livekit.token import token_expiry
from actors.grpc.front_door import MIC_BATCH
from actors.session.messages import SIMULATED_SCENARIOS
from actors.livekit.room import joined_room
from bridge_harness import (about_user, bridge_identity, cloud, counter_of, join_request, list_participants, numbered_pcm,
                            phone_in_room, running_bridge, token)
from proto.mentra.livekit import bridge as pb
from proto.mentra.livekit.bridge import debug as debug_pb

DEBUG = "/mentra.livekit.bridge.debug.BridgeDebug/"


@pytest.fixture
def bridge_settings(bridge_settings):
    return dataclasses.replace(bridge_settings, chaos_enabled=True, ask_timeout=2.0, mic_buffer_packets=50)


async def inject(client, user: str, kind: str, seconds: float = 0.0) -> str:
    reply = await client.unary(DEBUG + "InjectFault", debug_pb.InjectFaultRequest(
        actor_path=f"sessions/session:{user}", kind=kind, seconds=seconds), debug_pb.InjectFaultResponse)
    return reply.detail


async def session_node(client, user: str) -> dict | None:
    tree = await client.actor_tree()
    for node in tree["children"][0]["children"]:
        if node["name"] == f"session:{user}":
            return node
    return None


async def receive_packets(stream, count: int, timeout: float = 15.0) -> list[bytes]:
    received = []
    with trio.fail_after(timeout):
        while len(received) < count:
            chunk = await stream.recv()
            assert chunk is not None, "the stream ended"
            received.append(chunk.pcm_data)
    return received


@contextlib.asynccontextmanager
async def talking_user(client, livekit, user: str, interval: float = 0.1) -> AsyncIterator[Any]:
    """A joined user whose phone keeps talking; yields the user's StreamAudio
    once audio flows on it."""
    async with phone_in_room(livekit, user) as phone, trio.open_nursery() as nursery:
        assert (await client.join(join_request(livekit, user))).success
        nursery.start_soon(phone.keep_talking, interval)
        async with client.audio_stream(user) as stream:
            await receive_packets(stream, 3)
            yield stream
        nursery.cancel_scope.cancel()


async def test_a_crashed_session_restarts_from_its_join_and_keeps_its_stream(bridge, livekit) -> None:
    user = "crashy"
    async with cloud(bridge.address) as client, talking_user(client, livekit, user) as stream:
        assert "crash injected" in await inject(client, user, "crash")
        with trio.fail_after(15):
            while (node := await session_node(client, user)) is None or node["restarts"] < 1 \
                    or node["state"] != "running" or not (await client.status(user)).connected:
                await trio.sleep(0.05)
        assert "InjectedCrash" in node["last_error"]
        # The same StreamAudio call carries the restarted session's audio.
        await receive_packets(stream, 5)


async def test_a_session_that_keeps_crashing_is_given_up_and_status_says_why(bridge, livekit, log_records) -> None:
    user = "hopeless"
    async with cloud(bridge.address) as client:
        assert (await client.join(join_request(livekit, user))).success
        async with client.audio_stream(user) as stream:
            for crash in range(4):  # the policy allows 3 restarts within a minute
                with trio.fail_after(15):
                    while True:
                        try:
                            await inject(client, user, "crash")
                            break
                        except GRPCError:  # between incarnations: not there to take it
                            await trio.sleep(0.05)
                    while crash < 3 and (await session_node(client, user) or {}).get("restarts", 0) <= crash:
                        await trio.sleep(0.05)
            with trio.fail_after(10):
                assert await stream.status() == Status.OK  # the stream ends with the session
        status = await client.status(user)
        tree = await client.actor_tree()
        assert await session_node(client, user) is None
    assert not status.connected and "given up on after 3 restarts" in status.last_disconnect_reason
    assert "InjectedCrash" in status.last_disconnect_reason
    assert tree["children"][0]["counters"]["sessions_given_up"] == 1
    lines = [record["message"] for record in about_user(log_records, user)]
    assert any("given up on" in line for line in lines), lines


async def test_a_hung_session_harms_nobody_else_and_a_join_replaces_it(bridge, livekit) -> None:
    async with cloud(bridge.address) as client:
        for user in ("hung", "healthy"):
            assert (await client.join(join_request(livekit, user))).success
        await inject(client, "hung", "hang")
        with pytest.raises(GRPCError) as caught:
            await client.status("hung")
        assert caught.value.status == Status.DEADLINE_EXCEEDED
        assert (await client.status("healthy")).connected
        with trio.fail_after(15):
            assert (await client.join(join_request(livekit, "hung"))).success  # cancels the hung one
        assert (await client.status("hung")).connected


async def test_a_dropped_room_is_rejoined_and_the_stream_carries_on(bridge, livekit) -> None:
    user = "dropped"
    async with cloud(bridge.address) as client, talking_user(client, livekit, user) as stream:
        await inject(client, user, "drop-room")
        with trio.fail_after(15):
            while (node := await session_node(client, user))["counters"]["rejoins"] < 1:
                await trio.sleep(0.05)
        await receive_packets(stream, 5)
        status = await client.status(user)
    assert status.connected and status.last_disconnect_reason == "DROPPED_BY_FAULT_INJECTION"
    assert node["restarts"] == 0  # healed inside the session, no restart


#: What the user's link sees of each of the SDK's fault scenarios (GetStatus' last disconnect reason): an
#: interrupted connection the SDK restores (or, not back within BRIDGE_SDK_RECONNECT_GRACE, the link
#: rejoins by itself), or LiveKit's leave, after which the link rejoins.
SCENARIO_SEEN_AS = {
    "SIGNAL_RECONNECT": ("RECONNECTING", "SDK_RECONNECT_SLOW"),
    "NODE_FAILURE": ("RECONNECTING", "SDK_RECONNECT_SLOW"),
    "MIGRATION": ("RECONNECTING", "SDK_RECONNECT_SLOW"),
    "FULL_RECONNECT": ("RECONNECTING", "SDK_RECONNECT_SLOW"),
    "DISCONNECT_SIGNAL_ON_RESUME": ("RECONNECTING", "SDK_RECONNECT_SLOW"),
    "SERVER_LEAVE": ("SERVER_SHUTDOWN",),
}


async def test_each_of_the_sdks_own_fault_scenarios_reaches_the_link_heals_and_the_stream_carries_on(
        bridge, livekit) -> None:
    """All six at once, one user each: each must reach the user's link (a
    disconnect or interruption recorded after it was injected, of the kind
    the scenario makes), and the link must be connected again with audio
    flowing on the same StreamAudio."""
    assert set(SCENARIO_SEEN_AS) == set(SIMULATED_SCENARIOS)
    seen: dict[str, pb.BridgeStatusResponse] = {}

    async def run(client, scenario: str) -> None:
        user = f"simulated-{scenario.lower().replace('_', '-')}"
        async with talking_user(client, livekit, user) as stream:
            injected_at_ms = time.time() * 1000
            assert scenario in await inject(client, user, f"simulate:{scenario}")
            with trio.fail_after(30):
                while (status := await client.status(user)).last_disconnect_at < injected_at_ms \
                        or not status.connected:
                    await trio.sleep(0.1)
            seen[scenario] = status
            await receive_packets(stream, 10, timeout=20)

    async with cloud(bridge.address) as client, trio.open_nursery() as nursery:
        for scenario in SCENARIO_SEEN_AS:
            nursery.start_soon(run, client, scenario)
    wrong = {scenario: status.last_disconnect_reason for scenario, status in seen.items()
             if not status.last_disconnect_reason.startswith(SCENARIO_SEEN_AS[scenario])}
    assert not wrong, wrong


async def test_a_slow_consumer_loses_only_the_oldest_audio_in_order_and_catches_up(bridge, livekit) -> None:
    """The phone numbers its packets (100 a second); the cloud's stream
    stalls for 3 s while the user's buffer holds 50. What reaches the cloud
    is in order, each packet once; what is missing is one run, the packets
    the buffer dropped (give or take the network's losses, counted apart);
    and no packet delivered from the buffer is older than its 50 (plus those
    in flight) when it arrives: the oldest were dropped, not the newest."""
    user, capacity, in_flight = "slowpoke", 50, 100
    sent = 0
    received: list[tuple[int, int]] = []  # (counter, how many the phone had sent when it arrived)

    async def talk(phone) -> None:
        nonlocal sent
        while True:
            await phone.send_mic(sent, numbered_pcm(sent))
            sent += 1
            await trio.sleep(0.01)

    async def receive_until(stream, done) -> None:
        with trio.fail_after(30):
            while not done():
                chunk = await stream.recv()
                assert chunk is not None, "the stream ended"
                received.append((counter_of(chunk), sent))

    async with cloud(bridge.address) as client, phone_in_room(livekit, user) as phone, \
            trio.open_nursery() as nursery:
        assert (await client.join(join_request(livekit, user))).success
        nursery.start_soon(talk, phone)
        async with client.audio_stream(user) as stream:
            await receive_until(stream, lambda: len(received) >= 20)
            before = (await session_node(client, user))["counters"]
            assert before["mic_buffer_capacity"] == capacity
            await inject(client, user, "slow-consumer", seconds=3.0)
            stalled_until = trio.current_time() + 3.0
            await receive_until(stream, lambda: trio.current_time() > stalled_until + 1.0)
            after = (await session_node(client, user))["counters"]
        nursery.cancel_scope.cancel()
    counters = [counter for counter, _ in received]
    assert counters == sorted(set(counters)), "out of order or twice"
    dropped = after["mic_buffer_dropped"] - before["mic_buffer_dropped"]
    lost = after["mic_packets_lost"] - before["mic_packets_lost"]
    assert dropped > 0  # 3 s of packets (up to 300) overflowed its 50
    got = set(counters)
    missing = [counter for counter in range(counters[0], counters[-1]) if counter not in got]
    runs: list[list[int]] = []
    for counter in missing:
        if runs and runs[-1][-1] == counter - 1:
            runs[-1].append(counter)
        else:
            runs.append([counter])
    longest = max(runs, key=len)
    assert dropped <= len(longest) <= dropped + lost, (dropped, lost, [(run[0], len(run)) for run in runs])
    assert len(missing) - len(longest) <= lost, (dropped, lost, [(run[0], len(run)) for run in runs])
    # The stream's sender stalls holding the batch it took (at most MIC_BATCH packets); the rest came
    # from the buffer, which must have kept the newest.
    stale = [(counter, had_sent) for counter, had_sent in received if had_sent - counter > capacity + in_flight]
    assert len(stale) <= MIC_BATCH, f"delivered {len(stale)} packets older than the buffer, e.g. {stale[:3]}"


async def test_zombies_are_reaped_and_status_says_so_for_a_while(bridge_settings, livekit, log_records) -> None:
    settings = dataclasses.replace(bridge_settings, idle_session_ttl=1.0)
    async with running_bridge(settings) as bridge:
        async with cloud(bridge.address) as client:
            assert (await client.join(join_request(livekit, "zombie"))).success
            assert (await client.join(join_request(livekit, "attended"))).success
            async with client.audio_stream("attended"):
                with trio.fail_after(10):
                    while (status := await client.status("zombie")).connected:
                        await trio.sleep(0.1)
                assert "reaped: no StreamAudio consumer for 1 s" in status.last_disconnect_reason
                assert (await client.status("attended")).connected
                tree = await client.actor_tree()
    assert tree["children"][0]["counters"]["sessions_reaped"] == 1
    assert any("reaped" in record["message"] for record in about_user(log_records, "zombie"))


@pytest.mark.sdk_in_process
async def test_fault_injection_is_refused_unless_enabled_and_leak_check_counts_objects(
        bridge_settings, livekit) -> None:
    for chaos in (False, True):
        settings = dataclasses.replace(bridge_settings, chaos_enabled=chaos)
        async with running_bridge(settings) as bridge:
            async with cloud(bridge.address) as client:
                if not chaos:
                    with pytest.raises(GRPCError) as caught:
                        await inject(client, "anyone", "crash")
                    assert caught.value.status == Status.PERMISSION_DENIED and "BRIDGE_CHAOS" in caught.value.message
                else:
                    for user in ("leak-a", "leak-b"):
                        assert (await client.join(join_request(livekit, user))).success
                    counts = json.loads(await inject(client, "", "leak-check"))
                    assert counts["UserSession"] == 2 and counts["Room"] >= 2
                    for user in ("leak-a", "leak-b"):
                        assert (await client.leave(user)).success
                    counts = json.loads(await inject(client, "", "leak-check"))
                    assert counts["UserSession"] == 0 and counts["UserLine"] == 0, counts
                    with pytest.raises(GRPCError) as caught:
                        await inject(client, "leak-a", "explode")
                    assert caught.value.status == Status.INVALID_ARGUMENT


@pytest.fixture
def own_livekit(tmp_path, livekit: DevLiveKit) -> Iterator[dict]:
    """A livekit-server of the test's own, to kill and start again on its port
    (same keys, so the sessions' tokens stay valid)."""
    port = free_port()
    config = dict(port=port, rtc_tcp_port=free_port(), api_key=livekit.api_key, api_secret=livekit.api_secret,
                  udp_ports=(41000, 41999))
    state = {"server": start_dev_livekit(tmp_path / "first", **config), "config": config, "tmp": tmp_path}
    yield state
    state["server"].stop()


async def test_after_a_livekit_server_restart_every_session_streams_again_without_any_rpc(
        bridge, bridge_settings, own_livekit, log_records) -> None:
    server: DevLiveKit = own_livekit["server"]
    users = ["heal-a", "heal-b", "heal-c"]
    async with cloud(bridge.address) as client:
        for user in users:
            assert (await client.join(join_request(server, user))).success
        async with trio.open_nursery() as streams:
            stream_calls = {}
            for user in users:
                stream_calls[user] = await streams.start(hold_stream, client, user)
            async with phones_talking(server, users):
                for user in users:
                    await receive_packets(stream_calls[user], 2)

            server.process.kill()  # as a crash would: no goodbye to anyone
            server.process.wait()
            with trio.fail_after(30):
                while (await client.status(users[0])).connected:
                    await trio.sleep(0.1)
            # A session that exists but has no room: PlayAudio says so.
            call = await client.play(pb.PlayAudioRequest(request_id="r", audio_url="http://127.0.0.1/a.wav",
                                                         user_id=users[0]))
            assert call.status == Status.FAILED_PRECONDITION and call.kinds() == ["FAILED"], call.message
            assert "not connected" in call.message

            # Down for longer than the SDK may try on its own.
            await trio.sleep(bridge_settings.sdk_reconnect_grace + 1.0)
            restarted = start_dev_livekit(own_livekit["tmp"] / "second", **own_livekit["config"])
            own_livekit["server"] = restarted
            back_at = time.monotonic()
            healed_after = {}
            async with phones_talking(restarted, users):  # the phones rejoin, as the app does
                with trio.fail_after(30):
                    for user in users:
                        await receive_packets(stream_calls[user], 1)
                        while not (await client.status(user)).connected:
                            await trio.sleep(0.05)
                        healed_after[user] = time.monotonic() - back_at
            # The audio came on the StreamAudio calls opened before the restart.
            rejoins = {user: (await session_node(client, user))["counters"]["rejoins"] for user in users}
            streams.cancel_scope.cancel()
    # The SDK's reconnect, slower than BRIDGE_SDK_RECONNECT_GRACE while the server was down, was cut
    # short: the sessions rejoined by themselves.
    assert all(count >= 1 for count in rejoins.values()), rejoins
    for user in users:
        assert any("SDK_RECONNECT_SLOW" in record["message"] for record in about_user(log_records, user)), user
    print(f"sessions healed after the LiveKit server came back: "
          f"{ {user: round(seconds, 2) for user, seconds in healed_after.items()} }")


async def hold_stream(client, user: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with client.audio_stream(user) as stream:
        task_status.started(stream)
        await trio.sleep_forever()


@contextlib.asynccontextmanager
async def phones_talking(server: DevLiveKit, users: list[str]) -> AsyncIterator[None]:
    """Each user's phone in its room, talking, for the block's duration."""
    async with trio.open_nursery() as nursery:
        for user in users:
            await nursery.start(_talking_phone, server, user)
        yield
        nursery.cancel_scope.cancel()


async def _talking_phone(server: DevLiveKit, user: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with phone_in_room(server, user) as phone:
        task_status.started()
        await phone.keep_talking()


async def test_an_expired_token_ends_the_session_instead_of_rejoining(bridge, livekit) -> None:
    user = "expiring"
    grants = api.VideoGrants(room_join=True, room=f"room-{user}", can_publish=True, can_subscribe=True,
                             can_publish_data=True)
    short_lived = (api.AccessToken(livekit.api_key, livekit.api_secret).with_identity(bridge_identity(user))
                   .with_grants(grants).with_ttl(datetime.timedelta(seconds=2)).to_jwt())
    async with cloud(bridge.address) as client:
        assert (await client.join(join_request(livekit, user, token=short_lived))).success
        await trio.sleep(2.5)
        await inject(client, user, "drop-room")
        with trio.fail_after(30):
            while await session_node(client, user) is not None:
                await trio.sleep(0.05)
        status = await client.status(user)
    assert not status.connected and "token has expired" in status.last_disconnect_reason


def test_the_token_expiry_is_read_without_verifying_and_unreadable_tokens_have_none() -> None:
    secret = "a-secret-long-enough-for-hmac-sha256"
    token = api.AccessToken("key", secret).with_ttl(datetime.timedelta(seconds=60)).to_jwt()
    assert abs(token_expiry(token) - (time.time() + 60)) < 5
    assert token_expiry("not-a-jwt") is None and token_expiry("a.b.c") is None


async def test_a_link_that_livekit_ended_does_not_rejoin(bridge, livekit) -> None:
    """Three users at once: LiveKit removes one's participant, another
    connection takes over another's identity (DUPLICATE_IDENTITY), and the
    third's room is deleted. None rejoins: each session ends and GetStatus
    says why, and LiveKit keeps no bridge participant of theirs."""
    from bridge_harness import _room_service, remove_participant

    async def delete_room(room: str) -> None:
        await _room_service(livekit, lambda rooms: rooms.delete_room(api.DeleteRoomRequest(room=room)))

    async def evict(user: str) -> None:
        # Another connection of the bridge's identity, which it holds a moment and leaves.
        async with joined_room(livekit.url, token(livekit, bridge_identity(user), f"room-{user}"),
                               connect_timeout=10, teardown_timeout=5, on_data=lambda *_: None, subscribe={}):
            pass

    endings = {"removed": ("PARTICIPANT_REMOVED", lambda user: remove_participant(
                   livekit, f"room-{user}", bridge_identity(user))),
               "evicted": ("DUPLICATE_IDENTITY", evict),
               "deleted": ("ROOM_DELETED", lambda user: delete_room(f"room-{user}"))}

    async def end(client, user: str, reason: str, ending) -> None:
        assert (await client.join(join_request(livekit, user))).success
        await ending(user)
        with trio.fail_after(15):
            while await session_node(client, user) is not None:
                await trio.sleep(0.05)
        status = await client.status(user)
        assert not status.connected and reason in status.last_disconnect_reason, (user, status)
        await trio.sleep(1.5)  # longer than the link's longest rejoin backoff (1 s)
        assert bridge_identity(user) not in await list_participants(livekit, f"room-{user}"), user
        assert await session_node(client, user) is None

    async with cloud(bridge.address) as client, trio.open_nursery() as nursery:
        for user, (reason, ending) in endings.items():
            nursery.start_soon(end, client, f"final-{user}", reason, ending)


async def test_a_session_restarted_after_its_link_ended_ends_quietly_instead_of_crashing_again(
        bridge, bridge_settings, livekit) -> None:
    """A session that crashed is restarted after its backoff; if LiveKit ended
    its link meanwhile, the restart finds no room. The first start of a
    session on an ended link fails its JoinRoom; a restart ends as the link's
    session does, without a crash (which would restart it again, until given
    up on). Both incarnations are started here on the real, ended link."""
    from actors.livekit.room import RoomConnectError
    from actors.runtime import ChildState, Supervisor
    from actors.session.user_session import UserSession
    from bridge_harness import remove_participant

    user = "restarted-after-its-link-ended"
    async with cloud(bridge.address) as client:
        assert (await client.join(join_request(livekit, user))).success
        sessions = bridge.sessions.actor
        link, session = sessions._links[user], sessions._sessions[user]
        join = session.actor._join
        await remove_participant(livekit, f"room-{user}", bridge_identity(user))
        with trio.fail_after(15):
            await link.done.wait()
            await session.done.wait()  # ended by its link: the link is lent to nobody now

    def restart() -> UserSession:
        session = UserSession(join, bridge_settings, link)
        session.incarnation = 1  # as its supervisor numbers a first restart
        return session

    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery)
        with pytest.RaisesGroup(pytest.RaisesExc(RoomConnectError, match="link ended before the session started")):
            await supervisor.start(lambda: UserSession(join, bridge_settings, link))
        restarted = await supervisor.start(restart)
        with trio.fail_after(10):
            await restarted.done.wait()
    assert (restarted.state, restarted.last_error) == (ChildState.STOPPED, None)
