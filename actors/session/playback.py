"""One PlayAudio: an actor that fetches, decodes and plays a sound on one of the session's tracks.

The user session supervises its playbacks. A playback guarantees:
- exactly one final event, COMPLETED (``duration_ms`` = audio actually played
  out) or FAILED with a reason; a playback that was stopped, by StopAudio, by a
  newer playback or by the session ending, ends FAILED with ``stopped=true``;
- download, decoding and publishing overlap, and everything between them is
  bounded, so the first audio goes out before the file has arrived and memory
  does not grow with the file;
- a stopped playback's queued audio is dropped at once: the sound stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import trio
from loguru import logger

from ..audio.decoder import DecodeError, OutputFormat, SourceFormat, decode_frames
from ..audio.fetch import FetchError, FetchLimits, open_audio_url, redacted
from ..audio.formats import HEAD_BYTES, UnsupportedAudio, detect_container, wav_layout
from ..livekit.output_tracks import OutputTrack, OutputTracks, TrackFormatMismatch
from ..operations.metrics import PLAYBACKS
from ..runtime import Actor, DropOldestBuffer, only_cancelled

#: Rate and channels of a track a playback publishes itself (Opus's own rate).
NEW_TRACK_FORMAT = OutputFormat(sample_rate=48_000, channels=1)
#: Failures that are the playback's outcome, not a fault of the bridge.
EXPECTED_FAILURES = (FetchError, UnsupportedAudio, DecodeError, TrackFormatMismatch)


@dataclasses.dataclass(frozen=True)
class PlaybackRequest:
    request_id: str
    url: str
    volume: float
    track_id: int


@dataclasses.dataclass(frozen=True)
class PlaybackLimits:
    fetch: FetchLimits = FetchLimits()
    max_seconds: float = 600.0
    #: Longest wait for the next decoded audio while playing (slow-drip servers).
    stall_timeout: float = 10.0
    #: Decoded frames (20 ms each) held ahead of the track.
    frames_ahead: int = 25
    #: Download pieces held ahead of the decoder.
    chunks_ahead: int = 8


@dataclasses.dataclass(frozen=True)
class PlaybackEvent:
    kind: str  # STARTED, PROGRESS, COMPLETED or FAILED
    request_id: str
    position_ms: int = 0
    duration_ms: int = 0
    error: str = ""
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)


class PlaybackEvents(DropOldestBuffer[PlaybackEvent]):
    """What a playback reports, in order, for its PlayAudio call to send.

    Bounded, and never blocks the playback: a caller that stops reading loses
    the oldest events first, so the final event is always there to read. It
    is closed after the final event.
    """

    def __init__(self, capacity: int = 32) -> None:
        super().__init__(capacity)


class Playback(Actor):
    """Plays one request on one track; see the module's guarantees."""

    mailbox_capacity = 1  # it takes no messages; it is told to stop by cancellation

    def __init__(self, request: PlaybackRequest, tracks: OutputTracks, limits: PlaybackLimits,
                 events: PlaybackEvents, *, user_id: str) -> None:
        super().__init__(f"playback:{request.request_id}")
        self.request = request
        self.track_id = request.track_id
        self.events = events
        #: Set by the session before it cancels this playback: reported in FAILED.
        self.stop_reason = "the session ended"
        self._tracks = tracks
        self._limits = limits
        self._user_id = user_id
        self._state = "fetching"
        self._format: SourceFormat | None = None
        self._track: OutputTrack | None = None
        self._output = NEW_TRACK_FORMAT
        self._played_samples = 0
        self._bytes = 0
        self._created_at = trio.current_time()
        #: Milliseconds from the request to its first frame handed to the track.
        self._first_frame_ms = 0
        self._underruns = 0

    # -- lifecycle -----------------------------------------------------------

    def log_fields(self) -> dict[str, Any]:
        return {"request_id": self.request.request_id}

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            outcome = self._event("COMPLETED", duration_ms=await self._play())
        except BaseException as raised:
            failure = _expected_failure(raised)
            if failure is not None:  # the playback's outcome, not a crash
                outcome = self._event("FAILED", error=str(failure))
            elif only_cancelled(raised):  # stopped
                self._stop_sound()
                outcome = self._event("FAILED", error=f"stopped: {self.stop_reason}", metadata={"stopped": "true"})
                raise
            else:  # a bug: reported to the caller, and a crash for the supervisor to log
                outcome = self._event("FAILED", error=f"internal error of the bridge: {raised!r}")
                raise
        finally:
            self._finish(outcome)

    def _finish(self, outcome: PlaybackEvent) -> None:
        self._state = outcome.kind.lower()
        PLAYBACKS.labels("stopped" if outcome.metadata.get("stopped") else outcome.kind.lower()).inc()
        self.events.push(outcome)
        self.events.close()
        log = logger.info if outcome.kind == "COMPLETED" or outcome.metadata.get("stopped") else logger.warning
        log("user {}: playback {} of {} {}: {} (first frame after {} ms)", self._user_id, self.request.request_id,
            redacted(self.request.url), outcome.kind, outcome.error or f"{outcome.duration_ms} ms",
            self._first_frame_ms)

    def _stop_sound(self) -> None:
        if self._track is not None and self._played_samples:
            self._track.clear()

    # -- the signal path -------------------------------------------------------

    async def _play(self) -> int:
        """Play the request; return the milliseconds of audio played out.

        The track is published (and its subscriber awaited) while the file is
        fetched: on a fresh track that hides LiveKit's subscription round trip
        behind the audio server's time to first byte.
        """
        self._output = output = self._output_format()
        track_ready = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._hold_track, output, track_ready)
            played = await self._fetch_and_publish(output, track_ready)
            nursery.cancel_scope.cancel()  # releases the track
        return played

    async def _hold_track(self, output: OutputFormat, ready: trio.Event) -> None:
        async with self._tracks.held(self.track_id, output.sample_rate, output.channels) as track:
            self._track = track
            ready.set()
            await trio.sleep_forever()

    async def _fetch_and_publish(self, output: OutputFormat, track_ready: trio.Event) -> int:
        async with open_audio_url(self.request.url, self._limits.fetch) as download:
            body_send, body_receive = trio.open_memory_channel[bytes](self._limits.chunks_ahead)
            frames_send, frames_receive = trio.open_memory_channel[bytes](self._limits.frames_ahead)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._download, download, body_send)
                head = await self._read_head(body_receive)
                container = detect_container(download.content_type, download.url, head)
                nursery.start_soon(functools.partial(
                    decode_frames, body_receive, frames_send, head=head, container=container,
                    wav=wav_layout(head) if container == "wav" else None, output=output,
                    volume=self.request.volume, max_seconds=self._limits.max_seconds,
                    on_format=self._on_format))
                return await self._publish(frames_receive, track_ready)

    async def _download(self, download: Any, body: trio.MemorySendChannel[bytes]) -> None:
        async with body:
            async for chunk in download.chunks():
                self._bytes += len(chunk)
                await body.send(chunk)

    def _output_format(self) -> OutputFormat:
        """The track's format if it is published (it keeps its first format), else our own."""
        track = self._tracks.get(self.track_id)
        if track is None:
            return NEW_TRACK_FORMAT
        return OutputFormat(track.sample_rate, track.channels)

    def _on_format(self, source: SourceFormat) -> None:
        self._format = source

    async def _publish(self, frames: trio.MemoryReceiveChannel[bytes], track_ready: trio.Event) -> int:
        """Pace the frames into the track in real time; return ms played out."""
        first = await self._next_frame(frames)
        if first is None:
            return 0  # the decoder says why, through the nursery
        await track_ready.wait()
        track = self._track
        assert track is not None
        self._state = "playing"
        frame: bytes | None = first
        next_progress = trio.current_time() + 1.0
        while frame is not None:
            if self._played_samples and track.queued_seconds == 0:
                self._underruns += 1  # the track ran dry: the listener hears a gap, concealed
            await track.capture(frame)
            self._played_samples += self._output.samples_per_frame
            if self._played_samples == self._output.samples_per_frame:
                self._first_frame_ms = int((trio.current_time() - self._created_at) * 1000)
                self.events.push(self._event("STARTED", metadata=self._format.as_metadata() if self._format else {}))
            elif trio.current_time() >= next_progress:
                next_progress += 1.0
                self.events.push(self._event("PROGRESS", position_ms=self.position_ms))
            frame = await self._next_frame(frames)
        self._state = "draining"
        await trio.sleep(track.queued_seconds)  # what is queued plays out
        self._state = "played"
        return self._samples_ms(self._played_samples)

    async def _read_head(self, body: trio.MemoryReceiveChannel[bytes]) -> bytes:
        """The body's first HEAD_BYTES (fewer if it is shorter)."""
        head = b""
        with self._stall_guard():
            while len(head) < HEAD_BYTES:
                try:
                    head += await body.receive()
                except trio.EndOfChannel:
                    break
        return head

    async def _next_frame(self, frames: trio.MemoryReceiveChannel[bytes]) -> bytes | None:
        with self._stall_guard():
            try:
                return await frames.receive()
            except trio.EndOfChannel:
                return None

    @contextlib.contextmanager
    def _stall_guard(self) -> Iterator[None]:
        """Fail a wait for audio that lasts longer than the stall timeout (slow-drip servers)."""
        with trio.move_on_after(self._limits.stall_timeout) as waiting:
            yield
        if waiting.cancelled_caught:
            raise FetchError(f"the audio server sends too slowly: no playable audio for "
                             f"{self._limits.stall_timeout:g} s after {self._bytes} bytes")

    # -- observability ---------------------------------------------------------

    @property
    def position_ms(self) -> int:
        queued = self._track.queued_seconds if self._state in ("playing", "draining") and self._track else 0.0
        return max(0, self._samples_ms(self._played_samples) - int(queued * 1000))

    def _samples_ms(self, samples: int) -> int:
        return samples * 1000 // self._output.sample_rate

    def _event(self, kind: str, **fields: Any) -> PlaybackEvent:
        return PlaybackEvent(kind, self.request.request_id, **fields)

    def counters(self) -> dict[str, int]:
        return {"position_ms": self.position_ms, "bytes_downloaded": self._bytes,
                "first_frame_after_ms": self._first_frame_ms, "underruns": self._underruns,
                "events_dropped": self.events.dropped}

    def details(self) -> dict[str, Any]:
        return {
            "request_id": self.request.request_id,
            "url": redacted(self.request.url),
            "track_id": self.track_id,
            "state": self._state,
            "format": self._format.as_metadata() if self._format else None,
        }


def _expected_failure(raised: BaseException) -> Exception | None:
    """The playback's own failure in what its nursery raised, if that is all it raised."""
    if isinstance(raised, EXPECTED_FAILURES):
        return raised
    if isinstance(raised, BaseExceptionGroup):
        matched, rest = raised.split(EXPECTED_FAILURES)
        if matched is not None and (rest is None or only_cancelled(rest)):
            while isinstance(matched, BaseExceptionGroup):
                matched = matched.exceptions[0]
            return matched
    return None
