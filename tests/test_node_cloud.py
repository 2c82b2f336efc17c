"""The cloud's real client stack (@grpc/grpc-js + @grpc/proto-loader, loading
proto/livekit_bridge.proto) against the bridge and a real livekit-server."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import trio

from bridge_harness import bridge_identity, join_request, phone_in_room

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
    env = dict(os.environ, USER_ID=user, ROOM=request.room_name, JOIN_TOKEN=request.token, LIVEKIT_URL=livekit.url)
    async with phone_in_room(livekit, user, request.room_name) as phone, trio.open_nursery() as nursery:
        nursery.start_soon(phone.keep_talking)
        with trio.fail_after(120):
            done = await trio.run_process(["node", "cloud.mjs", bridge.address, PROTO], cwd=NODE_CLIENT, env=env,
                                          capture_stdout=True, check=False)
        nursery.cancel_scope.cancel()
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
    assert result["status"]["connected"] is True
    assert result["leave"] == {"success": True, "error": ""}
    assert result["leave_again"] == {"success": False, "error": "session not found"}
