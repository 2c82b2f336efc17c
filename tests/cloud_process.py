"""A stand-in for one cloud process: joins a user, streams its audio, and runs
until killed. The incident test kills it with SIGKILL, so it never leaves.

Usage: python tests/cloud_process.py HOST:PORT USER_ID ROOM   (env JOIN_TOKEN, LIVEKIT_URL)
"""

from __future__ import annotations

import asyncio
import os
import sys

from grpclib.client import Channel

from proto.mentra.livekit.bridge import AudioChunk, JoinRoomRequest, LiveKitBridgeStub


async def main(address: str, user_id: str, room: str) -> None:
    host, port = address.rsplit(":", 1)
    channel = Channel(host, int(port))
    stub = LiveKitBridgeStub(channel)
    joined = await stub.join_room(JoinRoomRequest(
        user_id=user_id, room_name=room, token=os.environ["JOIN_TOKEN"],
        livekit_url=os.environ["LIVEKIT_URL"], target_identity=user_id,
    ))
    print(f"joined {joined.success} {joined.error}", flush=True)

    async def outgoing():
        yield AudioChunk(user_id=user_id)
        await asyncio.Event().wait()

    received = 0
    async for _chunk in stub.stream_audio(outgoing()):
        received += 1
        if received == 1:
            print("receiving audio", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
