"""`livekit-bridge health`, the probe a container's HEALTHCHECK runs: it asks
the running bridge grpc.health.v1 Health/Check where the bridge's own settings
say it listens, with its token, and exits 0 only on SERVING."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import trio

from actors.operations.settings import BridgeSettings
from bridge_harness import running_bridge

COMMAND = pathlib.Path(sys.executable).parent / "livekit-bridge"  # installed by `just venv`
TOKEN = "health-probe-token"
#: The bridge's settings this test sets; the rest of the environment is passed on.
REACH = ("PORT", "BRIDGE_HOST", "LIVEKIT_GRPC_SOCKET", "BRIDGE_AUTH_TOKEN", "BRIDGE_TLS_CERT")


async def health(**settings: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name not in REACH} | settings
    return await trio.run_process([str(COMMAND), "health", "--timeout", "5"], env=env, capture_stdout=True,
                                  capture_stderr=True, check=False)


async def test_health_over_tcp_needs_the_token_and_says_serving_until_the_bridge_drains(livekit) -> None:
    settings = BridgeSettings(host="127.0.0.1", port=0, auth_token=TOKEN, default_livekit_url=livekit.url,
                              sdk_workers=0)
    async with running_bridge(settings) as running:
        port = running.address.rsplit(":", 1)[1]
        serving = await health(PORT=port, BRIDGE_AUTH_TOKEN=TOKEN)
        assert (serving.returncode, serving.stdout) == (0, b"SERVING\n"), serving

        no_token = await health(PORT=port)
        assert no_token.returncode == 1 and b"UNAUTHENTICATED" in no_token.stderr, no_token
        assert b"set BRIDGE_AUTH_TOKEN" in no_token.stderr
        wrong_token = await health(PORT=port, BRIDGE_AUTH_TOKEN="not-" + TOKEN)
        assert wrong_token.returncode == 1 and b"UNAUTHENTICATED" in wrong_token.stderr, wrong_token
        assert TOKEN.encode() not in wrong_token.stderr + wrong_token.stdout

        await running.front_door.drain(timeout=1)
        draining = await health(PORT=port, BRIDGE_AUTH_TOKEN=TOKEN)
        assert (draining.returncode, draining.stdout) == (1, b"NOT_SERVING\n"), draining

    absent = await health(PORT=port, BRIDGE_AUTH_TOKEN=TOKEN)
    assert absent.returncode == 1 and f"cannot reach the bridge at 127.0.0.1:{port}".encode() in absent.stderr, absent


async def test_health_over_the_unix_socket(livekit, tmp_path) -> None:
    socket_path = str(tmp_path / "bridge.sock")
    settings = BridgeSettings(unix_socket=socket_path, default_livekit_url=livekit.url, sdk_workers=0)
    async with running_bridge(settings):
        serving = await health(LIVEKIT_GRPC_SOCKET=socket_path)
        assert (serving.returncode, serving.stdout) == (0, b"SERVING\n"), serving
        # The socket is the bridge's: a probe aimed at TCP finds nothing there.
        elsewhere = await health(PORT="1")
        assert elsewhere.returncode == 1 and b"cannot reach the bridge at 127.0.0.1:1" in elsewhere.stderr
    absent = await health(LIVEKIT_GRPC_SOCKET=socket_path)
    assert absent.returncode == 1 and f"unix:{socket_path}".encode() in absent.stderr, absent
