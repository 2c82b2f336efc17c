"""One user's bridge session: a LiveKit room joined on the user's behalf.

The session is an actor. It owns the room connection and the tracks it
publishes the cloud's audio on, feeds the user's UserLine (the microphone
buffer the cloud's StreamAudio reads), and supervises the user's playbacks
(PlayAudio). When its scope is cancelled it stops its playbacks, ends the
stream, unpublishes its tracks and leaves the room before it reports itself
stopped, so its supervisor can start a replacement knowing nothing of the old
one remains.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import trio
from livekit import rtc
from loguru import logger
from trio_asyncio import aio_as_trio

from .livekit.output_tracks import OutputTracks, TrackFormatMismatch
from .livekit.room import RoomConnectError, in_background, joined_room
from .livekit.token import token_expiry
from .messages import (AttachStream, Fault, GetStatus, Join, Joined, NotPlayable, Play, SessionStatus,
                       StopPlayback)
from .metrics import MIC_DROPPED, MIC_FFI_TO_TRIO, MIC_LOST, MIC_RECEIVED
from .mic_audio import pcm_from_packet
from .playback import Playback, PlaybackEvents
from .runtime import Actor, Child, Supervisor, only_cancelled
from .settings import BridgeSettings
from .stream_lease import MicChunk
from .user_line import UserLine


def now_ms() -> int:
    return int(time.time() * 1000)


#: Disconnect reasons after which the session does not come back on its own:
#: LiveKit or an operator wants this participant gone, or another session took
#: over its identity.
FINAL_DISCONNECTS = frozenset({"DUPLICATE_IDENTITY", "PARTICIPANT_REMOVED", "ROOM_DELETED", "ROOM_CLOSED"})


class InjectedCrash(Exception):
    """A crash asked for through InjectFault (chaos testing)."""


class UserSession(Actor):
    """One incarnation of a user's session: it joins the room, serves the
    session's messages, and rejoins with backoff when LiveKit drops the room
    for a reason that is not final, while the token is valid.

    It crashes only on a bug (or an injected fault); its supervisor then starts
    a new incarnation from the same JoinRoom and the same UserLine, so the
    cloud's StreamAudio carries on. Cancelled, it stops its playbacks, ends the
    stream, unpublishes its tracks and leaves the room before it returns.
    """

    def __init__(self, join: Join, settings: BridgeSettings, line: UserLine,
                 connect_slots: trio.CapacityLimiter | None = None) -> None:
        super().__init__(f"session:{join.user_id}")
        self.user_id = join.user_id
        self.line = line
        self._join = join
        self._settings = settings
        #: Shared by the sessions of the process: connects in flight at once.
        self._connect_slots = connect_slots
        self._room: rtc.Room | None = None
        self._room_lost = trio.Event()
        #: The tasks that live as long as the current room (None between rooms).
        self._room_tasks: trio.Nursery | None = None
        #: Connection interruptions the SDK reported, numbered so a grace knows its own.
        self._interruptions = 0
        #: connecting, connected, reconnecting (the SDK), disconnected, leaving, rejoining
        self._link = "connecting"
        self._rejoins = 0
        self._tracks: OutputTracks | None = None
        self._playback_supervisor: Supervisor | None = None
        self._playbacks: set[Child] = set()
        self._playbacks_started = 0
        self._playbacks_stopped = 0
        self._token_expires_at = token_expiry(join.token)

    # -- lifecycle ---------------------------------------------------------

    def log_fields(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "room": self._join.room_name}

    async def run(self, task_status: trio.TaskStatus[Joined] = trio.TASK_STATUS_IGNORED) -> None:
        join_failure: RoomConnectError | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    joined = await nursery.start(self._stay_in_room_then_end, nursery.cancel_scope)
                except RoomConnectError as error:
                    join_failure = error  # raised below, alone: the JoinRoom failed
                else:
                    task_status.started(joined)
                    await self.serve()
                    nursery.cancel_scope.cancel()
        except BaseException as raised:
            if only_cancelled(raised):  # stopped: the stream ends with the session
                await self.line.end_stream(self._settings.teardown_timeout)
            raise  # a crash keeps the line for the next incarnation
        if join_failure is not None:
            raise join_failure

    async def _stay_in_room_then_end(self, session_scope: trio.CancelScope,
                                     task_status: trio.TaskStatus[Joined]) -> None:
        await self._stay_in_room(task_status)
        session_scope.cancel()  # LiveKit ended it for good: so ends the session

    async def _stay_in_room(self, task_status: trio.TaskStatus[Joined]) -> None:
        """Join, and rejoin whenever LiveKit drops the room for a reason that
        is not final. Returns once it will not rejoin, which ends the session."""
        rejoin_backoff = self._settings.rejoin_backoff
        failures = 0
        while True:
            try:
                async with self._joined_room() as room:
                    failures = 0
                    if task_status is not trio.TASK_STATUS_IGNORED:
                        task_status.started(Joined(True, participant_id=room.local_participant.identity,
                                                   participant_count=self._participant_count()))
                        task_status = trio.TASK_STATUS_IGNORED
                    await self._room_lost.wait()
            except RoomConnectError as error:
                if task_status is not trio.TASK_STATUS_IGNORED:
                    raise  # the JoinRoom itself failed
                failures += 1
                self.line.record_disconnect(now_ms(), f"rejoining failed: {error}")
            reason = self.line.last_disconnect_reason
            if reason in FINAL_DISCONNECTS:
                logger.warning("user {}: LiveKit ended the session ({}); not rejoining", self.user_id, reason)
                return
            if self._token_expires_at is not None and time.time() >= self._token_expires_at:
                self.line.record_disconnect(now_ms(), f"{reason}; the token has expired, so the session ends")
                logger.warning("user {}: token expired; not rejoining", self.user_id)
                return
            self._link = "rejoining"
            delay = rejoin_backoff.delay(failures + 1)
            logger.info("user {}: rejoining LiveKit in {:.2f} s ({})", self.user_id, delay, reason)
            await trio.sleep(delay)
            self._rejoins += 1

    @contextlib.asynccontextmanager
    async def _joined_room(self) -> AsyncIterator[rtc.Room]:
        """The room, with the tracks, the cloud-audio publisher and the
        playbacks that live only as long as it does."""
        join = self._join
        self._room_lost = trio.Event()
        self._link = "connecting"
        try:
            async with joined_room(
                join.livekit_url,
                join.token,
                connect_timeout=self._settings.connect_timeout,
                teardown_timeout=self._settings.teardown_timeout,
                on_data=self._on_data,
                subscribe={"disconnected": self._on_disconnected, "reconnecting": self._on_reconnecting,
                           "reconnected": self._on_reconnected},
                connect_slots=self._connect_slots,
            ) as room:
                self._room = room
                self._link = "connected"
                self._tracks = OutputTracks(
                    room, user_id=join.user_id, idle_grace=self._settings.track_idle_grace,
                    subscribe_wait=self._settings.subscribe_wait, queue_ms=self._settings.track_queue_ms)
                async with trio.open_nursery() as nursery:
                    self._room_tasks = nursery
                    self._playback_supervisor = Supervisor(nursery, on_exit=self._on_playback_exit)
                    nursery.start_soon(self._publish_cloud_audio, self._tracks)
                    nursery.start_soon(self._tracks.unpublish_idle_tracks)
                    logger.info("user {} joined room {} as {}", join.user_id, join.room_name,
                                room.local_participant.identity)
                    try:
                        yield room
                    finally:
                        self._link = "leaving"  # our own leave follows: its 'disconnected' is no loss
                    for child in self._playbacks:  # the room is gone; so is their sound
                        child.actor.stop_reason = f"the LiveKit room was lost ({self.line.last_disconnect_reason})"
                    nursery.cancel_scope.cancel()
                self._room_tasks = None
        finally:
            self._room = None
            if self._tracks is not None:  # only now: leaving the room unpublished the tracks they feed
                await self._tracks.close()
                self._tracks = None

    # -- LiveKit's events (run in the Trio thread) -----------------------------

    def _on_disconnected(self, reason: Any) -> None:
        if self._link != "leaving":
            self._room_gone(_reason_name(reason))

    def _room_gone(self, name: str) -> None:
        self.line.record_disconnect(now_ms(), name)
        self._link = "disconnected"
        logger.warning("user {}: LiveKit room disconnected ({})", self.user_id, name)
        self._room_lost.set()

    def _on_reconnecting(self) -> None:
        self._link = "reconnecting"
        self.line.record_disconnect(now_ms(), "RECONNECTING (the SDK is restoring the connection)")
        logger.info("user {}: LiveKit connection interrupted; the SDK is reconnecting", self.user_id)
        self._interruptions += 1
        if self._room_tasks is not None:
            self._room_tasks.start_soon(self._rejoin_unless_back, self._interruptions)

    def _on_reconnected(self) -> None:
        self._link = "connected"
        logger.info("user {}: LiveKit connection back", self.user_id)

    async def _rejoin_unless_back(self, interruption: int) -> None:
        """Give the SDK sdk_reconnect_grace to restore the connection after
        ``interruption``; if it is still reconnecting from that same
        interruption then, give up on it and rejoin as after a drop.

        The SDK resumes a brief interruption quickly, but between attempts
        at a full reconnect it waits up to 7 s (growing with each), so after
        a LiveKit server comes back its rooms return up to 7 s late; ours
        rejoin within rejoin_backoff_max."""
        grace = self._settings.sdk_reconnect_grace
        await trio.sleep(grace)
        if self._link == "reconnecting" and self._interruptions == interruption:
            self._room_gone(f"SDK_RECONNECT_SLOW (not back within {grace:g} s; rejoining)")

    # -- messages ----------------------------------------------------------

    async def handle(self, message: Any) -> None:
        if isinstance(message, GetStatus):
            message.reply.send(self.status())
        elif isinstance(message, AttachStream):
            if self.line.lease is not None:
                logger.info("user {}: a newer StreamAudio replaces the current one", self.user_id)
            message.reply.send(self.line.attach_stream())
        elif isinstance(message, Play):
            message.reply.send(await self._play(message))
        elif isinstance(message, StopPlayback):
            message.reply.send(await self._stop_playbacks(message))
        elif isinstance(message, Fault):
            await self._inject(message)
        else:
            raise TypeError(f"a user session does not handle {type(message).__name__}")

    def status(self) -> SessionStatus:
        room = self._room
        if room is None:
            return self.line.disconnected_status()
        return SessionStatus(
            connected=self._connected(),
            participant_id=room.local_participant.identity,
            participant_count=self._participant_count(),
            last_disconnect_at_ms=self.line.last_disconnect_at_ms,
            last_disconnect_reason=self.line.last_disconnect_reason,
        )

    async def _inject(self, fault: Fault) -> None:
        """Chaos testing: the fault, as if it had happened by itself."""
        fault.reply.send(f"{fault.kind} injected into {self.name}")
        if fault.kind == "crash":
            raise InjectedCrash(f"crash injected into {self.name}")
        if fault.kind == "hang":
            await trio.sleep_forever()  # stops draining the mailbox; stopping still works
        elif fault.kind == "drop-room" and self._room is not None:
            # As when LiveKit's 'disconnected' arrives: the session leaves the
            # room and rejoins. (The SDK's own losses are tested by killing
            # livekit-server; a local disconnect does not always report one.)
            self._room_gone("DROPPED_BY_FAULT_INJECTION")
        elif fault.kind == "slow-consumer" and self.line.lease is not None:
            self.line.lease.stall(fault.seconds)
        elif fault.kind.startswith("simulate:") and self._room is not None:
            scenario = rtc.SimulateScenarioKind.Value("SIMULATE_" + fault.kind.removeprefix("simulate:"))
            # In the background: the session goes on serving while the SDK plays it out.
            await aio_as_trio(in_background)(self._room.simulate_scenario(scenario))

    # The room keeps these current itself (the SDK updates it before emitting
    # events), so they are read, never copied.

    def _connected(self) -> bool:
        return self._room is not None and self._room.connection_state == rtc.ConnectionState.CONN_CONNECTED

    def _participant_count(self) -> int:
        return len(self._room.remote_participants) + 1 if self._room is not None else 0

    # -- microphone: LiveKit -> cloud ----------------------------------------

    def _on_data(self, sender: str, payload: bytes, received_at: float) -> None:
        """Runs for every data packet of this room: keep it cheap.

        Packets of a named participant other than the target phone are
        ignored. Packets whose sender the SDK cannot name ("") are kept and
        counted: the SDK names only participants LiveKit has announced, and
        LiveKit announces a participant that publishes no tracks (the phone,
        which sends its audio as data) in batches every 3 s, so a reconnected
        phone's first seconds of audio arrive unnamed.
        """
        line = self.line
        target = self._join.target_identity
        if sender and target and sender != target:
            line.packets_ignored += 1
            return
        if not sender:
            line.packets_unnamed += 1
        line.packets_received += 1
        MIC_RECEIVED.inc()
        sequence, pcm = pcm_from_packet(payload)
        if sequence is not None and (lost := line.sequence.observe(sequence)):
            MIC_LOST.inc(lost)
        if not pcm:
            line.packets_empty += 1
            return
        queued_at = time.monotonic()
        MIC_FFI_TO_TRIO.observe(queued_at - received_at)
        if line.mic.push(MicChunk(pcm, now_ms(), queued_at)):
            MIC_DROPPED.inc()

    # -- cloud audio: cloud -> LiveKit ---------------------------------------

    async def _publish_cloud_audio(self, tracks: OutputTracks) -> None:
        # The channel is the line's: it outlives this room and this incarnation.
        async for chunk in self.line.publish_receive:
            try:
                # Held while the chunk is captured, so the idle reaper cannot
                # unpublish the track under it.
                async with tracks.held(chunk.track_id, chunk.sample_rate, chunk.channels) as track:
                    await track.capture(chunk.pcm)
            except TrackFormatMismatch as error:
                chunk.stream.refuse(str(error))
            except Exception as error:  # e.g. the room is reconnecting: drop, count, go on
                self.line.chunks_failed += 1
                logger.warning("user {}: cloud audio chunk on track {} not published: {}",
                               self.user_id, chunk.track_id, error)
            else:
                self.line.chunks_published += 1

    # -- playback: URL -> LiveKit ---------------------------------------------

    async def _play(self, message: Play) -> PlaybackEvents | NotPlayable:
        """Start a playback once those it replaces have stopped: all of them
        with stop_other, else the one on the same track."""
        request = message.request
        if not self._connected() or self._playback_supervisor is None or self._tracks is None:
            return NotPlayable(f"the LiveKit room of user {self.user_id!r} is not connected "
                               f"({self.line.last_disconnect_reason or 'no disconnect recorded'}); "
                               f"it rejoins by itself unless that reason is final, else call JoinRoom")
        for child in list(self._playbacks):
            if message.stop_other or child.actor.track_id == request.track_id:
                await self._stop_playback(child, f"replaced by playback {request.request_id!r}")
        events = PlaybackEvents()
        tracks, limits = self._tracks, self._settings.playback_limits
        child = await self._playback_supervisor.start(
            lambda: Playback(request, tracks, limits, events, user_id=self.user_id))
        if not child.done.is_set():
            self._playbacks.add(child)
        self._playbacks_started += 1
        return events

    async def _stop_playbacks(self, message: StopPlayback) -> list[str]:
        def matches(playback: Playback) -> bool:
            if message.request_id:
                return playback.request.request_id == message.request_id
            return message.track_id < 0 or playback.track_id == message.track_id

        matched = [child for child in self._playbacks if matches(child.actor)]
        for child in matched:
            await self._stop_playback(child, message.reason or "StopAudio")
        return [child.actor.request.request_id for child in matched]

    async def _stop_playback(self, child: Child, reason: str) -> None:
        assert self._playback_supervisor is not None
        child.actor.stop_reason = reason
        self._playbacks_stopped += 1
        await self._playback_supervisor.stop(child)

    def _on_playback_exit(self, child: Child, crash: BaseException | None) -> None:
        self._playbacks.discard(child)

    # -- observability -----------------------------------------------------

    def details(self) -> dict[str, Any]:
        return {"link": self._link, "last_disconnect_reason": self.line.last_disconnect_reason}

    def counters(self) -> dict[str, int]:
        line = self.line
        return {
            "connected": int(self._connected()),
            "participant_count": self._participant_count(),
            "stream_attached": int(line.stream_attached),
            "mic_packets_received": line.packets_received,
            "mic_packets_lost": line.sequence.lost,
            "mic_packets_out_of_order": line.sequence.out_of_order,
            "mic_packets_empty": line.packets_empty,
            "mic_packets_ignored_other_sender": line.packets_ignored,
            "mic_packets_unnamed_sender": line.packets_unnamed,
            "mic_buffer_depth": len(line.mic),
            "mic_buffer_capacity": line.mic.capacity,
            "mic_buffer_dropped": line.mic.dropped,
            "cloud_chunks_published": line.chunks_published,
            "cloud_chunks_failed": line.chunks_failed,
            "rejoins": self._rejoins,
            **self._track_counters(),
            "playbacks_active": len(self._playbacks),
            "playbacks_started": self._playbacks_started,
            "playbacks_stopped": self._playbacks_stopped,
        }

    def _track_counters(self) -> dict[str, int]:
        tracks = self._tracks
        if tracks is None:
            return {"published_tracks": 0}
        return {"published_tracks": len(tracks), "tracks_unpublished_idle": tracks.unpublished_idle,
                "track_subscribe_waits_timed_out": tracks.subscribe_waits_timed_out}

    def children(self) -> list[dict[str, Any]]:
        return self._playback_supervisor.describe() if self._playback_supervisor is not None else []


def _reason_name(reason: Any) -> str:
    try:
        return rtc.DisconnectReason.Name(reason)
    except (ValueError, TypeError, AttributeError):
        return str(reason)
