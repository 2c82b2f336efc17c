"""The bridge as the deployment runs it: a process that stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import trio
import trio_asyncio

from bridge_harness import bridge_identity, cloud, join_request, list_participants

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def test_sigterm_leaves_every_room_and_exits_cleanly(livekit, tmp_path) -> None:
    socket_path = tmp_path / "bridge.sock"
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "bridge_main.py"), "serve"],
        env=dict(os.environ, LIVEKIT_GRPC_SOCKET=str(socket_path), LIVEKIT_URL=livekit.url), cwd=REPO,
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
