"""The bridge as the deployment runs it: a process that stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import trio
import trio_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from bridge_harness import REPO, bridge_identity, cloud, join_request, list_participants



async def test_sigterm_leaves_every_room_and_exits_cleanly(livekit, tmp_path) -> None:
    socket_path = tmp_path / "bridge.sock"
    # Configured by flags here; the drain test below uses the deployment's variables.
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "bridge_main.py"), "serve", "--livekit-grpc-socket", str(socket_path),
         "--livekit-url", livekit.url], cwd=REPO,
    )
    try:
        async with trio_asyncio.open_loop(), cloud(f"unix:{socket_path}") as client:
            with trio.fail_after(30):
                while True:
                    try:
                        joined = await client.join(join_request(livekit, "terminated"))
                        break
                    except OSError:  # not listening yet
                        await trio.sleep(0.2)
            assert joined.success, joined.error
            assert await list_participants(livekit, "room-terminated") == [bridge_identity("terminated")]
            process.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(lambda: process.wait(timeout=30)) == 0
            with trio.fail_after(10):
                while await list_participants(livekit, "room-terminated"):
                    await trio.sleep(0.1)
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
                        assert await stream.status() == Status.UNAVAILABLE
                        await playing.done.wait()
                    assert playing.status == Status.UNAVAILABLE and "shutting down" in playing.message
                    health = await client.health()
                    assert health.status == pb.HealthCheckResponseServingStatus.NOT_SERVING
                    with pytest.raises(GRPCError) as refused:
                        await client.status("drained")
                    assert refused.value.status == Status.UNAVAILABLE
                exit_code = await trio.to_thread.run_sync(lambda: process.wait(timeout=30))
                assert exit_code == 0 and trio.current_time() - signalled_at < 5
                with trio.fail_after(10):
                    while await list_participants(livekit, "room-drained"):
                        await trio.sleep(0.1)
    finally:
        if process.poll() is None:
            process.kill()
