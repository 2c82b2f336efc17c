"""SDK worker processes (BRIDGE_SDK_WORKERS): the users' rooms are spread over
processes of their own, audio crosses the hop both ways, a worker that dies
is restarted and its users rejoin without the cloud, and no worker outlives
the bridge. Against a real livekit-server, with real worker processes."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import struct
import subprocess
import sys

import trio
import trio_asyncio
from grpclib.const import Status
from prometheus_client import REGISTRY
from trio_asyncio import aio_as_trio

from actors.operations.tree_view import render
from bench.proc_stats import family
from bridge_harness import (REPO, Phone, bridge_identity, cloud, counter_of, join_once_listening, join_request,
                            list_participants, listener_in_room, numbered_pcm, phone_in_room, running_bridge,
                            until_room_is_empty)
from proto.mentra.livekit import bridge as pb


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child that exited but was not yet reaped is a zombie: gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def wait_until_gone(pids: list[int], seconds: float = 20) -> None:
    with trio.fail_after(seconds):
        while any(alive(pid) for pid in pids):
            await trio.sleep(0.1)


def find(nodes: list[dict], predicate) -> list[dict]:
    found = []
    for node in nodes:
        if predicate(node):
            found.append(node)
        found += find(node.get("children", []), predicate)
    return found


async def workers_in_tree(client) -> list[dict]:
    tree = await client.actor_tree()
    return sorted(find(tree["children"], lambda node: node["kind"] == "SdkWorker"), key=lambda node: node["name"])


async def running_workers(client, count: int) -> list[dict]:
    """The workers, once ``count`` of them run (they start in the background)."""
    with trio.fail_after(30):
        while True:
            workers = await workers_in_tree(client)
            if len(workers) == count and all(worker["state"] == "running" for worker in workers):
                return workers
            await trio.sleep(0.05)


async def link_in_tree(client, user: str) -> dict:
    (link,) = find((await client.actor_tree())["children"], lambda node: node["name"] == f"link:{user}")
    return link


def joins_total() -> float:
    return sum(REGISTRY.get_sample_value("bridge_joins_total", {"result": result}) or 0.0
               for result in ("joined", "replaced", "adopted", "failed"))


class Talker:
    """A phone that sends numbered packets every ``interval`` until stopped."""

    def __init__(self, phone: Phone, interval: float = 0.02) -> None:
        self.phone = phone
        self.interval = interval
        self.sent = 0

    async def run(self) -> None:
        while True:
            await self.phone.send_mic(self.sent, numbered_pcm(self.sent))
            self.sent += 1
            await trio.sleep(self.interval)


async def receive_until(stream, last: int, seconds: float = 30) -> list[int]:
    counters: list[int] = []
    with trio.fail_after(seconds):
        while not counters or counters[-1] < last:
            counters.append(counter_of(await stream.recv()))
    return counters


async def test_rooms_are_spread_over_the_workers_and_no_worker_outlives_the_bridge(bridge_settings, livekit) -> None:
    settings = dataclasses.replace(bridge_settings, sdk_workers=2)
    users = [f"spread-{n}" for n in range(4)]
    async with running_bridge(settings) as bridge, cloud(bridge.address) as client:
        assert [w["counters"]["rooms"] for w in await running_workers(client, 2)] == [0, 0]
        async def join(user: str) -> None:
            joined = await client.join(join_request(livekit, user))
            assert joined.success, joined.error

        async with trio.open_nursery() as nursery:  # all at once, as in a deploy
            for user in users:
                nursery.start_soon(join, user)
        workers = await workers_in_tree(client)
        assert [w["name"] for w in workers] == ["sdk-worker:1", "sdk-worker:2"]
        assert [w["counters"]["rooms"] for w in workers] == [2, 2]
        pids = [w["details"]["pid"] for w in workers]
        assert len(set(pids)) == 2 and os.getpid() not in pids and all(alive(pid) for pid in pids)
        hosts = {(await link_in_tree(client, user))["details"]["sdk"] for user in users}
        assert hosts == {"sdk-worker:1", "sdk-worker:2"}
        # What an operator reads in `just tree`: each process, its pid and rooms; each link, its process.
        lines = render(await client.actor_tree()).splitlines()
        for worker, pid in zip(("sdk-worker:1", "sdk-worker:2"), pids):
            [line] = [line for line in lines if line.strip().startswith(f"{worker} ")]
            assert line.startswith(f"    {worker}  SdkWorker  running") and "rooms 2" in line and f"pid {pid}" in line
        assert sum("sdk sdk-worker:" in line for line in lines if line.strip().startswith("link:")) == 4
        for user in users:
            assert await list_participants(livekit, f"room-{user}") == [bridge_identity(user)]
    # Stopped: every room left, and both processes gone.
    await wait_until_gone(pids)
    async with trio_asyncio.open_loop():
        for user in users:
            assert await list_participants(livekit, f"room-{user}") == []


async def test_microphone_and_cloud_audio_cross_the_worker_both_ways(bridge_settings, livekit) -> None:
    settings = dataclasses.replace(bridge_settings, sdk_workers=1)
    user = "across"
    tone = struct.pack("<1600h", *(int(12000 * math.sin(2 * math.pi * 440 * i / 16000)) for i in range(1600)))
    async with running_bridge(settings) as bridge, cloud(bridge.address) as client, \
            listener_in_room(livekit, user, identity=f"{user}:speaker") as heard, phone_in_room(livekit, user) as phone:
        assert (await client.join(join_request(livekit, user))).success
        async with client.audio_stream(user) as stream:
            for counter in range(30):
                await phone.send_mic(counter, numbered_pcm(counter))
                await trio.sleep(0.02)
            assert await receive_until(stream, 29) == list(range(30))
            for _ in range(30):  # 3 s of tone on the tts track
                await stream.send(pb.AudioChunk(pcm_data=tone, sample_rate=16000, channels=1, track_id=2))
            with trio.fail_after(20):
                while "tts" not in heard or heard["tts"].loud_ms() < 1000:
                    await trio.sleep(0.1)
        (worker,) = await workers_in_tree(client)
        assert worker["counters"]["mic_packets_dropped_in_worker"] == 0


async def test_a_worker_that_dies_is_restarted_and_its_users_rejoin_without_the_cloud(
        bridge_settings, livekit, log_records) -> None:
    settings = dataclasses.replace(bridge_settings, sdk_workers=2)
    async with running_bridge(settings) as bridge, cloud(bridge.address) as client, \
            phone_in_room(livekit, "victim") as victim_phone, phone_in_room(livekit, "bystander") as bystander_phone, \
            trio.open_nursery() as nursery:
        await running_workers(client, 2)  # (a join meanwhile goes to the worker that runs)
        for user in ("victim", "bystander"):
            assert (await client.join(join_request(livekit, user))).success
        victim_host = (await link_in_tree(client, "victim"))["details"]["sdk"]
        bystander_host = (await link_in_tree(client, "bystander"))["details"]["sdk"]
        assert victim_host != bystander_host
        (victim_worker,) = [w for w in await workers_in_tree(client) if w["name"] == victim_host]
        joins_before = joins_total()
        async with client.audio_stream("victim") as victim_stream, \
                client.audio_stream("bystander") as bystander_stream:
            victim, bystander = Talker(victim_phone), Talker(bystander_phone)
            nursery.start_soon(victim.run)
            nursery.start_soon(bystander.run)
            await receive_until(victim_stream, 10)
            os.kill(victim_worker["details"]["pid"], signal.SIGKILL)
            # The victim's link notices, the worker comes back, the link rejoins: no JoinRoom.
            with trio.fail_after(30):
                while True:
                    link = await link_in_tree(client, "victim")
                    if link["counters"]["rejoins"] >= 1 and link["counters"]["connected"]:
                        break
                    await trio.sleep(0.2)
            assert any("LiveKit room disconnected (SDK_WORKER_EXITED" in record["message"]
                       for record in log_records if record["user_id"] == "victim")
            # The same StreamAudio brings what the phone says after the rejoin.
            after_rejoin = victim.sent
            assert (await receive_until(victim_stream, after_rejoin + 10))[-11:] == \
                list(range(after_rejoin, after_rejoin + 11))
            # The other worker's user heard nothing of it: every packet, in order.
            last = bystander.sent
            assert await receive_until(bystander_stream, last) == list(range(last + 1))
            nursery.cancel_scope.cancel()
        workers = {w["name"]: w for w in await workers_in_tree(client)}
        assert workers[victim_host]["restarts"] == 1
        assert workers[victim_host]["details"]["pid"] != victim_worker["details"]["pid"]
        assert workers[bystander_host]["restarts"] == 0
        assert (await link_in_tree(client, "bystander"))["counters"]["rejoins"] == 0
        assert joins_total() == joins_before


async def test_a_hung_worker_is_killed_and_started_again(bridge_settings, livekit, monkeypatch, log_records) -> None:
    from actors.sdk_workers import worker

    monkeypatch.setattr(worker, "PING_INTERVAL", 0.5)
    monkeypatch.setattr(worker, "PING_TIMEOUT", 2.0)
    settings = dataclasses.replace(bridge_settings, sdk_workers=1)
    async with running_bridge(settings) as bridge, cloud(bridge.address) as client, \
            phone_in_room(livekit, "stuck") as phone, trio.open_nursery() as nursery:
        assert (await client.join(join_request(livekit, "stuck"))).success
        (before,) = await workers_in_tree(client)
        async with client.audio_stream("stuck") as stream:
            talker = Talker(phone)
            nursery.start_soon(talker.run)
            await receive_until(stream, 5)
            os.kill(before["details"]["pid"], signal.SIGSTOP)  # alive, but it answers nothing
            with trio.fail_after(30):
                while True:
                    (after,) = await workers_in_tree(client)
                    link = await link_in_tree(client, "stuck")
                    if after["restarts"] == 1 and link["counters"]["rejoins"] >= 1 and link["counters"]["connected"]:
                        break
                    await trio.sleep(0.2)
            assert not alive(before["details"]["pid"])
            assert "answered no ping for 2 s and was killed" in after["last_error"]
            resumed = talker.sent
            assert (await receive_until(stream, resumed + 5))[-6:] == list(range(resumed, resumed + 6))
            nursery.cancel_scope.cancel()


async def test_a_worker_dying_more_than_10_times_a_minute_ends_the_sessions_and_joinroom_brings_them_back(
        bridge_settings, livekit, monkeypatch) -> None:
    """README: such a worker takes the session supervisor down with it, and
    the root supervisor starts it anew. End to end: the user's StreamAudio
    ends UNAVAILABLE (so the cloud joins again), the bridge is no longer in
    the room, GetStatus knows no session, and the cloud's next JoinRoom
    joins on fresh workers and carries audio.
    The production policy's count and window; its backoff shortened, so
    that eleven deaths take seconds, not half a minute."""
    from actors.runtime import Backoff
    from actors.session import room_hosts

    monkeypatch.setattr(room_hosts, "WORKER_POLICY", dataclasses.replace(
        room_hosts.WORKER_POLICY, backoff=Backoff(initial=0.01, maximum=0.05)))
    settings = dataclasses.replace(bridge_settings, sdk_workers=1)
    user = "crash-looped"
    async with running_bridge(settings) as bridge, cloud(bridge.address) as client, \
            phone_in_room(livekit, user) as phone, trio.open_nursery() as nursery:
        assert (await client.join(join_request(livekit, user))).success
        talker = Talker(phone)
        nursery.start_soon(talker.run)
        async with client.audio_stream(user) as stream:
            await receive_until(stream, 5)
            ended = trio.Event()
            outcome = []

            async def read_to_the_end() -> None:
                outcome.append(await stream.status())
                ended.set()

            nursery.start_soon(read_to_the_end)
            killed: list[int] = []
            with trio.fail_after(60):
                while len(killed) < 11:  # ten restarts, and one death more
                    (worker,) = await running_workers(client, 1)
                    if worker["details"]["pid"] not in killed:
                        killed.append(worker["details"]["pid"])
                        os.kill(killed[-1], signal.SIGKILL)
                    await trio.sleep(0.02)
            with trio.fail_after(10):
                await ended.wait()
        # Ended UNAVAILABLE, as when a bridge drains: the cloud's client joins again only after an error.
        assert outcome == [Status.UNAVAILABLE]
        with trio.fail_after(30):
            while True:
                (sessions,) = find((await client.actor_tree())["children"], lambda node: node["name"] == "sessions")
                if sessions["restarts"] == 1 and sessions["state"] == "running":
                    break
                await trio.sleep(0.05)
        assert "sdk-worker:1 was given up on after 11 ends within 60 s" in sessions["last_error"]
        # The last worker killed may have rejoined the room: LiveKit lets its participant go once it sees the
        # connection closed, a moment after the kill (a bound here is a generous timeout, not a measure).
        with trio.fail_after(30):
            while await list_participants(livekit, f"room-{user}") != [user]:
                await trio.sleep(0.1)
        status = await client.status(user)
        assert not status.connected
        await wait_until_gone(killed)
        assert (await client.join(join_request(livekit, user))).success
        async with client.audio_stream(user) as stream:
            resumed = talker.sent
            assert (await receive_until(stream, resumed + 5))[-6:] == list(range(resumed, resumed + 6))
        (worker,) = await running_workers(client, 1)
        assert worker["restarts"] == 0 and worker["details"]["pid"] not in killed
        nursery.cancel_scope.cancel()


async def test_a_worker_gets_none_of_the_bridges_secrets(bridge_settings, livekit, monkeypatch) -> None:
    monkeypatch.setenv("BRIDGE_AUTH_TOKEN", "not-for-workers")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "not-for-workers-either")
    monkeypatch.setenv("RUST_BACKTRACE", "1")  # an operator's setting for the SDK core
    async with running_bridge(dataclasses.replace(bridge_settings, sdk_workers=1)) as bridge, \
            cloud(bridge.address) as client:
        (worker,) = await running_workers(client, 1)
        with open(f"/proc/{worker['details']['pid']}/environ", "rb") as environ:
            variables = dict(item.split(b"=", 1) for item in environ.read().split(b"\0") if b"=" in item)
    assert b"BRIDGE_AUTH_TOKEN" not in variables and b"LIVEKIT_API_SECRET" not in variables
    assert variables[b"RUST_BACKTRACE"] == b"1"  # the rest of the environment is passed on


async def test_a_join_through_a_worker_starts_no_program(bridge_settings, livekit, monkeypatch, tmp_path) -> None:
    """The SDK core looks for `lsb_release` and `getconf` on PATH at every
    connect (to tell LiveKit the OS) and runs them, costing each join CPU and
    a blocked tokio worker; a worker's PATH finds no program. Stand-ins
    first on the bridge's PATH record any run of theirs."""
    ran = tmp_path / "ran"
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    for program in ("lsb_release", "getconf"):
        stand_in = stand_ins / program
        stand_in.write_text(f'#!/bin/sh\necho "{program} $*" >> {ran}\nexec /usr/bin/{program} "$@"\n')
        stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stand_ins}{os.pathsep}{os.environ['PATH']}")
    async with running_bridge(dataclasses.replace(bridge_settings, sdk_workers=1)) as bridge, \
            cloud(bridge.address) as client:
        joined = await client.join(join_request(livekit, "no-programs"))
        assert joined.success, joined.error
        assert (await client.status("no-programs")).connected
    assert not ran.exists(), ran.read_text()


async def test_a_worker_exits_when_the_bridge_is_killed(livekit, tmp_path) -> None:
    socket_path = tmp_path / "killed.sock"
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "bridge_main.py"), "serve", "--livekit-grpc-socket", str(socket_path),
         "--livekit-url", livekit.url, "--sdk-workers", "1"], cwd=REPO)
    try:
        async with trio_asyncio.open_loop(), cloud(f"unix:{socket_path}") as client:
            joined = await join_once_listening(client, join_request(livekit, "orphan"))
            assert joined.success, joined.error
            workers = family(process.pid)[1:]
            assert len(workers) == 1
            process.kill()
            await trio.to_thread.run_sync(process.wait)
            # Its connection closed, the worker leaves the room and exits.
            await wait_until_gone(workers)
            await until_room_is_empty(livekit, "room-orphan")
    finally:
        if process.poll() is None:
            process.kill()


async def test_a_worker_whose_bridge_stops_reading_keeps_10000_packets_and_counts_the_rest(livekit, tmp_path) -> None:
    """The bridge as a process of its own, stopped (SIGSTOP) while a phone
    sends into its worker faster than anything would: the worker keeps
    10,000 packets for it, drops the rest and counts them, and once the
    bridge runs again it gets what was kept, the count, and the phone's
    next packets. Four users listen to the one phone in one room, so the
    worker receives each packet four times (5,000 sent, 20,000 received)."""
    socket_path = tmp_path / "stopped.sock"
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "bridge_main.py"), "serve", "--livekit-grpc-socket", str(socket_path),
         "--livekit-url", livekit.url, "--sdk-workers", "1"], cwd=REPO)
    phone_id, users = "unread", [f"unread-{n}" for n in range(4)]

    def received(tree: dict) -> int:
        return sum(session["counters"]["mic_packets_received"]
                   for session in find(tree["children"], lambda node: node["name"].startswith("session:unread-")))

    try:
        async with trio_asyncio.open_loop(), cloud(f"unix:{socket_path}") as client, \
                phone_in_room(livekit, phone_id) as phone:
            for user in users:
                joined = await join_once_listening(
                    client, join_request(livekit, user, f"room-{phone_id}", target_identity=phone_id))
                assert joined.success, joined.error
            async with client.audio_stream(users[0]) as stream:
                await phone.send_mic(0, numbered_pcm(0))
                await receive_until(stream, 0)
                received_before = received(await client.actor_tree())

                async def burst() -> None:  # small packets, as fast as the SDK takes them
                    for index in range(5_000):
                        await phone.room.local_participant.publish_data(bytes([index % 256, 0, 0]), reliable=False)

                os.kill(process.pid, signal.SIGSTOP)
                try:
                    await aio_as_trio(burst)()
                    await trio.sleep(0.5)  # the last of them reach the worker
                finally:
                    os.kill(process.pid, signal.SIGCONT)
                with trio.fail_after(30):
                    while True:
                        tree = await client.actor_tree()
                        (worker,) = find(tree["children"], lambda node: node["kind"] == "SdkWorker")
                        if dropped := worker["counters"]["mic_packets_dropped_in_worker"]:
                            break
                        await trio.sleep(0.1)
                kept = received(tree) - received_before
                # (More than 10,000 when packets were on their way in a frame or the socket as it stopped.)
                assert kept >= 10_000 and 0 < dropped <= 20_000 - 10_000, (kept, dropped)
                await phone.send_mic(7, numbered_pcm(424242))  # and the phone's next packets are forwarded
                with trio.fail_after(20):
                    while not ((chunk := await stream.recv()).pcm_data[8:] and counter_of(chunk) == 424242):
                        pass
    finally:
        process.kill()
        process.wait()


def test_a_worker_spawned_while_its_group_is_signalled_survives_it() -> None:
    """SIGTERM sent to the spawner's process group every 0.2 ms while it
    spawns 20 worker-like children (tests/group_signal_process.py): none dies
    of it, though each is in the group for a moment after its fork; each
    starts with the group's signals held and runs in a group of its own,
    finds its socket, reads stdin empty and exits 0."""
    import json

    done = subprocess.run([sys.executable, os.path.join(REPO, "tests", "group_signal_process.py"), "20"],
                          capture_output=True, text=True, timeout=120, start_new_session=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"exit_codes": {"0": 20}, "ready": 20, "own_group": 20}, done.stderr


async def test_a_worker_that_dies_before_it_was_ready_is_started_again_and_nothing_else_restarts(
        bridge_settings, livekit, log_records) -> None:
    """The worker process is SIGKILLed as soon as it exists, long before its
    imports are done: its supervisor starts another (WORKER_POLICY restarts
    a failed start), the session supervisor does not restart, and a user
    joins and is heard through the new process."""
    settings = dataclasses.replace(bridge_settings, sdk_workers=1)
    async with running_bridge(settings) as bridge, cloud(bridge.address) as client, \
            phone_in_room(livekit, "early") as phone:
        with trio.fail_after(10):
            while not (workers := await workers_in_tree(client)) or not workers[0]["details"]["pid"]:
                await trio.sleep(0.005)
        first_pid = workers[0]["details"]["pid"]
        os.kill(first_pid, signal.SIGKILL)
        (worker,) = await running_workers(client, 1)
        assert worker["restarts"] == 1 and worker["details"]["pid"] != first_pid
        assert not [r for r in log_records if r["message"].endswith(f"started (pid {first_pid})")], \
            "the worker was killed after it was ready: this test needs it killed before"
        sessions = (await client.actor_tree())["children"][0]
        assert sessions["kind"] == "SessionSupervisor" and sessions["restarts"] == 0, sessions
        assert (await client.join(join_request(livekit, "early"))).success
        async with client.audio_stream("early") as stream, trio.open_nursery() as nursery:
            nursery.start_soon(phone.keep_talking)
            with trio.fail_after(20):
                assert await stream.recv() is not None
            nursery.cancel_scope.cancel()
