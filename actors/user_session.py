"""One user's bridge session: a LiveKit room joined on the user's behalf.

The session is an actor. It owns the room connection, the microphone buffer
that feeds the user's StreamAudio, the tracks it publishes the cloud's audio
on, and supervises the user's playbacks (PlayAudio). When its scope is
cancelled it stops its playbacks, ends the stream, unpublishes its tracks and
leaves the room before it reports itself stopped, so its supervisor can start
a replacement knowing nothing of the old one remains.
"""

from __future__ import annotations

import time
from typing import Any

import trio
from livekit import rtc
from loguru import logger

from .livekit.output_tracks import OutputTracks, TrackFormatMismatch
from .livekit.room import joined_room
from .messages import AttachStream, GetStatus, Join, Joined, NotPlayable, Play, SessionStatus, StopPlayback
from .mic_audio import SequenceTracker, pcm_from_packet
from .playback import Playback, PlaybackEvents
from .runtime import Actor, Child, DropOldestBuffer, Supervisor
from .settings import BridgeSettings
from .stream_lease import CloudChunk, MicChunk, StreamLease


def now_ms() -> int:
    return int(time.time() * 1000)


class _RoomDisconnected:
    """LiveKit disconnected the room; the session records when and why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class UserSession(Actor):
    def __init__(self, join: Join, settings: BridgeSettings) -> None:
        super().__init__(f"session:{join.user_id}")
        self.user_id = join.user_id
        self._join = join
        self._settings = settings
        self._room: rtc.Room | None = None
        self._lease: StreamLease | None = None
        self._tracks: OutputTracks | None = None
        self._playback_supervisor: Supervisor | None = None
        self._playbacks: set[Child] = set()
        self._playbacks_started = 0
        self._playbacks_stopped = 0
        self._mic = DropOldestBuffer[MicChunk](settings.mic_buffer_packets)
        self._sequence = SequenceTracker()
        self._publish_send, self._publish_receive = trio.open_memory_channel[CloudChunk](
            settings.publish_buffer_chunks
        )
        self._last_disconnect_at_ms = 0
        self._last_disconnect_reason = ""
        self._packets_received = 0
        self._packets_ignored = 0
        self._packets_unnamed = 0
        self._packets_empty = 0
        self._chunks_published = 0
        self._chunks_failed = 0

    # -- lifecycle ---------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[Joined] = trio.TASK_STATUS_IGNORED) -> None:
        join = self._join
        try:
            async with joined_room(
                join.livekit_url,
                join.token,
                connect_timeout=self._settings.connect_timeout,
                teardown_timeout=self._settings.teardown_timeout,
                on_data=self._on_data,
                subscribe={"disconnected": self._tell_disconnected},
            ) as room:
                self._room = room
                self._tracks = OutputTracks(
                    room, user_id=join.user_id, idle_grace=self._settings.track_idle_grace,
                    subscribe_wait=self._settings.subscribe_wait, queue_ms=self._settings.track_queue_ms)
                try:
                    async with trio.open_nursery() as nursery:
                        self._playback_supervisor = Supervisor(nursery, on_exit=self._on_playback_exit)
                        nursery.start_soon(self._publish_cloud_audio)
                        nursery.start_soon(self._tracks.unpublish_idle_tracks)
                        task_status.started(
                            Joined(True, participant_id=room.local_participant.identity,
                                   participant_count=self._participant_count())
                        )
                        logger.info("user {} joined room {} as {}", join.user_id, join.room_name,
                                    room.local_participant.identity)
                        await self.serve()
                finally:
                    await self._end_stream()
                    self._mic.close()
        finally:
            # Only now: leaving the room has unpublished the tracks they feed.
            if self._tracks is not None:
                await self._tracks.close()

    async def _end_stream(self) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        lease.end()
        if not lease.claimed:
            return
        with trio.move_on_after(self._settings.teardown_timeout) as waited:
            waited.shield = True
            await lease.released.wait()

    # -- messages ----------------------------------------------------------

    async def handle(self, message: Any) -> None:
        if isinstance(message, GetStatus):
            message.reply.send(self.status())
        elif isinstance(message, AttachStream):
            message.reply.send(self._attach_stream())
        elif isinstance(message, Play):
            message.reply.send(await self._play(message))
        elif isinstance(message, StopPlayback):
            message.reply.send(await self._stop_playbacks(message))
        elif isinstance(message, _RoomDisconnected):
            self._last_disconnect_at_ms = now_ms()
            self._last_disconnect_reason = message.reason
            logger.warning("user {}: LiveKit room disconnected ({})", self._join.user_id, message.reason)
        else:
            raise TypeError(f"a user session does not handle {type(message).__name__}")

    def status(self) -> SessionStatus:
        room = self._room
        return SessionStatus(
            connected=self._connected(),
            participant_id=room.local_participant.identity if room is not None else "",
            participant_count=self._participant_count(),
            last_disconnect_at_ms=self._last_disconnect_at_ms,
            last_disconnect_reason=self._last_disconnect_reason,
        )

    def _attach_stream(self) -> StreamLease:
        if self._lease is not None:
            logger.info("user {}: a newer StreamAudio replaces the current one", self._join.user_id)
            self._lease.end()
        self._lease = StreamLease(self._mic, self._publish_send)
        return self._lease

    def _tell_disconnected(self, reason: Any) -> None:
        try:
            self.mailbox.tell(_RoomDisconnected(_reason_name(reason)))
        except Exception as error:  # a full mailbox must not break the SDK's event loop
            logger.warning("user {}: room disconnect not recorded: {}", self._join.user_id, error)

    # The room keeps these current itself (the SDK updates it before emitting
    # events), so they are read, never copied.

    def _connected(self) -> bool:
        return self._room is not None and self._room.connection_state == rtc.ConnectionState.CONN_CONNECTED

    def _participant_count(self) -> int:
        return len(self._room.remote_participants) + 1 if self._room is not None else 0

    # -- microphone: LiveKit -> cloud ----------------------------------------

    def _on_data(self, sender: str, payload: bytes) -> None:
        """Runs for every data packet of this room: keep it cheap.

        Packets of a named participant other than the target phone are
        ignored. Packets whose sender the SDK cannot name ("") are kept and
        counted: the SDK names only participants LiveKit has announced, and
        LiveKit announces a participant that publishes no tracks (the phone,
        which sends its audio as data) in batches every 3 s, so a reconnected
        phone's first seconds of audio arrive unnamed.
        """
        target = self._join.target_identity
        if sender and target and sender != target:
            self._packets_ignored += 1
            return
        if not sender:
            self._packets_unnamed += 1
        self._packets_received += 1
        sequence, pcm = pcm_from_packet(payload)
        if sequence is not None:
            self._sequence.observe(sequence)
        if not pcm:
            self._packets_empty += 1
            return
        self._mic.push(MicChunk(pcm, now_ms()))

    # -- cloud audio: cloud -> LiveKit ---------------------------------------

    async def _publish_cloud_audio(self) -> None:
        assert self._tracks is not None
        async with self._publish_receive:
            async for chunk in self._publish_receive:
                try:
                    # Held while the chunk is captured, so the idle reaper cannot
                    # unpublish the track under it.
                    async with self._tracks.held(chunk.track_id, chunk.sample_rate, chunk.channels) as track:
                        await track.capture(chunk.pcm)
                except TrackFormatMismatch as error:
                    chunk.stream.refuse(str(error))
                except Exception as error:  # e.g. the room is reconnecting: drop, count, go on
                    self._chunks_failed += 1
                    logger.warning("user {}: cloud audio chunk on track {} not published: {}",
                                   self._join.user_id, chunk.track_id, error)
                else:
                    self._chunks_published += 1

    # -- playback: URL -> LiveKit ---------------------------------------------

    async def _play(self, message: Play) -> PlaybackEvents | NotPlayable:
        """Start a playback once those it replaces have stopped: all of them
        with stop_other, else the one on the same track."""
        assert self._playback_supervisor is not None and self._tracks is not None
        request = message.request
        if not self._connected():
            return NotPlayable(f"the LiveKit room of user {self.user_id!r} is not connected "
                               f"({self._last_disconnect_reason or 'no disconnect recorded'}); call JoinRoom")
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

    def counters(self) -> dict[str, int]:
        return {
            "connected": int(self._connected()),
            "participant_count": self._participant_count(),
            "stream_attached": int(self._lease is not None and self._lease.active),
            "mic_packets_received": self._packets_received,
            "mic_packets_lost": self._sequence.lost,
            "mic_packets_out_of_order": self._sequence.out_of_order,
            "mic_packets_empty": self._packets_empty,
            "mic_packets_ignored_other_sender": self._packets_ignored,
            "mic_packets_unnamed_sender": self._packets_unnamed,
            "mic_buffer_depth": len(self._mic),
            "mic_buffer_capacity": self._mic.capacity,
            "mic_buffer_dropped": self._mic.dropped,
            "cloud_chunks_published": self._chunks_published,
            "cloud_chunks_failed": self._chunks_failed,
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
