"""The cloud's real client stack (@grpc/grpc-js + @grpc/proto-loader, loading
proto/livekit_bridge.proto) against the bridge and a real livekit-server."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import pytest
import trio

from audio_fixtures import tone, wav
from bridge_harness import bridge_identity, join_request, phone_in_room
from http_audio import audio_http_server

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_CLIENT = os.path.join(HERE, "node_cloud")
PROTO = os.path.join(os.path.dirname(HERE), "proto", "livekit_bridge.proto")

pytestmark = pytest.mark.skipif(
    not os.path.isdir(os.path.join(NODE_CLIENT, "node_modules")) or shutil.which("node") is None,
    reason="node or tests/node_cloud/node_modules missing (just test installs them)",
)


async def test_the_node_cloud_client_speaks_the_contract(bridge, livekit) -> None:
    user = "node-user"
    request = join_request(livekit, user)
    with audio_http_server() as server:
        audio_url = server.add("node.wav", wav(tone(16_000, 0.5, 440.0), 16_000, channels=1), "audio/wav")
        env = dict(os.environ, USER_ID=user, ROOM=request.room_name, JOIN_TOKEN=request.token,
                   LIVEKIT_URL=livekit.url, AUDIO_URL=audio_url)
        done = await run_node_cloud(bridge, livekit, user, request.room_name, env)
    assert done.returncode == 0, done
    result = json.loads(done.stdout)
    assert result["health"]["status"] == "SERVING"
    assert result["join"]["success"] and result["join"]["participant_id"] == bridge_identity(user)
    # Statuses sent as trailers-only answers followed by RST_STREAM(NO_ERROR) reach grpc-js as statuses.
    assert result["no_user_stream"]["code"] == "INVALID_ARGUMENT"
    assert result["unknown_user_stream"]["code"] == "NOT_FOUND"
    audio = result["audio_stream"]
    assert audio["code"] == "RECEIVED", audio
    assert all(chunk == {"bytes": 3200, "sample_rate": 16000, "user_id": user} for chunk in audio["received"])
    assert result["bad_chunk_stream"]["code"] == "INVALID_ARGUMENT"
    assert "12345" in result["bad_chunk_stream"]["details"]
    play = result["play"]
    assert play["code"] == "OK" and play["events"][0]["type"] == "STARTED", play
    assert play["events"][-1]["type"] == "COMPLETED" and 450 <= play["events"][-1]["duration_ms"] <= 550
    assert play["events"][0]["metadata"]["source_sample_rate"] == "16000"
    bad = result["play_bad_url"]
    assert bad["code"] == "INVALID_ARGUMENT" and [e["type"] for e in bad["events"]] == ["FAILED"], bad
    assert result["stop"] == {"success": True, "error": "", "stopped_request_id": ""}
    assert result["status"]["connected"] is True
    assert result["leave"] == {"success": True, "error": ""}
    assert result["leave_again"] == {"success": False, "error": "session not found"}


async def run_node_cloud(bridge, livekit, user: str, room: str, env: dict[str, str]) -> Any:
    """Run cloud.mjs while the user's phone talks in the room."""
    async with phone_in_room(livekit, user, room) as phone, trio.open_nursery() as nursery:
        nursery.start_soon(phone.keep_talking)
        with trio.fail_after(120):
            done = await trio.run_process(["node", "cloud.mjs", bridge.address, PROTO], cwd=NODE_CLIENT, env=env,
                                          capture_stdout=True, check=False)
        nursery.cancel_scope.cancel()
    return done
