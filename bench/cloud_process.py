"""The cloud in a process of its own: every user's JoinRoom and StreamAudio on
one HTTP/2 connection to the bridge, as the cloud's client holds them.

Usage: python bench/cloud_process.py HOST:PORT|unix:PATH   (env LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET)
Commands (bench/receiver_commands.py):
  {"op": "join", "users": [...]}     all at once; each user's StreamAudio opens when its join answers
  {"op": "replace", "users": [...]}  JoinRoom again, one user after the other
  {"op": "leave", "users": [...]}    one after the other
  {"op": "counters"}                 the bridge's session counters, summed (DescribeActors)
  {"op": "supervisor"}               the bridge's session supervisor's counters (joins, adoptions, ...)
  {"op": "arrivals"}                 the stamped packets received since the last time
The audio path uses the protobuf runtime's AudioChunk, so the client's own
decoding adds about a microsecond to what is measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import grpclib.const
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from livekit import api

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from actors.operations.tree_view import walk  # noqa: E402
from proto.mentra.livekit import bridge as pb  # noqa: E402
from proto.mentra.livekit.bridge import debug as debug_pb  # noqa: E402
from proto.runtime_messages import AudioChunk  # noqa: E402
from receiver_commands import join_all_at_once, serve_commands  # noqa: E402
from stamps import Arrivals  # noqa: E402


def join_request(user: str) -> pb.JoinRoomRequest:
    room = f"room-{user}"
    grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True, can_publish_data=True)
    token = (api.AccessToken(os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"])
             .with_identity(f"cloud-agent:{user}").with_grants(grants).to_jwt())
    return pb.JoinRoomRequest(user_id=user, room_name=room, token=token, livekit_url=os.environ["LIVEKIT_URL"],
                              target_identity=user)


class Cloud:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.stub = pb.LiveKitBridgeStub(channel)
        self.debug = debug_pb.BridgeDebugStub(channel)
        self.arrivals = Arrivals()
        self.streams: dict[str, asyncio.Task[None]] = {}

    async def stream(self, user: str) -> None:
        """The user's StreamAudio, until the bridge ends it (a replacing JoinRoom does)."""
        try:
            async with self.channel.request("/mentra.livekit.bridge.LiveKitBridge/StreamAudio",
                                            grpclib.const.Cardinality.STREAM_STREAM, AudioChunk,
                                            AudioChunk) as call:
                await call.send_message(AudioChunk(user_id=user))
                while (chunk := await call.recv_message()) is not None:
                    self.arrivals.record(user, chunk.pcm_data)
                await call.end()
        except (GRPCError, ProtocolError, StreamTerminatedError) as error:
            print(f"stream of {user} ended: {error!r}", file=sys.stderr)

    async def join_one(self, user: str) -> tuple[float, str]:
        started = time.perf_counter()
        try:
            answer = await self.stub.join_room(join_request(user))
        except GRPCError as error:  # e.g. DEADLINE_EXCEEDED when the bridge is overloaded
            return (time.perf_counter() - started) * 1000, f"{error.status.name}: {error.message}"
        took = (time.perf_counter() - started) * 1000
        if answer.success:  # as the cloud does: a new StreamAudio for each JoinRoom
            if user in self.streams:
                self.streams[user].cancel()
            self.streams[user] = asyncio.ensure_future(self.stream(user))
        return took, "" if answer.success else answer.error

    async def join(self, command: dict[str, Any]) -> dict[str, Any]:
        return await join_all_at_once(command["users"], self.join_one)

    async def replace(self, command: dict[str, Any]) -> dict[str, Any]:
        results = [await self.join_one(user) for user in command["users"]]
        return {"ms": [took for took, _ in results], "failed": [error for _, error in results if error]}

    async def leave(self, command: dict[str, Any]) -> dict[str, Any]:
        took = []
        for user in command["users"]:
            stream = self.streams.pop(user, None)
            started = time.perf_counter()
            await self.stub.leave_room(pb.LeaveRoomRequest(user_id=user))
            took.append((time.perf_counter() - started) * 1000)
            if stream is not None:
                stream.cancel()
        return {"ms": took}

    async def counters(self, command: dict[str, Any]) -> dict[str, Any]:
        tree = json.loads((await self.debug.describe_actors(debug_pb.DescribeActorsRequest())).tree_json)
        sums: dict[str, int] = {}
        for node in walk(tree["children"]):
            if node["name"].startswith("session:"):
                for key, value in node["counters"].items():
                    sums[key] = sums.get(key, 0) + value
        return sums

    async def supervisor(self, command: dict[str, Any]) -> dict[str, Any]:
        tree = json.loads((await self.debug.describe_actors(debug_pb.DescribeActorsRequest())).tree_json)
        return next(node["counters"] for node in walk(tree["children"]) if node["name"] == "sessions")

    async def take_arrivals(self, command: dict[str, Any]) -> dict[str, Any]:
        return self.arrivals.take()


async def main(address: str) -> None:
    if address.startswith("unix:"):
        channel = Channel(path=address[len("unix:"):])
    else:
        host, port = address.rsplit(":", 1)
        channel = Channel(host, int(port))
    cloud = Cloud(channel)
    await serve_commands({"join": cloud.join, "replace": cloud.replace, "leave": cloud.leave,
                          "counters": cloud.counters, "supervisor": cloud.supervisor,
                          "arrivals": cloud.take_arrivals})
    cloud.channel.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
