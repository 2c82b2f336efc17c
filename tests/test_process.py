"""The bridge as the deployment runs it: a process that stops cleanly on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import pytest
import trio
import trio_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from bridge_harness import (REPO, bridge_identity, cloud, join_once_listening, join_request, list_participants,
                            until_room_is_empty)



async def test_sigterm_leaves_every_room_and_exits_cleanly(livekit, tmp_path) -> None:
    socket_path = tmp_path / "bridge.sock"
    # Configured by flags here; the drain test below uses the deployment's variables.
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "bridge_main.py"), "serve", "--livekit-grpc-socket", str(socket_path),
         "--livekit-url", livekit.url], cwd=REPO,
    )
    try:
        async with trio_asyncio.open_loop(), cloud(f"unix:{socket_path}") as client:
            joined = await join_once_listening(client, join_request(livekit, "terminated"))
            assert joined.success, joined.error
            assert await list_participants(livekit, "room-terminated") == [bridge_identity("terminated")]
            process.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(lambda: process.wait(timeout=30)) == 0
            await until_room_is_empty(livekit, "room-terminated")
    finally:
        if process.poll() is None:
            process.kill()


async def test_sigterm_drains_streams_end_unavailable_health_says_not_serving_and_rooms_are_left(
        livekit, tmp_path) -> None:
    from audio_fixtures import tone, wav
    from bridge_harness import PlayCall
    from http_audio import audio_http_server
    from proto.mentra.livekit import bridge as pb

    socket_path = tmp_path / "drained.sock"
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "bridge_main.py"), "serve"],
        env=dict(os.environ, LIVEKIT_GRPC_SOCKET=str(socket_path), LIVEKIT_URL=livekit.url), cwd=REPO,
    )
    try:
        with audio_http_server() as server:
            url = server.add("long.wav", wav(tone(16_000, 30.0, 440.0), 16_000, channels=1), "audio/wav")
            async with trio_asyncio.open_loop(), cloud(f"unix:{socket_path}") as client, \
                    trio.open_nursery() as nursery:
                with trio.fail_after(30):
                    while not socket_path.exists():
                        await trio.sleep(0.1)
                assert (await client.join(join_request(livekit, "drained"))).success
                playing = PlayCall()
                nursery.start_soon(client.play, pb.PlayAudioRequest(
                    request_id="long", audio_url=url, user_id="drained"), playing)
                async with client.audio_stream("drained") as stream:
                    with trio.fail_after(20):
                        await playing.started.wait()
                    signalled_at = trio.current_time()
                    process.send_signal(signal.SIGTERM)
                    with trio.fail_after(5):
                        await playing.done.wait()
                    assert playing.status == Status.UNAVAILABLE and "shutting down" in playing.message
                    health = await client.health()
                    assert health.status == pb.HealthCheckResponseServingStatus.NOT_SERVING
                    with pytest.raises(GRPCError) as refused:
                        await client.status("drained")
                    assert refused.value.status == Status.UNAVAILABLE
                    # The audio stream ends last (test_a_draining_stream_ends_only_once_its_room_is_left).
                    assert bridge_identity("drained") in await list_participants(livekit, "room-drained")
                    with trio.fail_after(10):
                        assert await stream.status() == Status.UNAVAILABLE
                exit_code = await trio.to_thread.run_sync(lambda: process.wait(timeout=30))
                # Well inside a service manager's patience (compose.yaml's stop_grace_period: 30 s);
                # a loaded 2-core CI machine once took 5.8 s (drain grace 0.5 s, then the teardowns).
                assert exit_code == 0 and trio.current_time() - signalled_at < 20
                await until_room_is_empty(livekit, "room-drained")
    finally:
        if process.poll() is None:
            process.kill()


async def test_a_bridge_restarted_at_once_serves_the_clouds_one_retry(livekit) -> None:
    """The cloud's client retries a failed audio stream once, 2 s after it
    fails (JoinRoom, then a new StreamAudio), and gives up for good if that
    fails. A deployment restarts the bridge (SIGTERM, then the same command
    as soon as the old process exits): the retry must find it listening."""
    from actors.livekit.dev_server import free_port
    from bridge_harness import Cloud, phone_in_room

    port = free_port()
    command = [sys.executable, os.path.join(REPO, "bridge_main.py"), "serve"]
    env = dict(os.environ, PORT=str(port), BRIDGE_HOST="127.0.0.1", LIVEKIT_URL=livekit.url)
    address, user = f"127.0.0.1:{port}", "restarted"
    old = subprocess.Popen(command, env=env, cwd=REPO)
    new: subprocess.Popen | None = None
    try:
        async with trio_asyncio.open_loop(), phone_in_room(livekit, user) as phone, trio.open_nursery() as nursery:
            nursery.start_soon(phone.keep_talking)
            async with cloud(address) as before:
                assert (await join_once_listening(before, join_request(livekit, user))).success
                async with before.audio_stream(user) as stream:
                    with trio.fail_after(20):
                        assert await stream.recv() is not None
                    old.send_signal(signal.SIGTERM)
                    with trio.fail_after(20):
                        assert await stream.status() == Status.UNAVAILABLE
                    failed_at = trio.current_time()
            assert await trio.to_thread.run_sync(lambda: old.wait(timeout=30)) == 0
            new = subprocess.Popen(command, env=env, cwd=REPO)
            await trio.sleep_until(failed_at + 2.0)
            retry = Cloud(address)  # one attempt, on a new connection, as the cloud's client makes it
            try:
                assert (await retry.join(join_request(livekit, user))).success
                async with retry.audio_stream(user) as stream:
                    with trio.fail_after(20):
                        assert await stream.recv() is not None
            finally:
                await retry.close()
            nursery.cancel_scope.cancel()
        assert stop(new) == 0
    finally:
        for process in (old, new):
            if process is not None and process.poll() is None:
                process.kill()


def start(command: str, env: dict[str, str]) -> subprocess.Popen:
    """``bridge_main.py COMMAND`` with only ``env`` beside PATH: no BRIDGE_HOST, token or socket unless given."""
    return subprocess.Popen([sys.executable, os.path.join(REPO, "bridge_main.py"), command], cwd=REPO,
                            env=dict(PATH=os.environ["PATH"], PORT="0", LOG_FORMAT="text", **env),
                            stderr=subprocess.PIPE, text=True)


async def listening_on(process: subprocess.Popen) -> tuple[str, list[str]]:
    """The address the bridge says it listens on, and the lines it logged until then."""
    lines: list[str] = []
    with trio.fail_after(30):
        while "gRPC front door listening on" not in (lines or [""])[-1]:
            line = await trio.to_thread.run_sync(process.stderr.readline)
            assert line, f"the bridge exited: {lines}"
            lines.append(line)
    return lines[-1].rsplit(" ", 1)[-1].strip(), lines


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()


def test_serving_tcp_beyond_loopback_without_a_token_refuses_to_start(livekit) -> None:
    refused = start("serve", {"LIVEKIT_URL": livekit.url})
    try:
        _, said = refused.communicate(timeout=30)
    finally:
        if refused.poll() is None:  # it started: the check is missing
            refused.kill()
    assert refused.returncode == 2, said
    assert said.startswith("bridge: refusing to serve TCP on 0.0.0.0:0 (BRIDGE_HOST, PORT) without BRIDGE_AUTH_TOKEN")
    assert all(way in said for way in ("set BRIDGE_AUTH_TOKEN", "LIVEKIT_GRPC_SOCKET", "BRIDGE_INSECURE=1"))


async def test_an_open_listener_starts_when_told_it_is_insecure_and_dev_binds_loopback_with_no_setting(
        livekit) -> None:
    from bridge_harness import grpcurl

    insecure = start("serve", {"LIVEKIT_URL": livekit.url, "BRIDGE_INSECURE": "1"})
    try:
        address, said = await listening_on(insecure)
        assert address.startswith("0.0.0.0:")
        assert [line for line in said if "without BRIDGE_AUTH_TOKEN (BRIDGE_INSECURE is set)" in line], said
        assert (await grpcurl("127.0.0.2:" + address.split(":")[1], "list")).returncode == 0  # not only loopback
    finally:
        assert stop(insecure) == 0
    # dev, with an external LiveKit so that it starts none: loopback, and no setting needed.
    dev = start("dev", {"LIVEKIT_URL": livekit.url, "LIVEKIT_API_KEY": livekit.api_key,
                        "LIVEKIT_API_SECRET": livekit.api_secret})
    try:
        address, said = await listening_on(dev)
        assert address.startswith("127.0.0.1:"), said
        assert (await grpcurl(address, "list")).returncode == 0
        assert (await grpcurl("127.0.0.2:" + address.split(":")[1], "list")).returncode != 0
    finally:
        assert stop(dev) == 0


def bridge_on_socket(socket_path, livekit, **env: str) -> subprocess.Popen:
    """``bridge_main.py serve`` on a Unix socket, in a process group of its own (as a service manager starts it)."""
    return subprocess.Popen([sys.executable, os.path.join(REPO, "bridge_main.py"), "serve"],
                            env=dict(os.environ, LIVEKIT_GRPC_SOCKET=str(socket_path), LIVEKIT_URL=livekit.url, **env),
                            cwd=REPO, start_new_session=True)


async def test_sigint_drains_and_a_second_signal_exits_at_once(livekit, tmp_path) -> None:
    from proto.mentra.livekit import bridge as pb

    socket_path = tmp_path / "interrupted.sock"
    # A drain that would last a minute: only the second signal can end it soon.
    process = bridge_on_socket(socket_path, livekit, BRIDGE_DRAIN_GRACE="60")
    try:
        async with trio_asyncio.open_loop(), cloud(f"unix:{socket_path}") as client:
            assert (await join_once_listening(client, join_request(livekit, "interrupted"))).success
            process.send_signal(signal.SIGINT)  # Ctrl-C
            with trio.fail_after(10):
                while (await client.health()).status != pb.HealthCheckResponseServingStatus.NOT_SERVING:
                    await trio.sleep(0.05)
            with pytest.raises(GRPCError) as refused:
                await client.status("interrupted")
            assert refused.value.status == Status.UNAVAILABLE
            assert process.poll() is None  # draining, not gone
            process.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(lambda: process.wait(timeout=10)) == 1
    finally:
        if process.poll() is None:
            process.kill()


async def test_sigterm_to_the_whole_process_group_drains_before_the_workers_go(livekit, tmp_path) -> None:
    """A service manager (or Ctrl-C in a terminal) signals the whole process
    group: the SDK worker processes ignore it, so the phone's audio still
    flows while the bridge drains, and the bridge ends them after the rooms
    are left."""
    from bridge_harness import phone_in_room

    socket_path, user = tmp_path / "group.sock", "grouped"
    process = bridge_on_socket(socket_path, livekit, BRIDGE_SDK_WORKERS="2", BRIDGE_DRAIN_GRACE="1.5")
    try:
        async with trio_asyncio.open_loop(), cloud(f"unix:{socket_path}") as client, \
                phone_in_room(livekit, user) as phone, trio.open_nursery() as nursery:
            nursery.start_soon(phone.keep_talking)
            assert (await join_once_listening(client, join_request(livekit, user))).success
            tree = await client.actor_tree()
            workers = [child["details"]["pid"] for child in tree["children"][0]["children"]
                       if child["kind"] == "SdkWorker"]
            assert len(workers) == 2 and all(workers), workers
            async with client.audio_stream(user) as stream:
                with trio.fail_after(20):
                    assert await stream.recv() is not None
                os.killpg(process.pid, signal.SIGTERM)
                await trio.sleep(1.0)  # inside the drain grace: a worker the signal killed is gone by now
                during = (await client.actor_tree())["children"][0]["children"]
                assert [(child["details"]["pid"], child["restarts"]) for child in during
                        if child["kind"] == "SdkWorker"] == [(pid, 0) for pid in workers]
                assert [child["counters"]["rejoins"] for child in during if child["name"] == f"link:{user}"] == [0]
                heard_after_signal = []
                with trio.fail_after(15):
                    assert await stream.status(heard_after_signal.append) == Status.UNAVAILABLE
                assert len(heard_after_signal) >= 5  # 1.5 s of drain grace: the worker holding the room still ran
            nursery.cancel_scope.cancel()
        assert await trio.to_thread.run_sync(lambda: process.wait(timeout=30)) == 0
        for pid in workers:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z", pid
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


async def test_a_signal_to_the_process_group_while_the_sdk_workers_start_reaches_none_of_them(
        livekit, tmp_path) -> None:
    """The group's SIGTERM as the bridge starts its SDK worker processes
    (each is in the bridge's group for a moment after its fork): none dies of
    it, nothing crashes, and the bridge drains and exits 0. (The window is
    narrow; test_sdk_workers hammers it.)"""
    from bench.proc_stats import family

    log = tmp_path / "bridge.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen([sys.executable, os.path.join(REPO, "bridge_main.py"), "serve"],
                                   env=dict(os.environ, LIVEKIT_GRPC_SOCKET=str(tmp_path / "early.sock"),
                                            LIVEKIT_URL=livekit.url, BRIDGE_SDK_WORKERS="2",
                                            BRIDGE_DRAIN_GRACE="0.2"),
                                   cwd=REPO, start_new_session=True, stderr=stderr)
    try:
        with trio.fail_after(20):
            while len(family(process.pid)) < 3:  # the bridge and both workers, still importing
                await trio.sleep(0.005)
        os.killpg(process.pid, signal.SIGTERM)
        assert await trio.to_thread.run_sync(lambda: process.wait(timeout=30)) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = log.read_text()
    assert "SIGTERM received" in text
    assert "exited before it was ready" not in text and "crashed" not in text, text


async def test_a_draining_stream_ends_only_once_its_room_is_left(livekit, tmp_path) -> None:
    """The SDK worker process holding the user's room is stopped (SIGSTOP)
    as the drain begins: the room cannot be left, so the StreamAudio stays
    open, past the drain grace, until the worker runs again and the room is
    left; then it ends UNAVAILABLE. (LiveKit itself lists a participant for
    some 0.1 s after the SDK has left, so its list cannot tell the order.)"""
    socket_path, user = tmp_path / "held.sock", "held"
    process = bridge_on_socket(socket_path, livekit, BRIDGE_SDK_WORKERS="1", BRIDGE_DRAIN_GRACE="0.2")
    worker_pid = None
    try:
        async with trio_asyncio.open_loop(), cloud(f"unix:{socket_path}") as client:
            assert (await join_once_listening(client, join_request(livekit, user))).success
            tree = await client.actor_tree()
            [worker_pid] = [child["details"]["pid"] for child in tree["children"][0]["children"]
                            if child["kind"] == "SdkWorker"]
            async with client.audio_stream(user) as stream:
                with trio.fail_after(10):
                    while (await client.health()).active_streams != 1:  # the call has reached the session
                        await trio.sleep(0.02)
                async with trio.open_nursery() as nursery:
                    ended = trio.Event()

                    async def until_it_ends() -> None:
                        assert await stream.status() == Status.UNAVAILABLE
                        ended.set()

                    nursery.start_soon(until_it_ends)
                    os.kill(worker_pid, signal.SIGSTOP)
                    process.send_signal(signal.SIGTERM)
                    await trio.sleep(2.0)  # the drain grace ten times over; well inside BRIDGE_TEARDOWN_TIMEOUT (5 s)
                    assert not ended.is_set(), "the stream ended while the bridge was still in the room"
                    assert bridge_identity(user) in await list_participants(livekit, f"room-{user}")
                    os.kill(worker_pid, signal.SIGCONT)
                    with trio.fail_after(10):
                        await ended.wait()
            assert await trio.to_thread.run_sync(lambda: process.wait(timeout=30)) == 0
            await until_room_is_empty(livekit, f"room-{user}")
    finally:
        if worker_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker_pid, signal.SIGCONT)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
