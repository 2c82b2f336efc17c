"""The gRPC floor: the floor (bench/floor_process.py: the bare SDK, run as the
bridge runs it) that also forwards each packet over a minimal gRPC stream on
the bridge's stack (grpclib, the protobuf runtime's AudioChunk), so that the
gRPC leg's own cost is known beside the bridge's.

Usage: python bench/grpc_floor_process.py HOST:PORT|unix:PATH   (env LIVEKIT_URL)

It serves two calls of mentra.livekit.bridge.LiveKitBridge, enough for the
ladder's cloud client: JoinRoom (joins the user's room with the request's
token; no checks, no admission, no replacement) and StreamAudio (each packet
of the user's phone is sent as it arrives, from the SDK's callback straight
to the stream: no actors, no buffer but asyncio's queue). Prints "ready" once
listening; runs until stdin closes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import grpclib.const
import grpclib.server
from livekit import rtc

from actors.livekit.event_filter import receive_only_own_events
from actors.livekit.sdk_core import configure_sdk_core
from proto.mentra.livekit import bridge as pb
from proto.runtime_messages import AudioChunk

SERVICE = "/mentra.livekit.bridge.LiveKitBridge/"


class GrpcFloor:
    def __init__(self) -> None:
        self.rooms: dict[str, rtc.Room] = {}
        #: user -> the packets waiting for the user's stream (payload without its sequence byte)
        self.packets: dict[str, asyncio.Queue[bytes]] = {}

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            SERVICE + "JoinRoom": grpclib.const.Handler(self.join_room, grpclib.const.Cardinality.UNARY_UNARY,
                                                        pb.JoinRoomRequest, pb.JoinRoomResponse),
            SERVICE + "StreamAudio": grpclib.const.Handler(self.stream_audio,
                                                           grpclib.const.Cardinality.STREAM_STREAM,
                                                           AudioChunk, AudioChunk),
        }

    async def join_room(self, stream: grpclib.server.Stream) -> None:
        request = await stream.recv_message()
        user = request.user_id
        queue = self.packets.setdefault(user, asyncio.Queue())
        room = rtc.Room()
        try:
            await room.connect(request.livekit_url or os.environ["LIVEKIT_URL"], request.token,
                               rtc.RoomOptions(auto_subscribe=False))
        except rtc.ConnectError as error:
            await stream.send_message(pb.JoinRoomResponse(success=False, error=str(error)))
            return
        self.rooms[user] = room
        receive_only_own_events(room, lambda sender, payload, received_at: queue.put_nowait(payload[1:]),
                                call_soon=asyncio.get_running_loop().call_soon_threadsafe)
        await stream.send_message(pb.JoinRoomResponse(success=True))

    async def stream_audio(self, stream: grpclib.server.Stream) -> None:
        first = await stream.recv_message()
        queue = self.packets.setdefault(first.user_id, asyncio.Queue())
        while True:
            pcm = await queue.get()
            await stream.send_message(AudioChunk(pcm_data=pcm, sample_rate=16000, channels=1, user_id=first.user_id))


async def main(address: str) -> None:
    configure_sdk_core()
    server = grpclib.server.Server([GrpcFloor()])
    if address.startswith("unix:"):
        await server.start(path=address[len("unix:"):])
    else:
        host, port = address.rsplit(":", 1)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as the bridge
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, int(port)))
        await server.start(sock=listener)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
