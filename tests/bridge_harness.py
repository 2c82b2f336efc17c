"""What the end-to-end tests drive the bridge with: a phone in the room and a cloud client.

The phone is a real LiveKit participant (livekit rtc) that sends lossy data
packets as the glasses' phone app does; the cloud is a real gRPC client
(grpclib over TCP or a Unix socket). Both are asyncio libraries, wrapped here
so tests are plain Trio.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pathlib
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpclib.client
import jwt
import grpclib.const
import grpclib.exceptions
import h2.exceptions
import numpy as np
import pytest
import trio
import trio_asyncio
from livekit import api, rtc
from trio_asyncio import aio_as_trio

from actors.bridge import RunningBridge, run_bridge
from actors.livekit.dev_server import DevLiveKit
from actors.livekit.room import joined_room
from listener_process import RECORD
from proto.mentra.livekit import bridge as pb
from actors.operations.settings import BridgeSettings
from proto.mentra.livekit.bridge import debug as debug_pb

SERVICE = "/mentra.livekit.bridge.LiveKitBridge/"
REPO = pathlib.Path(__file__).resolve().parent.parent
#: grpcurl, built into the git-ignored .tools folder by `just setup`.
GRPCURL = REPO / ".tools" / "bin" / "grpcurl"
PACKET_PCM_BYTES = 3200  # 100 ms of 16 kHz mono PCM16


@contextlib.asynccontextmanager
async def running_bridge(settings: BridgeSettings) -> AsyncIterator[RunningBridge]:
    """The bridge in this process, on an asyncio loop of its own (trio-asyncio),
    which the test can use too; stopped when the block ends."""
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        yield await nursery.start(run_bridge, settings)
        nursery.cancel_scope.cancel()


async def join_once_listening(client: Cloud, request: pb.JoinRoomRequest, seconds: float = 30) -> pb.JoinRoomResponse:
    """JoinRoom, retried while the bridge process is not listening yet."""
    with trio.fail_after(seconds):
        while True:
            try:
                return await client.join(request)
            except OSError:  # not listening yet
                await trio.sleep(0.2)


async def expect_status(status: grpclib.const.Status, call: Any) -> str:
    """Await ``call``, which must fail with ``status``; its message."""
    with pytest.raises(grpclib.exceptions.GRPCError) as caught:
        await call
    assert caught.value.status == status, caught.value
    return caught.value.message or ""


async def grpcurl(address: str, *words: str, flags: tuple[str, ...] = ("-plaintext",),
                  data: str | None = None) -> subprocess.CompletedProcess:
    """Run ``grpcurl FLAGS [-d DATA] ADDRESS WORDS...`` against the bridge at
    ``address`` ("host:port" or "unix:/path"); its outcome, whatever it is."""
    target = ["-unix", address[len("unix:"):]] if address.startswith("unix:") else [address]
    return await trio.run_process(
        [str(GRPCURL), "-max-time", "20", *flags, *(["-d", data] if data is not None else []), *target, *words],
        capture_stdout=True, capture_stderr=True, check=False)


async def tree_command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``bridge_main.py tree ARGS`` with ``env``; its outcome, whatever it is."""
    return await trio.run_process([sys.executable, str(REPO / "bridge_main.py"), "tree", *args], env=env,
                                  capture_stdout=True, capture_stderr=True, check=False)


def token(livekit: DevLiveKit, identity: str, room: str, *, room_join: bool = True) -> str:
    """A token of ``livekit`` for ``identity`` in ``room``, as the cloud mints
    it (livekit-api). livekit-api refuses to mint a joining token without an
    identity or room; one is signed here from the same claims, as a
    hand-rolled minter would, so that tests can see the bridge refuse it."""
    grants = api.VideoGrants(room_join=room_join, room=room, can_publish=True, can_subscribe=True,
                             can_publish_data=True)
    access = api.AccessToken(livekit.api_key, livekit.api_secret).with_identity(identity).with_grants(grants)
    if not room_join or (identity and room):
        return access.to_jwt()
    claims = dict(access.claims.asdict(), sub=identity, iss=livekit.api_key, exp=int(time.time()) + 3600)
    return jwt.encode(claims, livekit.api_secret, algorithm="HS256")


def forged(token: str) -> str:
    """``token`` with its signature broken: its claims read as before, and
    LiveKit refuses it (a JoinRoom that fails at LiveKit, not at the front door)."""
    header, claims, signature = token.split(".")
    return f"{header}.{claims}.{signature[::-1]}"


def bridge_identity(user_id: str) -> str:
    return f"cloud-agent:{user_id}"


def join_request(livekit: DevLiveKit, user_id: str, room: str | None = None, **overrides: Any) -> pb.JoinRoomRequest:
    room = room or f"room-{user_id}"
    fields = dict(user_id=user_id, room_name=room, token=token(livekit, bridge_identity(user_id), room),
                  livekit_url=livekit.url, target_identity=user_id)
    fields.update(overrides)
    return pb.JoinRoomRequest(**fields)


def numbered_pcm(counter: int) -> bytes:
    """100 ms of PCM that starts with its counter (read back by ``counter_of``)."""
    return struct.pack("<Q", counter) + bytes(PACKET_PCM_BYTES - 8)


def counter_of(chunk: pb.AudioChunk) -> int:
    return struct.unpack_from("<Q", chunk.pcm_data)[0]


def pcm_packet(index: int) -> bytes:
    """100 ms of PCM whose bytes say which packet they are."""
    return bytes((index + offset) % 251 for offset in range(PACKET_PCM_BYTES))


class Phone:
    """The user's phone in the room: identity = user id, sends microphone packets."""

    def __init__(self, room: rtc.Room) -> None:
        self.room = room

    async def send_mic(self, sequence: int, pcm: bytes) -> None:
        await aio_as_trio(self.room.local_participant.publish_data)(bytes([sequence % 256]) + pcm, reliable=False)

    async def keep_talking(self, interval: float = 0.1) -> None:
        """Send a packet every ``interval`` s until cancelled (lossy packets may
        be lost, so a test that needs one heard keeps talking)."""
        for index in itertools.count():
            await self.send_mic(index, pcm_packet(index))
            await trio.sleep(interval)


@contextlib.asynccontextmanager
async def phone_in_room(livekit: DevLiveKit, user_id: str, room: str | None = None,
                        subscribe: dict[str, Any] | None = None, auto_subscribe: bool = False,
                        ) -> AsyncIterator[Phone]:
    room = room or f"room-{user_id}"
    async with joined_room(livekit.url, token(livekit, user_id, room), connect_timeout=10,
                           teardown_timeout=5, on_data=lambda sender, payload, received_at: None,
                           subscribe=subscribe or {}, auto_subscribe=auto_subscribe) as lk_room:
        yield Phone(lk_room)


LISTEN_RATE = 48_000
FRAME_SAMPLES = LISTEN_RATE // 100  # the SDK hands out 10 ms frames


class Heard:
    """What a listener heard on one track: 10 ms frames with their arrival times."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.arrivals: list[float] = []
        #: RMS of each frame, computed once on arrival.
        self.levels: list[float] = []

    def add(self, frame: np.ndarray, arrival: float) -> None:
        self.frames.append(frame)
        self.arrivals.append(arrival)
        self.levels.append(float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))))

    def loud(self, threshold: float = 1000.0, *, start: int = 0) -> list[int]:
        """Indices (from ``start``) of frames with sound in them (RMS above ``threshold``)."""
        return [i for i in range(start, len(self.levels)) if self.levels[i] > threshold]

    def loud_ms(self, *, after: float = 0.0) -> int:
        return 10 * sum(1 for i in self.loud() if self.arrivals[i] >= after)

    def last_loud_at(self) -> float | None:
        loud = self.loud()
        return self.arrivals[loud[-1]] if loud else None

    def samples(self, start_frame: int = 0) -> np.ndarray:
        return np.concatenate(self.frames[start_frame:]) if self.frames[start_frame:] else np.zeros(0)


@contextlib.asynccontextmanager
async def listener_in_room(livekit: DevLiveKit, user_id: str, identity: str | None = None,
                           ) -> AsyncIterator[dict[str, Heard]]:
    """The user's phone (or another participant, by ``identity``) as a listener
    in the user's room, in a process of its own (tests/listener_process.py):
    it subscribes to every track the bridge publishes, as the phone app does,
    and what it hears fills in the yielded dict, by track name, with each
    frame's arrival time on the clock of time.monotonic()."""
    heard: dict[str, Heard] = {}
    joined = trio.Event()
    room = f"room-{user_id}"
    process = await trio.lowlevel.open_process(
        [sys.executable, str(pathlib.Path(__file__).with_name("listener_process.py")), livekit.url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env=dict(os.environ, LISTENER_TOKEN=token(livekit, identity or user_id, room)))

    async def read_records() -> None:
        buffer = bytearray()
        while chunk := await process.stdout.receive_some(1 << 16):
            buffer += chunk
            while len(buffer) >= RECORD.size:
                arrival, name_length, samples = RECORD.unpack_from(buffer)
                end = RECORD.size + name_length + 2 * samples
                if len(buffer) < end:
                    break
                name = bytes(buffer[RECORD.size:RECORD.size + name_length]).decode()
                if name:
                    frame = np.frombuffer(bytes(buffer[RECORD.size + name_length:end]), dtype=np.int16)
                    heard.setdefault(name, Heard()).add(frame, arrival)
                else:
                    joined.set()
                del buffer[:end]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_records)  # until the process's output ends
        try:
            with trio.fail_after(20):
                await joined.wait()
            yield heard
        finally:
            with trio.CancelScope(shield=True):
                # It leaves the room and exits; its output is read to the end meanwhile,
                # so it never blocks on a full pipe.
                await process.stdin.aclose()
                with trio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()


class Cloud:
    """The cloud's gRPC client: one HTTP/2 connection, as the Node cloud keeps."""

    def __init__(self, address: str, metadata: dict[str, str] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        #: Sent with every call (e.g. the authorization of a bridge with BRIDGE_AUTH_TOKEN).
        self.metadata = metadata
        if address.startswith("unix:"):
            self.channel = grpclib.client.Channel(path=address[len("unix:"):])
        else:
            host, port = address.rsplit(":", 1)
            self.channel = grpclib.client.Channel(host, int(port), ssl=tls)

    async def close(self) -> None:
        self.channel.close()

    async def unary(self, rpc: str, request: Any, reply_type: type, timeout: float = 30) -> Any:
        async def call() -> Any:
            path = rpc if rpc.startswith("/") else SERVICE + rpc
            async with self.channel.request(path, grpclib.const.Cardinality.UNARY_UNARY,
                                            type(request), reply_type, timeout=timeout,
                                            metadata=self.metadata) as stream:
                await stream.send_message(request, end=True)
                return await stream.recv_message()

        return await aio_as_trio(call)()

    async def join(self, request: pb.JoinRoomRequest) -> pb.JoinRoomResponse:
        return await self.unary("JoinRoom", request, pb.JoinRoomResponse)

    async def leave(self, user_id: str, reason: str = "test") -> pb.LeaveRoomResponse:
        return await self.unary("LeaveRoom", pb.LeaveRoomRequest(user_id=user_id, reason=reason), pb.LeaveRoomResponse)

    async def status(self, user_id: str) -> pb.BridgeStatusResponse:
        return await self.unary("GetStatus", pb.BridgeStatusRequest(user_id=user_id), pb.BridgeStatusResponse)

    async def health(self) -> pb.HealthCheckResponse:
        return await self.unary("HealthCheck", pb.HealthCheckRequest(), pb.HealthCheckResponse)

    async def play(self, request: pb.PlayAudioRequest, call: PlayCall | None = None) -> PlayCall:
        """Run one PlayAudio call to its end; ``call`` fills in as events arrive."""
        call = call or PlayCall()

        async def run() -> None:
            async with self.channel.request(SERVICE + "PlayAudio", grpclib.const.Cardinality.UNARY_STREAM,
                                            pb.PlayAudioRequest, pb.PlayAudioEvent, timeout=120,
                                            metadata=self.metadata) as stream:
                await stream.send_message(request, end=True)
                while (event := await stream.recv_message()) is not None:
                    call.events.append(event)
                    if event.type == pb.PlayAudioEventEventType.STARTED:
                        call.started_at = time.monotonic()
                        call.started.set()

        try:
            await aio_as_trio(run)()
            call.status = grpclib.const.Status.OK
        except grpclib.exceptions.GRPCError as error:
            call.status, call.message = error.status, error.message or ""
        finally:
            call.done.set()
        return call

    async def stop_audio(self, user_id: str, *, request_id: str = "", track_id: int = -1,
                         reason: str = "test") -> pb.StopAudioResponse:
        return await self.unary("StopAudio", pb.StopAudioRequest(user_id=user_id, request_id=request_id,
                                                                 reason=reason, track_id=track_id),
                                pb.StopAudioResponse)

    async def actor_tree(self) -> dict[str, Any]:
        reply = await self.unary("/mentra.livekit.bridge.debug.BridgeDebug/DescribeActors",
                                 debug_pb.DescribeActorsRequest(), debug_pb.DescribeActorsResponse)
        return json.loads(reply.tree_json)

    @contextlib.asynccontextmanager
    async def audio_stream(self, user_id: str) -> AsyncIterator[AudioStream]:
        request = self.channel.request(SERVICE + "StreamAudio", grpclib.const.Cardinality.STREAM_STREAM,
                                       pb.AudioChunk, pb.AudioChunk, metadata=self.metadata)
        stream = await aio_as_trio(request.__aenter__)()
        try:
            audio = AudioStream(stream)
            await audio.send(pb.AudioChunk(user_id=user_id))
            yield audio
        finally:
            # Hang up, as a cloud does when done; how the call ended is what the
            # test read from it, not what hanging up reports.
            with trio.CancelScope(shield=True), contextlib.suppress(
                grpclib.exceptions.GRPCError, grpclib.exceptions.StreamTerminatedError,
                grpclib.exceptions.ProtocolError,
            ):
                if not stream._cancel_done and stream._stream.closable:
                    await aio_as_trio(stream.cancel)()
                await aio_as_trio(request.__aexit__)(None, None, None)


class PlayCall:
    """One PlayAudio call, seen from the cloud: its events and how it ended."""

    def __init__(self) -> None:
        self.events: list[pb.PlayAudioEvent] = []
        self.status: grpclib.const.Status | None = None
        self.message = ""
        self.started = trio.Event()
        self.started_at = 0.0  # time.monotonic() when STARTED arrived
        self.done = trio.Event()

    @property
    def final(self) -> pb.PlayAudioEvent:
        return self.events[-1]

    def kinds(self) -> list[str]:
        return [pb.PlayAudioEventEventType(event.type).name for event in self.events]


class AudioStream:
    """One StreamAudio call, seen from the cloud."""

    def __init__(self, stream: grpclib.client.Stream) -> None:
        self.stream = stream

    async def send(self, chunk: pb.AudioChunk) -> None:
        await aio_as_trio(self.stream.send_message)(chunk)

    async def recv(self) -> pb.AudioChunk | None:
        try:
            return await aio_as_trio(self.stream.recv_message)()
        except grpclib.exceptions.StreamTerminatedError:
            # The server answered with a status and then reset the stream
            # (RST_STREAM NO_ERROR, valid HTTP/2 that grpc-js reads as the
            # status); grpclib's client reports the reset, so read the status.
            self.stream._maybe_raise()
            raise

    async def status(self, on_chunk: Callable[[pb.AudioChunk], None] = lambda chunk: None) -> grpclib.const.Status:
        """Wait for the call to end and return its status (from its trailers
        too, when the server had sent messages before it); ``on_chunk`` sees
        each message that arrives meanwhile."""
        try:
            while (chunk := await self.recv()) is not None:
                on_chunk(chunk)
            await aio_as_trio(self._trailing_status)()
        except grpclib.exceptions.GRPCError as error:
            return error.status
        return grpclib.const.Status.OK

    async def _trailing_status(self) -> None:
        """Raises GRPCError for a status other than OK in the call's trailers."""
        stream = self.stream
        if stream._recv_trailing_metadata_done:  # a trailers-only answer: recv already raised for it
            return
        if not stream._end_done:
            # The server may have closed the stream already (its trailers are in): then there is nothing to end.
            with contextlib.suppress(grpclib.exceptions.StreamTerminatedError, grpclib.exceptions.ProtocolError,
                                     h2.exceptions.StreamClosedError):
                await stream.end()
        if not stream._end_done:
            # Ending our side failed: the server closed the connection right after its trailers (a bridge
            # that exits once its streams ended). The trailers are in; read them.
            trailers = await stream._stream.recv_trailers()
            stream._raise_for_grpc_status(*stream._process_grpc_status(dict(trailers)))
            return
        await stream.recv_trailing_metadata()


@contextlib.asynccontextmanager
async def cloud(address: str, metadata: dict[str, str] | None = None,
                tls: ssl.SSLContext | None = None) -> AsyncIterator[Cloud]:
    client = Cloud(address, metadata, tls)
    try:
        yield client
    finally:
        await client.close()


async def _room_service(livekit: DevLiveKit, call: Any) -> Any:
    async def with_api() -> Any:
        async with api.LiveKitAPI(livekit.url.replace("ws://", "http://"), livekit.api_key, livekit.api_secret) as lk:
            return await call(lk.room)

    return await aio_as_trio(with_api)()


async def list_participants(livekit: DevLiveKit, room: str) -> list[str]:
    """Identities in ``room``, as the LiveKit server itself reports them."""
    async def call(rooms: Any) -> list[str]:
        reply = await rooms.list_participants(api.ListParticipantsRequest(room=room))
        return [p.identity for p in reply.participants]

    return await _room_service(livekit, call)


async def until_room_is_empty(livekit: DevLiveKit, room: str, seconds: float = 10) -> None:
    """Return once LiveKit lists nobody in ``room``; fail after ``seconds``."""
    with trio.fail_after(seconds):
        while await list_participants(livekit, room):
            await trio.sleep(0.1)


async def participant_sids(livekit: DevLiveKit, room: str) -> dict[str, str]:
    """Identity -> participant sid in ``room``, as the LiveKit server reports
    them: a sid that stays the same is the same connection."""
    async def call(rooms: Any) -> dict[str, str]:
        reply = await rooms.list_participants(api.ListParticipantsRequest(room=room))
        return {p.identity: p.sid for p in reply.participants}

    return await _room_service(livekit, call)


async def remove_participant(livekit: DevLiveKit, room: str, identity: str) -> None:
    """Kick a participant out of ``room`` from the server side."""
    async def call(rooms: Any) -> None:
        await rooms.remove_participant(api.RoomParticipantIdentity(room=room, identity=identity))

    await _room_service(livekit, call)


def about_user(records: list[dict], user_id: str) -> list[dict]:
    """The records whose message names ``user_id``, after asserting that each carries it as a field."""
    about = [record for record in records if user_id in record["message"]]
    assert all(record["user_id"] == user_id for record in about), \
        [record for record in about if record["user_id"] != user_id]
    return about


def accepted_sockets_on(port: int) -> list[socket.socket]:
    """This process's TCP connections accepted on ``port`` (the kernel's own
    sockets, found through /proc/self/fd), each as a duplicate to inspect."""
    found, seen = [], set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            inode = os.readlink(f"/proc/self/fd/{fd}")
            if not inode.startswith("socket:") or inode in seen:  # (a duplicate made here may reuse a listed fd)
                continue
            seen.add(inode)
            candidate = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if (candidate.family in (socket.AF_INET, socket.AF_INET6) and candidate.type == socket.SOCK_STREAM
                    and candidate.getsockname()[1] == port and candidate.getpeername()):
                found.append(candidate)
                continue
        except OSError:  # the listener itself has no peer
            pass
        candidate.close()
    return found


async def nodelay_of_accepted(port: int, seconds: float = 5) -> list[int]:
    """TCP_NODELAY of each connection this process accepted on ``port``, read
    once there is one and all have it set, or else after ``seconds`` (a server
    sets it just after accepting, in its own thread or loop)."""
    deadline = trio.current_time() + seconds
    while True:
        accepted = accepted_sockets_on(port)
        try:
            values = [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in accepted]
        finally:
            for s in accepted:
                s.close()
        if (values and all(values)) or trio.current_time() > deadline:
            return values
        await trio.sleep(0.01)
