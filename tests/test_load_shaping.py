"""What keeps the audio of streaming users flowing while others join: connects
let through a few at a time, no SDK log records handed to Python one by one,
and the stage metrics that show where a packet waited (real livekit-server)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import urllib.request

import pytest
import trio
import trio_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from livekit.rtc import _ffi_client
from livekit.rtc._ffi_client import FfiClient
from livekit.rtc.version import __version__
from prometheus_client.parser import text_string_to_metric_families

from actors.bridge import run_bridge
from actors.livekit.dev_server import free_port
from actors.livekit.room import joined_room
from actors.livekit.sdk_core import stop_forwarding_sdk_logs
from actors.session.supervisor import SessionSupervisor
from bridge_harness import cloud, expect_status, forged, join_request, phone_in_room, running_bridge, token


async def test_connects_beyond_the_slots_wait_their_turn(livekit) -> None:
    slots = trio.CapacityLimiter(1)
    most_waiting = 0
    joined: list[str] = []

    async def join(user: str) -> None:
        async with joined_room(livekit.url, token(livekit, f"slot-{user}", f"room-slot-{user}"),
                               connect_timeout=20, teardown_timeout=5, on_data=lambda *_: None, subscribe={},
                               connect_slots=slots) as room:
            joined.append(room.local_participant.identity)
            await trio.sleep(0.2)

    async def watch() -> None:
        nonlocal most_waiting
        while True:
            most_waiting = max(most_waiting, slots.statistics().tasks_waiting)
            await trio.sleep(0.005)

    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        async with trio.open_nursery() as joins:
            for user in "abc":
                joins.start_soon(join, user)
        nursery.cancel_scope.cancel()
    assert sorted(joined) == ["slot-a", "slot-b", "slot-c"]
    assert most_waiting == 2, "three connects at once with one slot: two must have waited"
    assert slots.borrowed_tokens == 0


@pytest.mark.sdk_in_process
async def test_no_sdk_log_record_reaches_python_once_the_bridge_runs(bridge_settings, livekit, monkeypatch) -> None:
    monkeypatch.setenv("LIVEKIT_RTC_DEBUG", "1")  # the SDK's callback would pass its debug records to logging
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    sdk_logger = logging.getLogger("livekit")
    sdk_logger.addHandler(handler)
    previous_level = sdk_logger.level
    sdk_logger.setLevel(logging.DEBUG)
    ffi = FfiClient.instance._ffi_lib
    try:
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            # First show that the check can see forwarded records: capture on, as the SDK starts it.
            ffi.livekit_ffi_initialize(_ffi_client.ffi_event_callback, True, b"python", __version__.encode())
            async with phone_in_room(livekit, "logs-on"):
                await trio.sleep(0.5)
            assert records, "with capture on, a room's connect forwards debug records"
            bridge = await nursery.start(run_bridge, bridge_settings)  # it turns the capture off itself
            await trio.sleep(1.0)  # records forwarded before the switch may still be on their way
            records.clear()
            async with cloud(bridge.address) as client:
                assert (await client.join(join_request(livekit, "logs-off"))).success
                async with phone_in_room(livekit, "logs-off"):
                    await trio.sleep(0.5)
                await client.leave("logs-off")
            nursery.cancel_scope.cancel()
        assert [record.getMessage() for record in records] == []
    finally:
        stop_forwarding_sdk_logs()
        sdk_logger.removeHandler(handler)
        sdk_logger.setLevel(previous_level)


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """Every sample on /metrics: (sample name, labels) -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def grown(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_metrics_show_the_audio_path_sessions_joins_and_calls(bridge_settings, livekit) -> None:
    port = free_port()
    settings = dataclasses.replace(bridge_settings, metrics_port=port)
    async with running_bridge(settings) as bridge:
        before = await trio.to_thread.run_sync(scrape, port)
        async with cloud(bridge.address) as client:
            assert (await client.join(join_request(livekit, "metered"))).success
            bad_signature = join_request(livekit, "refused")
            bad_signature.token = forged(bad_signature.token)  # LiveKit refuses it: a failed join
            assert not (await client.join(bad_signature)).success
            async with client.audio_stream("metered") as stream, phone_in_room(livekit, "metered") as phone:
                async with trio.open_nursery() as talking:
                    talking.start_soon(phone.keep_talking, 0.05)
                    with trio.fail_after(30):
                        for _ in range(10):
                            assert await stream.recv() is not None
                    talking.cancel_scope.cancel()
                during = await trio.to_thread.run_sync(scrape, port)
            await client.leave("metered")
        after = await trio.to_thread.run_sync(scrape, port)
    stages = ["ffi_to_trio", "queued", "grpc_write", "to_kernel"]
    if settings.sdk_workers != 0:  # (None: the default, one per core)
        stages.append("worker_hop")
    for stage in stages:
        assert grown(before, after, "bridge_mic_stage_seconds_count", stage=stage) >= 10, stage
    assert grown(before, after, "bridge_mic_packets_total", outcome="received") >= 10
    assert grown(before, after, "bridge_mic_packets_total", outcome="forwarded") >= 10
    assert grown(before, after, "bridge_joins_total", result="joined") == 1
    assert grown(before, after, "bridge_joins_total", result="failed") == 1
    assert during[("bridge_sessions", frozenset())] == 1
    assert during[("bridge_streams", frozenset())] == 1
    assert after[("bridge_sessions", frozenset())] == 0
    assert grown(before, after, "bridge_rpc_seconds_count", method="JoinRoom", code="OK") == 2
    assert grown(before, after, "bridge_rpc_seconds_count", method="LeaveRoom", code="OK") == 1
    stream_calls = {dict(labels)["code"]: value - before.get((name, labels), 0.0)
                    for (name, labels), value in after.items()
                    if name == "bridge_rpc_seconds_count" and dict(labels).get("method") == "StreamAudio"}
    assert sum(stream_calls.values()) == 1, stream_calls  # its code: however the client's hang-up reached it
    assert grown(before, after, "bridge_room_connect_seconds_count", phase="connect") >= 1
    [build] = [dict(labels) for name, labels in after if name == "bridge_build_info"]
    assert build["version"] == importlib.metadata.version("livekit-bridge") and build["livekit"] == __version__


async def test_at_max_sessions_a_new_user_is_refused_but_replacements_and_freed_places_go_through(
        bridge_settings, livekit) -> None:
    settings = dataclasses.replace(bridge_settings, max_sessions=2)
    results: dict[str, bool | GRPCError] = {}
    async with running_bridge(settings) as running:
        async with cloud(running.address) as client:
            async def join(user: str) -> None:
                try:
                    results[user] = (await client.join(join_request(livekit, user))).success
                except GRPCError as error:
                    results[user] = error

            async with trio.open_nursery() as joins:  # three new users at once: joins under way count too
                for user in ("cap-a", "cap-b", "cap-c"):
                    joins.start_soon(join, user)
            [refused] = [user for user, result in results.items() if isinstance(result, GRPCError)]
            admitted = sorted(user for user, result in results.items() if result is True)
            assert len(admitted) == 2, results
            assert results[refused].status == Status.RESOURCE_EXHAUSTED
            assert "maximum of 2 sessions (BRIDGE_MAX_SESSIONS)" in results[refused].message

            assert (await client.join(join_request(livekit, admitted[0]))).success  # a replacement
            assert (await client.leave(admitted[1])).success
            # A join that fails gives its place back.
            bad_signature = join_request(livekit, "cap-bad-token")
            bad_signature.token = forged(bad_signature.token)
            assert not (await client.join(bad_signature)).success
            assert (await client.join(join_request(livekit, refused))).success  # a place was freed
            counters = (await client.actor_tree())["children"][0]["counters"]
    assert counters["refused_joins_at_capacity"] == 1 and counters["sessions"] == 2


async def test_a_join_that_finds_the_session_supervisors_mailbox_full_is_resource_exhausted(
        bridge_settings, livekit, monkeypatch) -> None:
    """A call that finds the session supervisor's mailbox full is refused
    RESOURCE_EXHAUSTED at once, and those already in it are answered once it
    drains. An overloaded supervisor is stood for by one held inside a
    message, with a mailbox of 2 (4096 in production)."""
    holding, held, release = False, trio.Event(), trio.Event()
    handle = SessionSupervisor.handle

    async def held_up(self: SessionSupervisor, message: object) -> None:
        if holding:
            held.set()
            await release.wait()
        await handle(self, message)

    monkeypatch.setattr(SessionSupervisor, "handle", held_up)
    monkeypatch.setattr(SessionSupervisor, "mailbox_capacity", 2)
    answered: dict[int, bool] = {}
    async with running_bridge(bridge_settings) as bridge, cloud(bridge.address) as client:
        async def status(caller: int) -> None:
            answered[caller] = (await client.status(f"nobody-{caller}")).connected

        async with trio.open_nursery() as calls:
            holding = True
            calls.start_soon(status, 0)
            with trio.fail_after(10):
                await held.wait()  # the supervisor holds the first call's message
                calls.start_soon(status, 1)
                calls.start_soon(status, 2)
                while bridge.sessions.actor.mailbox.depth < 2:
                    await trio.sleep(0.01)
            with trio.fail_after(5):  # at once, not after a timeout
                refusal = await expect_status(Status.RESOURCE_EXHAUSTED, client.join(join_request(livekit, "over")))
            assert "the bridge is overloaded: mailbox full (2 messages waiting)" in refusal, refusal
            holding = False
            release.set()
        assert answered == {0: False, 1: False, 2: False}
        assert (await client.join(join_request(livekit, "over"))).success  # drained, it takes calls again


async def test_a_join_past_its_timeout_is_deadline_exceeded_and_a_users_queue_is_capped(
        bridge_settings, livekit) -> None:
    """A JoinRoom whose LiveKit never answers waits at most BRIDGE_JOIN_TIMEOUT
    (DEADLINE_EXCEEDED); the same user's calls queued behind it are capped by
    BRIDGE_MAX_PENDING_COMMANDS_PER_USER (RESOURCE_EXHAUSTED at once). (That
    other users are served meanwhile: test_session_lifecycle.py.)"""
    from test_session_lifecycle import silent_server

    settings = dataclasses.replace(bridge_settings, join_timeout=1.0, connect_timeout=3.0,
                                   max_pending_commands_per_user=2)
    user = "queued"
    async with running_bridge(settings) as bridge, cloud(bridge.address) as client, \
            trio.open_nursery() as servers:
        silent_port = await servers.start(silent_server)
        stranded = join_request(livekit, user, livekit_url=f"ws://127.0.0.1:{silent_port}")
        outcomes: list[Status] = []

        async def join() -> None:
            try:
                await client.join(stranded)
                outcomes.append(Status.OK)
            except GRPCError as error:
                outcomes.append(error.status)

        async with trio.open_nursery() as joins:
            joins.start_soon(join)  # runs: its connect hangs
            await trio.sleep(0.2)
            for _ in range(3):  # two wait behind it, the third is one too many
                joins.start_soon(join)
            with trio.fail_after(0.9):  # refused before the running join's timeout
                while Status.RESOURCE_EXHAUSTED not in outcomes:
                    await trio.sleep(0.02)
        assert sorted(outcomes, key=lambda status: status.value) == [Status.DEADLINE_EXCEEDED] * 3 + [
            Status.RESOURCE_EXHAUSTED], outcomes
        servers.cancel_scope.cancel()
