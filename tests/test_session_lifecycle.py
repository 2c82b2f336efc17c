"""JoinRoom, replacement, LeaveRoom, GetStatus and HealthCheck against a real livekit-server."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
import trio
from prometheus_client import REGISTRY

from actors.livekit.dev_server import DevLiveKit
from actors.operations.settings import BridgeSettings
from bridge_harness import (
    bridge_identity, cloud, join_request, list_participants, phone_in_room, remove_participant, running_bridge,
    token,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def bridge_settings(bridge_settings: BridgeSettings) -> BridgeSettings:
    """A short connect timeout: the unreachable-LiveKit tests wait it out."""
    return dataclasses.replace(bridge_settings, connect_timeout=3.0)


async def bridge_participants(livekit, room: str) -> list[str]:
    return [p for p in await list_participants(livekit, room) if p.startswith("cloud-agent:")]


async def test_incident_zombie_session_is_replaced_when_the_cloud_restarts(bridge, livekit, log_lines) -> None:
    user = "incident-user"
    async with phone_in_room(livekit, user) as phone, trio.open_nursery() as nursery:
        nursery.start_soon(phone.keep_talking)
        env = dict(os.environ, JOIN_TOKEN=token(livekit, bridge_identity(user), f"room-{user}"),
                   LIVEKIT_URL=livekit.url, PYTHONPATH=REPO)
        cloud_a = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "cloud_process.py"), bridge.address, user, f"room-{user}"],
            stdout=subprocess.PIPE, env=env, text=True,
        )
        try:
            lines = []
            with trio.fail_after(30):
                while "receiving audio" not in lines:
                    lines.append((await trio.to_thread.run_sync(cloud_a.stdout.readline)).strip())
            assert lines[0] == "joined True", lines
        finally:
            cloud_a.send_signal(signal.SIGKILL)  # vanishes without LeaveRoom
            cloud_a.wait()

        async with cloud(bridge.address) as cloud_b:
            joined = await cloud_b.join(join_request(livekit, user))
            assert joined.success, joined.error
            assert any("Replacing existing bridge session" in line and user in line for line in log_lines)
            async with cloud_b.audio_stream(user) as stream:
                with trio.fail_after(3):
                    chunk = await stream.recv()
                assert chunk is not None and len(chunk.pcm_data) == 3200
            assert await bridge_participants(livekit, f"room-{user}") == [bridge_identity(user)]
            status = await cloud_b.status(user)
            assert status.connected and status.participant_id == bridge_identity(user)
        nursery.cancel_scope.cancel()


async def test_concurrent_joins_of_one_user_leave_exactly_one_session(bridge, livekit) -> None:
    user = "busy-user"
    answers = []
    async with cloud(bridge.address) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                async def join() -> None:
                    answers.append(await client.join(join_request(livekit, user)))
                nursery.start_soon(join)
        assert len(answers) == 20
        assert all(answer.success for answer in answers), [a.error for a in answers if not a.success]
        health = await client.health()
        assert health.active_sessions == 1
        await wait_for_participants(livekit, f"room-{user}", [bridge_identity(user)])


async def wait_for_participants(livekit, room: str, expected: list[str], timeout: float = 10) -> None:
    """The server drops a departed participant asynchronously; wait for it to settle."""
    with trio.fail_after(timeout):
        while (found := await bridge_participants(livekit, room)) != expected:
            await trio.sleep(0.1)
    assert found == expected


async def silent_server(hang_up: trio.Event | None = None, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A TCP server that accepts connections and never says a word: a LiveKit
    URL that hangs rather than refuses; with ``hang_up``, until it is set."""
    held = []

    async def hold(connection) -> None:
        held.append(connection)
        if hang_up is None:
            await trio.sleep_forever()
        await hang_up.wait()
        await connection.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(hold, listeners)


async def test_an_unreachable_livekit_delays_only_its_own_user(bridge_settings, livekit) -> None:
    """Ten other users join while one user's LiveKit answers nothing; that
    LiveKit hangs up only once the ten have joined (a bridge that made them
    wait behind it fails here at its 20 s connect timeout, not by a clock)."""
    settings = dataclasses.replace(bridge_settings, connect_timeout=20.0)
    ten_joined = trio.Event()
    async with running_bridge(settings) as bridge, cloud(bridge.address) as client, \
            trio.open_nursery() as servers:
        silent_port = await servers.start(silent_server, ten_joined)
        stranded_answer = []
        finished = []
        async with trio.open_nursery() as nursery:
            async def join_stranded() -> None:
                request = join_request(livekit, "stranded", livekit_url=f"ws://127.0.0.1:{silent_port}")
                stranded_answer.append(await client.join(request))
                finished.append("stranded")

            async def join(user: str) -> None:
                answer = await client.join(join_request(livekit, user))
                assert answer.success, answer.error
                finished.append(user)
                if len(finished) == 10:
                    ten_joined.set()

            nursery.start_soon(join_stranded)
            await trio.sleep(0.05)
            for index in range(10):
                nursery.start_soon(join, f"parallel-{index}")
        assert finished[-1] == "stranded" and len(finished) == 11, finished
        assert not stranded_answer[0].success
        assert (await client.health()).active_sessions == 10
        servers.cancel_scope.cancel()


async def test_leave_tears_down_and_unknown_users_are_told_so(bridge, livekit) -> None:
    async with cloud(bridge.address) as client:
        assert (await client.join(join_request(livekit, "leaver"))).success
        status = await client.status("leaver")
        assert status.connected and status.participant_count == 1 and status.server_version
        assert status.last_disconnect_at == 0
        left = await client.leave("leaver")
        assert left.success and not left.error
        await wait_for_participants(livekit, "room-leaver", [])
        again = await client.leave("leaver")
        assert not again.success and again.error == "session not found"
        unknown = await client.status("leaver")
        assert not unknown.connected and not unknown.participant_id and not unknown.server_version


async def test_a_join_without_room_name_joins_the_tokens_room_and_an_unexpected_identity_is_counted(
        bridge, livekit, log_records) -> None:
    """The cloud may leave room_name empty: the token's room is joined and
    said (JoinRoomResponse metadata, log lines' room field). An identity
    other than cloud-agent:<user> joins, warned about and counted."""
    user, room, identity = "roomless", "room-from-token", "agent-of-roomless"
    unexpected = REGISTRY.get_sample_value("bridge_join_token_identity_unexpected_total") or 0.0
    request = join_request(livekit, user, room_name="", token=token(livekit, identity, room))
    async with cloud(bridge.address) as client:
        joined = await client.join(request)
        assert joined.success and joined.participant_id == identity and joined.metadata == {"room": room}
        assert await list_participants(livekit, room) == [identity]
        assert (await client.actor_tree())["front_door"]["unexpected_token_identities"] == 1
        assert REGISTRY.get_sample_value("bridge_join_token_identity_unexpected_total") == unexpected + 1
        assert (await client.leave(user)).success
    about = [record for record in log_records if record["user_id"] == user]
    assert any(f"joining the token's room '{room}'" in record["message"] for record in about)
    assert any(record["room_name"] == room and "joined room" in record["message"] for record in about)
    warned = [record for record in about if "not 'cloud-agent:roomless'" in record["message"]]
    assert warned and warned[0]["level"] == "warn" and identity in warned[0]["message"]
    assert not [record for record in log_records if request.token in record["message"]]


async def test_participant_count_follows_the_room(bridge, livekit) -> None:
    async with cloud(bridge.address) as client:
        assert (await client.join(join_request(livekit, "counted"))).participant_count == 1
        async with phone_in_room(livekit, "counted"):
            await wait_until_count(client, "counted", 2)
        await wait_until_count(client, "counted", 1)


async def wait_until_count(client, user: str, count: int) -> None:
    with trio.fail_after(10):
        while (await client.status(user)).participant_count != count:
            await trio.sleep(0.05)


async def test_health_reports_sessions_streams_and_uptime(bridge, livekit) -> None:
    async with cloud(bridge.address) as client:
        health = await client.health()
        assert health.status == 1 and health.active_sessions == 0 and health.active_streams == 0
        assert (await client.join(join_request(livekit, "healthy"))).success
        async with client.audio_stream("healthy"):
            with trio.fail_after(10):
                while (health := await client.health()).active_streams != 1:
                    await trio.sleep(0.02)
        assert health.active_sessions == 1


async def delaying_proxy(target_port: int, delay: float, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """A TCP relay to LiveKit that holds each new connection for ``delay``
    seconds first: a LiveKit that answers, but only after the bridge gave up."""
    async def relay(client: trio.SocketStream) -> None:
        await trio.sleep(delay)
        upstream = await trio.open_tcp_stream("127.0.0.1", target_port)

        async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
            try:
                while data := await source.receive_some(65536):
                    await sink.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                await sink.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, upstream)
            nursery.start_soon(pump, upstream, client)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(relay, listeners)


def rtc_sessions_started(livekit: DevLiveKit, identity: str) -> int:
    """How many times LiveKit started a session of ``identity`` (its log's count)."""
    started = f'"participant": "{identity}"'
    return sum("starting RTC session" in line and started in line
               for line in livekit.log_path.read_text(errors="replace").splitlines())


@pytest.mark.parametrize("sdk", [pytest.param("in process", marks=pytest.mark.sdk_in_process), "in a worker"])
async def test_a_connect_given_up_on_cannot_evict_the_next_session(bridge, livekit, bridge_settings, sdk) -> None:
    """In process the abandoned connect is the SDK's (AbandonedConnect); in a
    worker process, the worker's (WorkerAbandoned, settled by its message)."""
    user = f"late-connect-{sdk.split()[-1]}"
    livekit_port = int(livekit.url.rsplit(":", 1)[1])
    async with cloud(bridge.address) as client, trio.open_nursery() as servers:
        proxy_port = await servers.start(delaying_proxy, livekit_port, bridge_settings.connect_timeout + 1.5)
        slow = await client.join(join_request(livekit, user, livekit_url=f"ws://127.0.0.1:{proxy_port}"))
        assert not slow.success and "no answer" in slow.error
        # The cloud retries at once, straight to LiveKit; the abandoned connect
        # still reaches LiveKit under the same identity a moment later.
        retried = await client.join(join_request(livekit, user))
        assert retried.success, retried.error
        await trio.sleep(3)
        # The abandoned connect did reach LiveKit (else this test proves nothing) ...
        assert rtc_sessions_started(livekit, bridge_identity(user)) == 2
        # ... and the session the cloud asked for afterwards survived it.
        status = await client.status(user)
        assert status.connected, status.last_disconnect_reason
        assert await bridge_participants(livekit, f"room-{user}") == [bridge_identity(user)]
        servers.cancel_scope.cancel()


async def test_a_livekit_disconnect_shows_in_status_at_once(bridge, livekit) -> None:
    user = "kicked"
    async with cloud(bridge.address) as client:
        assert (await client.join(join_request(livekit, user))).success
        before_ms = time.time() * 1000
        await remove_participant(livekit, f"room-{user}", bridge_identity(user))
        with trio.fail_after(10):
            while (status := await client.status(user)).connected:
                await trio.sleep(0.05)
        assert status.last_disconnect_at >= before_ms - 1000
        assert status.last_disconnect_reason == "PARTICIPANT_REMOVED"
        # The cloud sees it and joins again: the stale session is replaced.
        assert (await client.join(join_request(livekit, user))).success
        assert (await client.status(user)).connected
        await wait_for_participants(livekit, f"room-{user}", [bridge_identity(user)])
