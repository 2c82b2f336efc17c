"""One JoinRoom's session: what the cloud asked of the user's room.

The session is an actor. It borrows the user's RoomLink (the LiveKit room,
kept joined by the link), publishes the cloud's audio on tracks of its own,
serves the user's StreamAudio from the link's UserLine, and supervises the
user's playbacks (PlayAudio). When its scope is cancelled it stops its
playbacks, ends the stream and unpublishes its tracks before it reports
itself stopped, so its supervisor can lend the link to a replacement (or
leave the room) knowing nothing of the old session remains.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import trio
from loguru import logger

from ..livekit.output_tracks import OutputTracks, TrackFormatMismatch
from ..livekit.room import RoomConnectError
from ..operations.settings import BridgeSettings
from ..runtime import Actor, Child, Supervisor, only_cancelled
from .messages import AttachStream, Fault, GetStatus, Join, Joined, NotPlayable, Play, StopPlayback
from .playback import Playback, PlaybackEvents
from .room_link import LentRoom, LinkEnded, RoomLink
from .user_line import UserLine


class InjectedCrash(Exception):
    """A crash asked for through InjectFault (chaos testing)."""


class UserSession(Actor):
    """One incarnation of a JoinRoom's session: it serves the session's
    messages on the rooms its link lends it, until cancelled or until the
    link ends (then so does the session).

    It crashes only on a bug (or an injected fault); its supervisor then starts
    a new incarnation from the same JoinRoom, link and UserLine, so the
    cloud's StreamAudio carries on. Cancelled, it stops its playbacks, ends
    the stream and unpublishes its tracks before it returns; the room stays
    with the link.
    """

    def __init__(self, join: Join, settings: BridgeSettings, link: Child) -> None:
        super().__init__(f"session:{join.user_id}")
        self.user_id = join.user_id
        self._link: RoomLink = link.actor
        self.line: UserLine = self._link.line
        self._join = join
        self._settings = settings
        self._tracks: OutputTracks | None = None
        self._playback_supervisor: Supervisor | None = None
        self._playbacks: set[Child] = set()
        self._playbacks_started = 0
        self._playbacks_stopped = 0

    # -- lifecycle ---------------------------------------------------------

    def log_fields(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "room": self._join.room_name}

    async def run(self, task_status: trio.TaskStatus[Joined] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with self._link.borrow(), trio.open_nursery() as nursery:
                await nursery.start(self._use_rooms_then_end, nursery.cancel_scope)
                task_status.started(self._link.joined())
                await self.serve()
                nursery.cancel_scope.cancel()
        except BaseException as raised:
            if only_cancelled(raised):  # stopped: the stream ends with the session
                await self.line.end_stream(self._settings.teardown_timeout)
            raise  # a crash keeps the line for the next incarnation

    async def _use_rooms_then_end(self, session_scope: trio.CancelScope, task_status: trio.TaskStatus[None]) -> None:
        """Serve on each room the link lends, until the link ends; then end the session."""
        while True:
            try:
                lent = await self._link.next_room()
            except LinkEnded as ended:
                if task_status is not trio.TASK_STATUS_IGNORED:
                    if self.incarnation == 0:  # the JoinRoom fails
                        raise RoomConnectError(f"the LiveKit link ended before the session started: {ended}") from None
                    # A restart after a crash, whose link ended meanwhile: it ends as the
                    # link's session does, rather than crash again until given up on.
                    task_status.started()
                session_scope.cancel()
                return
            async with self._room_resources(lent):
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                await lent.lost.wait()

    @contextlib.asynccontextmanager
    async def _room_resources(self, lent: LentRoom) -> AsyncIterator[None]:
        """The tracks, the cloud-audio publisher and the playbacks, for as
        long as the session uses ``lent``; on the way out its tracks are
        unpublished if the room is still there."""
        self._tracks = tracks = OutputTracks(
            lent.room, user_id=self.user_id, idle_grace=self._settings.track_idle_grace,
            subscribe_wait=self._settings.subscribe_wait, queue_ms=self._settings.track_queue_ms)
        try:
            async with trio.open_nursery() as nursery:
                self._playback_supervisor = Supervisor(nursery, on_exit=self._on_playback_exit)
                nursery.start_soon(self._publish_cloud_audio, tracks)
                nursery.start_soon(tracks.unpublish_idle_tracks)
                try:
                    yield
                finally:
                    for child in self._playbacks:
                        child.actor.stop_reason = (f"the LiveKit room was lost ({self.line.last_disconnect_reason})"
                                                   if lent.lost.is_set() else "the session ended")
                    nursery.cancel_scope.cancel()
        finally:
            self._playback_supervisor = None
            self._tracks = None
            await tracks.close(self._settings.teardown_timeout)

    # -- messages ----------------------------------------------------------

    async def handle(self, message: Any) -> None:
        if isinstance(message, GetStatus):
            message.reply.send(self._link.status())
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

    async def _inject(self, fault: Fault) -> None:
        """Chaos testing: the fault, as if it had happened by itself."""
        fault.reply.send(f"{fault.kind} injected into {self.name}")
        if fault.kind == "crash":
            raise InjectedCrash(f"crash injected into {self.name}")
        if fault.kind == "hang":
            await trio.sleep_forever()  # stops draining the mailbox; stopping still works
        elif fault.kind == "drop-room":
            self._link.drop_room()
        elif fault.kind == "slow-consumer" and self.line.lease is not None:
            self.line.lease.stall(fault.seconds)
        elif fault.kind.startswith("simulate:"):
            # In the background: the session goes on serving while the SDK plays it out.
            await self._link.simulate(fault.kind.removeprefix("simulate:"))

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
        if not self._link.connected() or self._playback_supervisor is None or self._tracks is None:
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
        return {"link": self._link.state, "room": self._join.room_name,
                "last_disconnect_reason": self.line.last_disconnect_reason}

    def counters(self) -> dict[str, int]:
        line = self.line
        return {
            "connected": int(self._link.connected()),
            "participant_count": self._link.participant_count(),
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
            "rejoins": self._link.rejoins,
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
