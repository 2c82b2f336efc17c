"""One user's bridge session: a LiveKit room joined on the user's behalf.

The session is an actor. It owns the room connection, the microphone buffer
that feeds the user's StreamAudio, and the tracks it publishes the cloud's
audio on. When its scope is cancelled it ends the stream, unpublishes its
tracks and leaves the room before it reports itself stopped, so its
supervisor can start a replacement knowing nothing of the old one remains.
"""

from __future__ import annotations

import time
from typing import Any

import trio
from livekit import rtc
from loguru import logger
from trio_asyncio import aio_as_trio

from .livekit_room import joined_room
from .messages import AttachStream, GetStatus, Join, Joined, SessionStatus
from .mic_audio import DropOldestBuffer, SequenceTracker, pcm_from_packet
from .runtime import Actor
from .settings import BridgeSettings
from .stream_lease import CloudChunk, MicChunk, StreamLease

TRACK_NAMES = {0: "speaker", 1: "app_audio", 2: "tts"}


def track_name(track_id: int) -> str:
    return TRACK_NAMES.get(track_id, f"track_{track_id}")


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
        self._tracks: dict[int, tuple[rtc.AudioSource, int, int]] = {}  # source, rate, channels
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
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._publish_cloud_audio)
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
            await self._close_sources()

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

    async def _close_sources(self) -> None:
        with trio.CancelScope(shield=True):
            for source, _rate, _channels in self._tracks.values():
                await aio_as_trio(source.aclose)()
        self._tracks.clear()

    # -- messages ----------------------------------------------------------

    async def handle(self, message: Any) -> None:
        if isinstance(message, GetStatus):
            message.reply.send(self.status())
        elif isinstance(message, AttachStream):
            message.reply.send(self._attach_stream())
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
        async with self._publish_receive:
            async for chunk in self._publish_receive:
                source = await self._source_for(chunk)
                if source is None:
                    continue
                frame = rtc.AudioFrame(
                    chunk.pcm, chunk.sample_rate, chunk.channels,
                    len(chunk.pcm) // (2 * chunk.channels),
                )
                try:
                    await aio_as_trio(source.capture_frame)(frame)
                except Exception as error:  # e.g. the room is reconnecting: drop, count, go on
                    self._chunks_failed += 1
                    logger.warning("user {}: cloud audio chunk not published: {}", self._join.user_id, error)
                    continue
                self._chunks_published += 1

    async def _source_for(self, chunk: CloudChunk) -> rtc.AudioSource | None:
        """The track's audio source, published on first use (an empty published
        track is heard as static on the phone, so none is made in advance).
        None when the chunk cannot be published; its stream is told why."""
        known = self._tracks.get(chunk.track_id)
        if known is not None:
            source, sample_rate, channels = known
            if (sample_rate, channels) != (chunk.sample_rate, chunk.channels):
                chunk.stream.refuse(
                    f"track {chunk.track_id} carries {sample_rate} Hz, {channels} channel(s); "
                    f"a chunk of {chunk.sample_rate} Hz, {chunk.channels} channel(s) cannot join it"
                )
                return None
            return source
        assert self._room is not None
        source = rtc.AudioSource(chunk.sample_rate, chunk.channels)
        track = rtc.LocalAudioTrack.create_audio_track(track_name(chunk.track_id), source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        try:
            await aio_as_trio(self._room.local_participant.publish_track)(track, options)
        except BaseException as error:
            with trio.CancelScope(shield=True):
                await aio_as_trio(source.aclose)()
            if not isinstance(error, Exception):
                raise
            self._chunks_failed += 1
            logger.warning("user {}: publishing track {} failed: {}", self._join.user_id,
                           track_name(chunk.track_id), error)
            return None
        self._tracks[chunk.track_id] = (source, chunk.sample_rate, chunk.channels)
        logger.info("user {}: published track {}", self._join.user_id, track_name(chunk.track_id))
        return source

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
            "published_tracks": len(self._tracks),
        }


def _reason_name(reason: Any) -> str:
    try:
        return rtc.DisconnectReason.Name(reason)
    except (ValueError, TypeError, AttributeError):
        return str(reason)
