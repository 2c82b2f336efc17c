"""The live actor tree for people (`bridge_main.py tree`) and machines
(--json, WatchActors), against a running bridge with real sessions."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import trio
from grpclib.const import Status
from trio_asyncio import aio_as_trio

from actors.operations.tree_view import render
from bridge_harness import REPO, cloud, expect_status, join_request, tree_command
from proto.mentra.livekit.bridge import debug as debug_pb

async def tree_output(bridge, *args: str) -> str:
    """What `bridge_main.py tree ARGS` prints of ``bridge``, which it must reach."""
    port = bridge.address.rsplit(":", 1)[1]
    done = await tree_command(*args, env=dict(os.environ, PORT=port, BRIDGE_LOG_LEVEL="WARNING"))
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_tree_shows_each_actor_on_a_line_and_one_user_on_request(bridge, livekit) -> None:
    async with cloud(bridge.address) as client:
        for user in ("ann", "bob"):
            assert (await client.join(join_request(livekit, user))).success
        async with client.audio_stream("ann"):
            text = await tree_output(bridge)
            lines = text.splitlines()
            assert lines[0].startswith("bridge  (1 StreamAudio calls open)")
            [ann] = [line for line in lines if line.strip().startswith("session:ann ")]
            assert ann.startswith("    session:ann  UserSession  running  up ")
            assert "connected 1  stream 1  in 0  out 0  lost 0  dropped 0" in ann and "link connected" in ann
            assert any(line.startswith("  sessions  SessionSupervisor  running") and "sessions 2" in line
                       for line in lines)
            only_bob = (await tree_output(bridge, "--user", "bob")).splitlines()
            assert only_bob[0].startswith("link:bob  RoomLink  running") and "connected 1  rejoins 0" in only_bob[0]
            assert "link connected  room room-bob" in only_bob[0]
            assert only_bob[1].startswith("session:bob  UserSession  running") and len(only_bob) == 2
            assert (await tree_output(bridge, "--user", "nobody")) == "no session for user 'nobody'\n"
            snapshot = json.loads(await tree_output(bridge, "--json"))
            assert snapshot["front_door"]["active_streams"] == 1
            bob = json.loads(await tree_output(bridge, "--json", "--user", "bob"))
            assert [node["name"] for node in bob["children"]] == ["link:bob", "session:bob"]


def test_tree_says_what_to_check_when_no_bridge_answers(tmp_path: pathlib.Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "bridge_main.py"), "tree", "--livekit-grpc-socket",
                           str(tmp_path / "absent.sock")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith(f"bridge: cannot reach the bridge at unix:{tmp_path / 'absent.sock'}"), done.stderr
    assert "Traceback" not in done.stderr


async def test_watch_actors_streams_snapshots_at_the_interval_asked(bridge) -> None:
    async with cloud(bridge.address) as client:
        stub = debug_pb.BridgeDebugStub(client.channel)

        async def snapshots(interval: float, count: int) -> list[dict]:
            taken = []
            async for reply in stub.watch_actors(debug_pb.WatchActorsRequest(interval_seconds=interval)):
                taken.append(json.loads(reply.tree_json))
                if len(taken) == count:
                    break
            return taken

        with trio.fail_after(10):
            started = trio.current_time()
            taken = await aio_as_trio(snapshots)(0.2, 3)
            assert trio.current_time() - started >= 0.4  # three snapshots, two intervals apart
        assert all(snapshot["name"] == "bridge" for snapshot in taken)
        await expect_status(Status.INVALID_ARGUMENT, aio_as_trio(snapshots)(0.001, 1))


def test_render_colours_states_and_says_why_an_actor_was_given_up() -> None:
    tree = {"children": [{"name": "sessions", "kind": "SessionSupervisor", "state": "running", "started_at": 0,
                          "restarts": 0, "mailbox": {"depth": 0, "capacity": 64}, "counters": {"sessions": 1},
                          "details": {}, "children": [
                              {"name": "session:x", "kind": "UserSession", "state": "crashed", "started_at": 0,
                               "restarts": 3, "mailbox": {"depth": 2, "capacity": 64},
                               "counters": {"connected": 0}, "details": {"link": "disconnected"},
                               "last_error": "RuntimeError('boom')", "given_up": "4 ends within 60 s",
                               "children": []}]}]}
    text = render(tree, colour=True, now=7325)
    assert "\x1b[31mcrashed\x1b[0m" in text and "\x1b[32mrunning\x1b[0m" in text
    line = text.splitlines()[2]
    assert line.startswith("    session:x  UserSession") and "up 2h02m" in line and "restarts 3" in line
    assert "mailbox 2/64" in line and "last error: RuntimeError('boom')" in line and "given up: 4 ends" in line
