"""The audio tracks a session publishes into its room, published only while they carry sound.

A track is published on first use and, before its first frame, waits (a
bounded time) until someone in the room has subscribed to it, so the start of
a sound is not lost to a listener still subscribing. A track nobody holds that
has carried no audio for ``idle_grace`` seconds is unpublished: an open track
with nothing on it is heard as static on the phone. Track ids are named as the
cloud names them: 0 speaker, 1 app_audio, 2 tts, n track_n.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator

import trio
from loguru import logger

from .room_interface import AudioOutput, JoinedRoom

TRACK_NAMES = {0: "speaker", 1: "app_audio", 2: "tts"}


def track_name(track_id: int) -> str:
    return TRACK_NAMES.get(track_id, f"track_{track_id}")


class TrackFormatMismatch(Exception):
    """Audio of another rate or channel count than the track already carries."""


class OutputTrack:
    """One published track and the source that feeds it.

    ``capture`` paces the caller in real time: the source queues at most
    ``queue_ms`` of audio and makes the next capture wait for room.
    """

    def __init__(self, track_id: int, output: AudioOutput) -> None:
        self.track_id = track_id
        self.name = track_name(track_id)
        self.output = output
        self.holders = 0
        self.last_audio = trio.current_time()
        self.carried_audio = False

    @property
    def sample_rate(self) -> int:
        return self.output.sample_rate

    @property
    def channels(self) -> int:
        return self.output.channels

    async def capture(self, pcm: bytes) -> None:
        """Queue PCM16 frames (``channels`` interleaved) for the track.

        Raises:
            Exception: the SDK refused the frame (e.g. the room is reconnecting).
        """
        await self.output.capture(pcm)
        self.carried_audio = True
        self.last_audio = trio.current_time() + self.output.queued_seconds

    @property
    def queued_seconds(self) -> float:
        return self.output.queued_seconds

    def clear(self) -> None:
        """Drop what is queued and not yet sent: the sound stops at once."""
        self.output.clear()
        self.last_audio = trio.current_time()


class OutputTracks:
    """A session's published tracks, by track id."""

    def __init__(self, room: JoinedRoom, *, user_id: str, idle_grace: float, subscribe_wait: float,
                 queue_ms: int) -> None:
        self._room = room
        self._user_id = user_id
        self._idle_grace = idle_grace
        self._subscribe_wait = subscribe_wait
        self._queue_ms = queue_ms
        self._tracks: dict[int, OutputTrack] = {}
        # Per track, so one track's wait for a subscriber holds up no other track.
        self._publishing: collections.defaultdict[int, trio.Lock] = collections.defaultdict(trio.Lock)
        self.published = 0
        self.unpublished_idle = 0
        self.subscribe_waits_timed_out = 0

    def __len__(self) -> int:
        return len(self._tracks)

    def get(self, track_id: int) -> OutputTrack | None:
        return self._tracks.get(track_id)

    def all(self) -> list[OutputTrack]:
        return list(self._tracks.values())

    async def acquire(self, track_id: int, sample_rate: int, channels: int) -> OutputTrack:
        """The track, published now if it is not.

        Raises:
            TrackFormatMismatch: the track is published with another rate or
                channel count.
            Exception: the SDK could not publish it.
        """
        async with self._publishing[track_id]:
            track = self._tracks.get(track_id)
            if track is None:
                track = await self._publish(track_id, sample_rate, channels)
        if (track.sample_rate, track.channels) != (sample_rate, channels):
            raise TrackFormatMismatch(
                f"track {track_id} carries {track.sample_rate} Hz, {track.channels} channel(s); "
                f"audio of {sample_rate} Hz, {channels} channel(s) cannot join it")
        return track

    @contextlib.asynccontextmanager
    async def held(self, track_id: int, sample_rate: int, channels: int) -> AsyncIterator[OutputTrack]:
        """``acquire``, and keep the track published while the block runs,
        however long it goes without audio."""
        track = await self.acquire(track_id, sample_rate, channels)
        track.holders += 1
        try:
            yield track
        finally:
            track.holders -= 1
            track.last_audio = max(track.last_audio, trio.current_time())

    async def unpublish_idle_tracks(self) -> None:
        """Run until cancelled: unpublish each track nobody holds once it has
        been silent for ``idle_grace`` seconds, or at once if it never carried
        audio (a playback published it ahead of its sound, then failed)."""
        while True:
            await trio.sleep(self._idle_grace / 4)
            now = trio.current_time()
            for track in self.all():
                if track.holders or self._publishing[track.track_id].locked():
                    continue
                if not track.carried_audio or now - track.last_audio >= self._idle_grace:
                    del self._tracks[track.track_id]
                    self.unpublished_idle += 1
                    await self._unpublish(track)

    async def close(self, timeout: float) -> None:
        """Unpublish every track (when the room is still connected: a room
        left or lost has unpublished them already), waiting at most
        ``timeout`` s, then release their sources; shielded."""
        tracks, self._tracks = self.all(), {}
        with trio.CancelScope(shield=True):
            with trio.move_on_after(timeout):
                for track in tracks:
                    if self._room.connected():
                        await self._unpublish_track(track)
            for track in tracks:
                await _close(track)

    async def _publish(self, track_id: int, sample_rate: int, channels: int) -> OutputTrack:
        began = trio.current_time()
        output = await self._room.publish_audio(track_name(track_id), sample_rate, channels, self._queue_ms)
        self.published += 1
        published_at = trio.current_time()
        # Registered at once: if the caller is cancelled while it waits below,
        # the idle reaper still finds the track and unpublishes it.
        track = self._tracks[track_id] = OutputTrack(track_id, output)
        # Frames sent before anyone subscribed are lost to the listener: the
        # start of the sound would be clipped.
        with trio.move_on_after(self._subscribe_wait) as waiting:
            await output.wait_for_subscription()
        if waiting.cancelled_caught:
            self.subscribe_waits_timed_out += 1
            logger.info("user {}: published track {} in {:.0f} ms; nobody subscribed within {:g} s, "
                        "sending anyway", self._user_id, track.name, (published_at - began) * 1000,
                        self._subscribe_wait)
        else:
            logger.info("user {}: published track {} in {:.0f} ms, subscribed {:.0f} ms later", self._user_id,
                        track.name, (published_at - began) * 1000, (trio.current_time() - published_at) * 1000)
        return track

    async def _unpublish(self, track: OutputTrack) -> None:
        logger.info("user {}: unpublishing silent track {}", self._user_id, track.name)
        with trio.CancelScope(shield=True):
            await self._unpublish_track(track)
            await _close(track)

    async def _unpublish_track(self, track: OutputTrack) -> None:
        try:
            await track.output.unpublish()
        except Exception as error:
            logger.warning("user {}: unpublishing track {} failed: {}", self._user_id, track.name, error)


async def _close(track: OutputTrack) -> None:
    try:
        await track.output.close()
    except Exception as error:  # (a worker process that exited has released it already)
        logger.debug("track {}'s source not closed: {}", track.name, error)
