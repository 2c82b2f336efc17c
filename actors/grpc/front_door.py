"""The gRPC front door: each RPC becomes a message to an actor.

Handlers hold no session state. They check the request, ask the session
supervisor (or, for audio, work through the StreamLease a session hands out)
and turn the answer into a protobuf reply or a gRPC status. grpclib is asyncio
code hosted in Trio by trio-asyncio; each handler body runs as Trio code.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.const
import grpclib.server
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.check import ServiceStatus
from loguru import logger
from trio_asyncio import aio_as_trio, run_aio_future, trio_as_aio

from proto.mentra.livekit import bridge as pb
from proto.mentra.livekit.bridge import debug as debug_pb
from proto.runtime_messages import AudioChunk

from ..audio.fetch import FetchError, check_url
from ..eager_start import start_eagerly
from ..operations.live_objects import add_worker_counts, live_objects
from ..operations.metrics import (JOIN_TOKEN_IDENTITY_UNEXPECTED, MIC_FORWARDED, MIC_GRPC_WRITE, MIC_QUEUED,
                                  MIC_TO_KERNEL, RPC_SECONDS, STREAMS)
from ..operations.settings import BridgeSettings
from ..runtime import ActorGone, Child, MailboxFull
from ..session.messages import (FAULT_KINDS, SIMULATED_SCENARIOS, AtCapacity, AttachStream, CountWorkerObjects, Fault,
                                GetHealth, GetStatus, Join, Leave, NotPlayable, Play, StopPlayback, is_fault_kind)
from ..session.mic_audio import MIC_CHANNELS, MIC_SAMPLE_RATE
from ..session.playback import PlaybackEvent, PlaybackRequest
from ..session.stream_lease import CloudChunk, StreamLease
from .join_token import TokenRefused, admit_join_token, expected_identity
from .standard_services import with_standard_services
from .transport import read_message, serve_grpc, until_in_kernel

SERVICE = "/mentra.livekit.bridge.LiveKitBridge/"
DEBUG_SERVICE = "/mentra.livekit.bridge.debug.BridgeDebug/"
SUPPORTED_SAMPLE_RATES = (8_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)
#: WatchActors' snapshot interval bounds, in seconds.
MIN_WATCH_INTERVAL, MAX_WATCH_INTERVAL = 0.1, 3600.0
#: How long one batch of outgoing audio messages may take before the client counts as stuck.
SEND_GRACE_SECONDS = 2.0
#: Microphone packets sent in one go at most (3.2 KB each).
MIC_BATCH = 16
SHUTTING_DOWN = "the bridge is shutting down; connect to another instance and call JoinRoom again"

try:
    from importlib.metadata import version as _package_version

    SERVER_VERSION = _package_version("livekit-bridge")
except Exception:  # running from a source tree that was never installed
    SERVER_VERSION = "0.0.0+unknown"


class FrontDoor:
    """The LiveKitBridge service (and the BridgeDebug service) for grpclib."""

    def __init__(self, sessions: Child, settings: BridgeSettings,
                 describe_tree: Callable[[], list[dict[str, Any]]]) -> None:
        self._sessions = sessions
        self._describe_tree = describe_tree
        self._settings = settings
        self._started = time.monotonic()
        self.active_streams = 0
        #: JoinRoom tokens admitted whose identity is not cloud-agent:<user_id> (shown in the tree).
        self.unexpected_token_identities = 0
        #: Set by drain(): new calls are refused, HealthCheck says NOT_SERVING.
        self.draining = False
        #: What grpc.health.v1 Health answers: SERVING once listening, NOT_SERVING once draining.
        self.readiness = ServiceStatus()
        STREAMS.set_function(lambda: self.active_streams)
        self._open_calls: set[trio.CancelScope] = set()
        #: The scopes of open StreamAudio calls (a subset of _open_calls).
        self._open_streams: set[trio.CancelScope] = set()

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            SERVICE + "StreamAudio": self._handler(
                # The audio path's message on the protobuf runtime: ~1 us a chunk, not ~70 (proto/runtime_messages.py).
                self._stream_audio, grpclib.const.Cardinality.STREAM_STREAM, AudioChunk, AudioChunk,
                ends_with_session=True),
            SERVICE + "JoinRoom": self._unary(self._join_room, pb.JoinRoomRequest, pb.JoinRoomResponse),
            SERVICE + "LeaveRoom": self._unary(self._leave_room, pb.LeaveRoomRequest, pb.LeaveRoomResponse),
            SERVICE + "PlayAudio": self._handler(
                self._play_audio, grpclib.const.Cardinality.UNARY_STREAM, pb.PlayAudioRequest, pb.PlayAudioEvent),
            SERVICE + "StopAudio": self._unary(self._stop_audio, pb.StopAudioRequest, pb.StopAudioResponse),
            SERVICE + "HealthCheck": self._unary(
                self._health_check, pb.HealthCheckRequest, pb.HealthCheckResponse, while_draining=True),
            SERVICE + "GetStatus": self._unary(
                self._get_status, pb.BridgeStatusRequest, pb.BridgeStatusResponse),
            DEBUG_SERVICE + "DescribeActors": self._unary(
                self._describe_actors, debug_pb.DescribeActorsRequest, debug_pb.DescribeActorsResponse,
                while_draining=True),
            DEBUG_SERVICE + "WatchActors": self._handler(
                self._watch_actors, grpclib.const.Cardinality.UNARY_STREAM, debug_pb.WatchActorsRequest,
                debug_pb.DescribeActorsResponse, while_draining=True),
            DEBUG_SERVICE + "InjectFault": self._unary(
                self._inject_fault, debug_pb.InjectFaultRequest, debug_pb.InjectFaultResponse),
        }

    # -- plumbing ------------------------------------------------------------

    def _handler(self, body: Callable[[Any], Awaitable[None]], cardinality: grpclib.const.Cardinality,
                 request_type: type, reply_type: type, *, while_draining: bool = False,
                 ends_with_session: bool = False) -> grpclib.const.Handler:
        """``ends_with_session``: the call lasts until its session ends, also
        while draining (see drain)."""
        async def call(stream: grpclib.server.Stream) -> None:
            if self.draining and not while_draining:
                raise GRPCError(Status.UNAVAILABLE, SHUTTING_DOWN)
            with trio.CancelScope() as scope:
                self._open_calls.add(scope)
                if ends_with_session:
                    self._open_streams.add(scope)
                try:
                    await body(stream)
                finally:
                    self._open_calls.discard(scope)
                    self._open_streams.discard(scope)
            if scope.cancelled_caught or (ends_with_session and self.draining):  # only drain() cancels it
                raise GRPCError(Status.UNAVAILABLE, SHUTTING_DOWN)

        async def asyncio_handler(stream: grpclib.server.Stream) -> None:
            await trio_as_aio(call)(stream)

        return grpclib.const.Handler(asyncio_handler, cardinality, request_type, reply_type)

    async def drain(self, timeout: float) -> None:
        """Refuse new calls and end every open one but StreamAudio with
        UNAVAILABLE, so clients go to another bridge instance; HealthCheck
        answers NOT_SERVING from now on. Returns once those calls have ended
        (at most ``timeout`` s).

        StreamAudio calls carry the phone's audio until their session ends,
        then end UNAVAILABLE too: as late as they can, because the cloud
        retries a failed stream once, two seconds after it fails, and by
        then a restarted bridge must be listening."""
        self.draining = True
        self.readiness.set(False)
        for scope in list(self._open_calls):
            if scope not in self._open_streams:
                scope.cancel()
        with trio.move_on_after(timeout):
            while self._open_calls - self._open_streams:
                await trio.sleep(0.01)

    def _unary(self, body: Callable[[Any], Awaitable[Any]], request_type: type,
               reply_type: type, *, while_draining: bool = False) -> grpclib.const.Handler:
        async def unary_body(stream: grpclib.server.Stream) -> None:
            reply = await body(await self._read_request(stream))
            await aio_as_trio(stream.send_message)(reply)

        return self._handler(unary_body, grpclib.const.Cardinality.UNARY_UNARY, request_type, reply_type,
                             while_draining=while_draining)

    async def _read(self, stream: grpclib.server.Stream) -> Any:
        return await aio_as_trio(read_message)(stream, self._settings.max_message_bytes)

    async def _read_request(self, stream: grpclib.server.Stream) -> Any:
        """The call's one request message; INVALID_ARGUMENT when the client sent none."""
        request = await self._read(stream)
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "the request message is missing")
        return request

    async def _ask(self, request: Any, *, timeout: float | None = None) -> Any:
        try:
            return await self._sessions.ask(request, timeout=timeout or self._settings.ask_timeout)
        except MailboxFull as error:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, f"the bridge is overloaded: {error}; retry later") from None
        except AtCapacity as error:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, str(error)) from None
        except ActorGone as error:
            raise GRPCError(Status.UNAVAILABLE, f"the bridge is shutting down: {error}") from None
        except TimeoutError as error:
            raise GRPCError(Status.DEADLINE_EXCEEDED, str(error)) from None

    # -- session lifecycle -------------------------------------------------

    async def _join_room(self, request: pb.JoinRoomRequest) -> pb.JoinRoomResponse:
        """A JoinRoom; every way it fails is logged as "JoinRoom failed", with
        the user, the room (when known), the gRPC status and the reason
        (``error``), for the runbook's count of failed joins."""
        with logger.contextualize(user_id=request.user_id, **({"room": request.room_name} if request.room_name
                                                               else {})):
            try:
                response = await self._join(request)
            except GRPCError as refused:
                _log_failed_join(request.user_id, refused.status.name, refused.message or "")
                raise
            except Exception as error:  # a bug: the call ends UNKNOWN
                _log_failed_join(request.user_id, "UNKNOWN", f"{type(error).__name__}: {error}")
                raise
            if not response.success:
                _log_failed_join(request.user_id, Status.OK.name, response.error)
            return response

    async def _join(self, request: pb.JoinRoomRequest) -> pb.JoinRoomResponse:
        url = request.livekit_url or self._settings.default_livekit_url
        _require(request.user_id, "user_id")
        _require(request.token, "token")
        _require(url, "livekit_url (and the bridge has no LIVEKIT_URL default)")
        if not url.startswith(("ws://", "wss://", "http://", "https://")):
            raise GRPCError(Status.INVALID_ARGUMENT, f"livekit_url {url!r} is not a ws://, wss://, http:// or https:// URL")
        room = self._admitted_room(request)
        joined = await self._ask(
            Join(request.user_id, room, request.token, url, request.target_identity),
            timeout=self._settings.join_timeout,
        )
        return pb.JoinRoomResponse(
            success=joined.success, error=joined.error,
            participant_id=joined.participant_id, participant_count=joined.participant_count,
            metadata={"room": room},
        )

    def _admitted_room(self, request: pb.JoinRoomRequest) -> str:
        """The room a JoinRoom's token admits it to (its room_name, or the
        token's room when it names none), checked before anything reaches the
        session supervisor, so a refused token leaves the user's session be.
        Logs only the token's room and identity.

        Raises:
            GRPCError(INVALID_ARGUMENT): the token cannot be the right one (actors/grpc/join_token.py).
        """
        user_id = request.user_id
        try:
            admitted = admit_join_token(request.token, user_id=user_id, room_name=request.room_name,
                                        target_identity=request.target_identity)
        except TokenRefused as refused:
            raise GRPCError(Status.INVALID_ARGUMENT, str(refused)) from None
        if not admitted.identity_expected:
            self.unexpected_token_identities += 1
            JOIN_TOKEN_IDENTITY_UNEXPECTED.inc()
            logger.warning("JoinRoom of user {}: the token's identity is {!r}, not {!r}; joining as it",
                           user_id, admitted.identity, expected_identity(user_id))
        if not request.room_name:
            logger.bind(room=admitted.room).info("JoinRoom of user {} names no room_name; joining the token's "
                                                 "room {!r}", user_id, admitted.room)
        return admitted.room

    async def _leave_room(self, request: pb.LeaveRoomRequest) -> pb.LeaveRoomResponse:
        _require(request.user_id, "user_id")
        error = await self._ask(Leave(request.user_id, request.reason), timeout=self._settings.join_timeout)
        return pb.LeaveRoomResponse(success=error is None, error=error or "")

    async def _get_status(self, request: pb.BridgeStatusRequest) -> pb.BridgeStatusResponse:
        _require(request.user_id, "user_id")
        status = await self._ask(GetStatus(request.user_id))
        if status is None:
            return pb.BridgeStatusResponse(connected=False)
        return pb.BridgeStatusResponse(
            connected=status.connected,
            participant_id=status.participant_id,
            participant_count=status.participant_count,
            last_disconnect_at=status.last_disconnect_at_ms,
            last_disconnect_reason=status.last_disconnect_reason,
            server_version=SERVER_VERSION,
        )

    async def _health_check(self, request: pb.HealthCheckRequest) -> pb.HealthCheckResponse:
        health = await self._ask(GetHealth())
        serving = pb.HealthCheckResponseServingStatus
        return pb.HealthCheckResponse(
            status=serving.NOT_SERVING if self.draining else serving.SERVING,
            active_sessions=health.active_sessions,
            active_streams=self.active_streams,
            uptime_seconds=int(time.monotonic() - self._started),
        )

    async def _describe_actors(self, request: debug_pb.DescribeActorsRequest) -> debug_pb.DescribeActorsResponse:
        return self._snapshot()

    async def _watch_actors(self, stream: grpclib.server.Stream) -> None:
        request = await self._read_request(stream)
        interval = request.interval_seconds or 1.0
        if not MIN_WATCH_INTERVAL <= interval <= MAX_WATCH_INTERVAL:  # NaN too
            raise GRPCError(Status.INVALID_ARGUMENT, f"interval_seconds {interval} is outside "
                                                     f"{MIN_WATCH_INTERVAL:g}..{MAX_WATCH_INTERVAL:g}")
        while True:
            await aio_as_trio(stream.send_message)(self._snapshot())
            await trio.sleep(interval)

    def _snapshot(self) -> debug_pb.DescribeActorsResponse:
        # Taken in one synchronous step (no await), so it is consistent; it
        # only reads what supervisors keep for operators.
        tree = {"name": "bridge", "children": self._describe_tree(),
                "front_door": {"active_streams": self.active_streams,
                               "unexpected_token_identities": self.unexpected_token_identities}}
        return debug_pb.DescribeActorsResponse(tree_json=json.dumps(tree, indent=2, default=str))

    # -- playback ------------------------------------------------------------

    async def _play_audio(self, stream: grpclib.server.Stream) -> None:
        """Stream the playback's events until its final one. Hanging up does
        not stop the sound (StopAudio does)."""
        request = await self._read_request(stream)
        _require(request.user_id, "user_id")

        async def fail(status: Status, why: str) -> None:
            event = PlaybackEvent("FAILED", request.request_id, error=why)
            await aio_as_trio(stream.send_message)(_play_event(event))
            raise GRPCError(status, why)

        try:
            check_url(request.audio_url)
        except FetchError as error:
            await fail(Status.INVALID_ARGUMENT, str(error))
        volume = request.volume or 1.0  # 0 means unset, as the cloud sends it
        if not math.isfinite(volume) or volume < 0:
            await fail(Status.INVALID_ARGUMENT, f"volume {request.volume} is not a non-negative number")
        if request.track_id < 0:
            await fail(Status.INVALID_ARGUMENT, f"track_id {request.track_id} is negative")
        playback = PlaybackRequest(request.request_id, request.audio_url, volume, request.track_id)
        answer = await self._ask(Play(request.user_id, playback, request.stop_other))
        if answer is None:
            raise GRPCError(Status.NOT_FOUND, f"user {request.user_id!r} has no session; call JoinRoom first")
        if isinstance(answer, NotPlayable):
            await fail(Status.FAILED_PRECONDITION, answer.reason)
        while True:
            try:
                event = await answer.get()
            except trio.EndOfChannel:
                return
            await aio_as_trio(stream.send_message)(_play_event(event))

    async def _stop_audio(self, request: pb.StopAudioRequest) -> pb.StopAudioResponse:
        _require(request.user_id, "user_id")
        stopped = await self._ask(StopPlayback(request.user_id, request.request_id, request.reason,
                                               request.track_id))
        if stopped is None:
            raise GRPCError(Status.NOT_FOUND, f"user {request.user_id!r} has no session")
        return pb.StopAudioResponse(success=True, stopped_request_id=",".join(stopped))

    async def _inject_fault(self, request: debug_pb.InjectFaultRequest) -> debug_pb.InjectFaultResponse:
        if not self._settings.chaos_enabled:
            raise GRPCError(Status.PERMISSION_DENIED,
                            "fault injection is off; start the bridge with BRIDGE_CHAOS=1 to allow it")
        if not is_fault_kind(request.kind):
            raise GRPCError(Status.INVALID_ARGUMENT, f"fault kind {request.kind!r} is not one of {FAULT_KINDS}, "
                                                     f"nor simulate:<one of {SIMULATED_SCENARIOS}>")
        if request.kind == "leak-check":
            counts = live_objects()
            for name, worker in (await self._ask(CountWorkerObjects())).items():
                add_worker_counts(counts, worker, name)
            return debug_pb.InjectFaultResponse(detail=json.dumps(counts))
        prefix = "sessions/session:"
        if not request.actor_path.startswith(prefix) or len(request.actor_path) == len(prefix):
            raise GRPCError(Status.INVALID_ARGUMENT,
                            f"actor_path {request.actor_path!r} names no session; use {prefix}<user id>")
        user_id = request.actor_path[len(prefix):]
        done = await self._ask(Fault(user_id, request.kind, request.seconds or 5.0))
        if done is None:
            raise GRPCError(Status.NOT_FOUND, f"user {user_id!r} has no session")
        return debug_pb.InjectFaultResponse(detail=done)

    # -- audio ---------------------------------------------------------------

    async def _stream_audio(self, stream: grpclib.server.Stream) -> None:
        """One consumer per user: this call ends cleanly (OK) when a newer
        StreamAudio of the same user replaces it, or when the session is left
        or replaced; UNAVAILABLE when the bridge lost the session."""
        first = await self._read(stream)
        if first is None:
            return
        user_id = first.user_id
        _require(user_id, "user_id in the first AudioChunk")
        lease: StreamLease | None = await self._ask(AttachStream(user_id))
        if lease is None:
            raise GRPCError(Status.NOT_FOUND, f"user {user_id!r} has no session; call JoinRoom first")
        lease.claimed = True
        self.active_streams += 1
        try:
            with lease.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_mic_audio, stream, lease, user_id)
                    await self._publish_client_audio(stream, lease, first)
                    await trio.sleep_forever()  # the client finished sending; keep serving it audio
        except BaseExceptionGroup as group:
            raise _first_grpc_error(group) or group
        finally:
            self.active_streams -= 1
            lease.released.set()
        if lease.refusal is not None:
            raise GRPCError(Status.INVALID_ARGUMENT, lease.refusal)
        if lease.lost is not None:
            raise GRPCError(Status.UNAVAILABLE, lease.lost)

    async def _send_mic_audio(self, stream: grpclib.server.Stream, lease: StreamLease, user_id: str) -> None:
        # What waits is sent together: one pass for a backlog (a stream that
        # took over a line with the gap's audio, a moment of load) instead of
        # one per packet.
        while True:
            try:
                chunks = await lease.mic.get_batch(MIC_BATCH)
            except trio.EndOfChannel:
                return
            if lease.stalled_until > trio.current_time():  # an injected slow consumer
                await trio.sleep_until(lease.stalled_until)
            sending_at = time.monotonic()
            messages = []
            for chunk in chunks:
                MIC_QUEUED.observe(sending_at - chunk.queued_at)
                messages.append(AudioChunk(pcm_data=chunk.pcm, sample_rate=MIC_SAMPLE_RATE, channels=MIC_CHANNELS,
                                           timestamp_ms=chunk.timestamp_ms, user_id=user_id))
            # Sent from this task when gRPC need not wait (the client's window
            # is open): no crossing into asyncio for the common case.
            sent = start_eagerly(_send_each(stream, messages))
            if not sent.done():
                # A message cut in half would corrupt the stream, so a send is not
                # cancelled midway; a client that stops reading for longer is dropped.
                with trio.CancelScope(shield=True) as sending:
                    sending.deadline = trio.current_time() + SEND_GRACE_SECONDS
                    await run_aio_future(sent)
                if sending.cancelled_caught:
                    raise GRPCError(Status.UNAVAILABLE, f"client of user {user_id!r} stopped reading audio")
            written_at, in_kernel_at = sent.result()
            for _ in chunks:
                MIC_GRPC_WRITE.observe(written_at - sending_at)
                MIC_TO_KERNEL.observe(in_kernel_at - written_at)
            MIC_FORWARDED.inc(len(chunks))

    async def _publish_client_audio(self, stream: grpclib.server.Stream, lease: StreamLease,
                                    first: AudioChunk) -> None:
        user_id = first.user_id
        chunk: AudioChunk | None = first
        while chunk is not None:
            if chunk.user_id and chunk.user_id != user_id:
                raise GRPCError(Status.INVALID_ARGUMENT,
                                f"this stream belongs to user {user_id!r}; a chunk names {chunk.user_id!r}")
            if chunk.pcm_data:
                try:
                    await lease.publish.send(_cloud_chunk(chunk, lease))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # the session is ending; it ends this stream too
            chunk = await self._read(stream)


async def _send_each(stream: grpclib.server.Stream, messages: list[AudioChunk]) -> tuple[float, float]:
    """Send ``messages``: (when gRPC had written them, when the kernel had
    them), by time.monotonic(); the way back to Trio is no stage of theirs."""
    for message in messages:
        await stream.send_message(message)
    written_at = time.monotonic()
    await until_in_kernel(stream)
    return written_at, time.monotonic()


def _play_event(event: PlaybackEvent) -> pb.PlayAudioEvent:
    return pb.PlayAudioEvent(
        type=pb.PlayAudioEventEventType[event.kind], request_id=event.request_id,
        duration_ms=event.duration_ms, position_ms=event.position_ms, error=event.error,
        metadata=event.metadata,
    )


def _cloud_chunk(chunk: AudioChunk, lease: StreamLease) -> CloudChunk:
    sample_rate = chunk.sample_rate or MIC_SAMPLE_RATE
    channels = chunk.channels or MIC_CHANNELS
    if sample_rate not in SUPPORTED_SAMPLE_RATES:
        raise GRPCError(Status.INVALID_ARGUMENT,
                        f"sample_rate {chunk.sample_rate} is not supported; use one of {SUPPORTED_SAMPLE_RATES}")
    if channels not in (1, 2):
        raise GRPCError(Status.INVALID_ARGUMENT, f"channels {chunk.channels} is not supported; use 1 or 2")
    if chunk.track_id < 0:
        raise GRPCError(Status.INVALID_ARGUMENT, f"track_id {chunk.track_id} is negative")
    if len(chunk.pcm_data) % (2 * channels):
        raise GRPCError(Status.INVALID_ARGUMENT,
                        f"pcm_data of {len(chunk.pcm_data)} bytes is not whole 16-bit frames of {channels} channel(s)")
    return CloudChunk(bytes(chunk.pcm_data), sample_rate, channels, chunk.track_id, lease)


def _first_grpc_error(group: BaseExceptionGroup) -> GRPCError | None:
    """The status a task of the call raised, so the client sees it rather than
    an internal error about a group of exceptions."""
    matched, _rest = group.split(GRPCError)
    while isinstance(matched, BaseExceptionGroup):
        matched = matched.exceptions[0]
    return matched


def _log_failed_join(user_id: str, status: str, reason: str) -> None:
    logger.bind(grpc_status=status, error=reason).warning("JoinRoom failed for user {} ({}): {}", user_id, status,
                                                          reason)


def _require(value: str, what: str) -> None:
    if not value:
        raise GRPCError(Status.INVALID_ARGUMENT, f"{what} is required")


async def serve_front_door(
    front_door: FrontDoor, settings: BridgeSettings, *, listener: socket.socket | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the bridge's gRPC services, with grpc.health.v1 and server
    reflection beside them, until cancelled, on ``listener`` or else where the
    settings say; reports the address it listens on once ready."""
    front_door.readiness.set(True)
    tls = (settings.tls_cert, settings.tls_key) if settings.tls_cert and settings.tls_key else None
    await serve_grpc(with_standard_services([front_door], front_door.readiness), host=settings.listen_host,
                     port=settings.port, unix_socket=settings.unix_socket,
                     max_concurrent_streams=settings.max_concurrent_streams, close_timeout=settings.teardown_timeout,
                     auth_token=settings.auth_token, tls=tls, rpc_histogram=RPC_SECONDS, listener=listener,
                     task_status=task_status)
