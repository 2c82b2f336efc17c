"""The cloud's real client stack (@grpc/grpc-js + @grpc/proto-loader, loading
proto/livekit_bridge.proto) against the bridge and a real livekit-server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from typing import Any

import pytest
import trio

from audio_fixtures import tone, wav
from prometheus_client import REGISTRY

from bridge_harness import (bridge_identity, cloud, join_request, list_participants, numbered_pcm, participant_sids,
                            phone_in_room, token)
from http_audio import audio_http_server

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_CLIENT = os.path.join(HERE, "node_cloud")
PROTO = os.path.join(os.path.dirname(HERE), "proto", "livekit_bridge.proto")



@pytest.fixture(autouse=True)
def node_client_installed() -> None:
    """Nothing else runs the cloud's own client stack: without it these tests fail, they never skip."""
    if shutil.which("node") is None:
        pytest.fail("Node.js is not installed: `just setup` installs it (apt), or install nodejs and npm")
    if not os.path.isdir(os.path.join(NODE_CLIENT, "node_modules")):
        pytest.fail("tests/node_cloud/node_modules is missing: `just setup` installs it (npm ci in tests/node_cloud)")


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


async def test_a_wrong_token_from_the_node_cloud_is_refused_and_leaves_the_session_untouched(bridge, livekit) -> None:
    user = "node-refused"
    request = join_request(livekit, user)
    bad_tokens = {
        "wrong_room": token(livekit, bridge_identity(user), "room-of-someone-else"),
        "no_room_join": token(livekit, bridge_identity(user), request.room_name, room_join=False),
        "empty_identity": token(livekit, "", request.room_name),
    }
    def replacements() -> float:
        return REGISTRY.get_sample_value("bridge_joins_total", {"result": "replaced"}) or 0.0

    replaced = replacements()
    env = dict(os.environ, USER_ID=user, ROOM=request.room_name, JOIN_TOKEN=request.token, LIVEKIT_URL=livekit.url,
               BAD_TOKENS=json.dumps(bad_tokens))
    done = await run_node_cloud(bridge, livekit, user, request.room_name, env, "refusals")
    assert done.returncode == 0, done
    result = json.loads(done.stdout)
    assert result["join"]["success"], result["join"]
    refused = result["refused"]
    assert {name: answer["code"] for name, answer in refused.items()} == dict.fromkeys(bad_tokens, "INVALID_ARGUMENT")
    both = {"wrong_room": ["'room-of-someone-else'", f"'{request.room_name}'"],
            "no_room_join": ["roomJoin false or missing", f"'{request.room_name}'"],
            "empty_identity": ["identity (sub) is empty", f"'{bridge_identity(user)}'"]}
    for name, parts in both.items():
        assert all(part in refused[name]["details"] for part in parts), refused[name]
    assert result["status"]["connected"] is True and result["status"]["participant_id"] == bridge_identity(user)
    # The session the refused calls met is the one that joined: not replaced, still in its room.
    assert replacements() == replaced
    assert bridge_identity(user) in await list_participants(livekit, request.room_name)
    async with cloud(bridge.address) as client:
        assert (await client.status(user)).connected
        assert (await client.leave(user)).success


async def run_node_cloud(bridge, livekit, user: str, room: str, env: dict[str, str],
                         scenario: str = "contract") -> Any:
    """Run cloud.mjs's ``scenario`` while the user's phone talks in the room."""
    async with phone_in_room(livekit, user, room) as phone, trio.open_nursery() as nursery:
        nursery.start_soon(phone.keep_talking)
        with trio.fail_after(120):
            done = await trio.run_process(["node", "cloud.mjs", bridge.address, PROTO, scenario], cwd=NODE_CLIENT,
                                          env=env, capture_stdout=True, check=False)
        nursery.cancel_scope.cancel()
    return done


async def test_a_node_cloud_that_dies_and_comes_back_has_every_user_adopted_and_loses_no_packet(
        bridge, livekit) -> None:
    """The incident this bridge exists for: the cloud process dies without
    LeaveRoom, comes back and joins every user at once. Each user keeps the
    bridge's LiveKit connection, and what each phone said from the moment the
    cloud died reaches the new StreamAudio first, in order, each packet once."""
    users = [f"restart-{index}" for index in range(4)]
    requests = [join_request(livekit, user) for user in users]
    cloud_users = json.dumps([{"user_id": r.user_id, "room": r.room_name, "token": r.token} for r in requests])
    env = dict(os.environ, USERS=cloud_users, LIVEKIT_URL=livekit.url, WANT="30")
    adopted_before = REGISTRY.get_sample_value("bridge_joins_total", {"result": "adopted"}) or 0.0
    begun = dict.fromkeys(users, 0)  # per user: packets whose sending has begun

    async def talk(phone, user: str) -> None:
        while True:
            counter = begun[user]
            begun[user] += 1
            await phone.send_mic(counter, numbered_pcm(counter))
            await trio.sleep(0.05)

    async with contextlib.AsyncExitStack() as stack:
        phones = [await stack.enter_async_context(phone_in_room(livekit, user)) for user in users]
        nursery = await stack.enter_async_context(trio.open_nursery())
        for phone, user in zip(phones, users):
            nursery.start_soon(talk, phone, user)
        first_cloud = await trio.lowlevel.open_process(
            ["node", "cloud.mjs", bridge.address, PROTO, "hold"], cwd=NODE_CLIENT, env=env,
            stdout=subprocess.PIPE)
        with trio.fail_after(60):
            lines = b""
            while b'{"ready":true}' not in lines:
                lines += await first_cloud.stdout.receive_some()
        sids = {user: await participant_sids(livekit, f"room-{user}") for user in users}
        first_cloud.kill()  # no LeaveRoom: the cloud is gone
        # Until the bridge learns that the connection is dead (on loopback, well
        # within 0.1 s), it may still write packets into it, and they die with it.
        await trio.sleep(0.1)
        begun_when_known = dict(begun)
        await first_cloud.wait()
        await trio.sleep(1.0)  # the phones talk on while no cloud listens
        with trio.fail_after(60):
            done = await trio.run_process(["node", "cloud.mjs", bridge.address, PROTO, "rejoin"], cwd=NODE_CLIENT,
                                          env=env, capture_stdout=True, check=False)
        for user in users:  # the same connection: the same participants
            assert await participant_sids(livekit, f"room-{user}") == sids[user], user
        nursery.cancel_scope.cancel()  # (the rest of this block is cancelled: nothing more in it)
    assert done.returncode == 0, done
    result = json.loads(done.stdout)
    assert all(join["success"] and join["participant_id"] == bridge_identity(r.user_id)
               for join, r in zip(result["joins"], requests)), result["joins"]
    assert (REGISTRY.get_sample_value("bridge_joins_total", {"result": "adopted"}) or 0.0) == adopted_before + 4
    for user in users:
        counters = result["received"][user]
        first = counters[0]
        # Everything the phone began to send once the bridge could know the cloud was gone
        # arrives, in order, once (before that, see begun_when_known).
        assert first <= begun_when_known[user], (user, first, begun_when_known[user])
        assert counters == list(range(first, first + len(counters))), (user, counters)
