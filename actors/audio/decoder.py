"""Decoding a downloaded body into the PCM frames a LiveKit track takes.

One worker thread per playback runs the chain: PyAV (FFmpeg) demuxes and
decodes whatever arrives, the channels are averaged to mono, soxr resamples to
the track's rate, the volume is applied with clipping, and fixed-length PCM16
frames come out. It reads the body from a Trio channel and writes frames to
another, both bounded, so download, decoding and publishing overlap and
memory stays bounded whatever the file's length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import soxr
import trio

from .formats import WavLayout


#: Decoder threads of the whole process. A playback past this many waits for
#: a thread (and, after its stall timeout, fails saying it got no audio).
#: Each thread mostly waits on its channels; the number bounds memory, not CPU.
DECODER_THREADS = trio.CapacityLimiter(256)


class DecodeError(Exception):
    """The body could not be decoded, or breaks a limit; the message says why."""


@dataclasses.dataclass(frozen=True)
class SourceFormat:
    """What the file holds, as its decoder found it."""

    container: str
    codec: str
    sample_rate: int
    channels: int

    def as_metadata(self) -> dict[str, str]:
        return {"format": f"{self.container}/{self.codec}", "source_sample_rate": str(self.sample_rate),
                "source_channels": str(self.channels)}


@dataclasses.dataclass(frozen=True)
class OutputFormat:
    """The frames the track takes: PCM16 at this rate and channel count."""

    sample_rate: int
    channels: int
    frame_ms: int = 20

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate * self.frame_ms // 1000


async def decode_frames(
    body: trio.MemoryReceiveChannel[bytes],
    frames: trio.MemorySendChannel[bytes],
    *,
    head: bytes = b"",
    container: str,
    wav: WavLayout | None = None,
    output: OutputFormat,
    volume: float,
    max_seconds: float,
    on_format: Callable[[SourceFormat], None],
) -> None:
    """Decode the body (``head``, then what arrives on ``body``) into PCM16 frames sent on ``frames``
    (each exactly ``output.samples_per_frame`` long, the last one padded with
    silence), then close ``frames``. A WAV file whose ``wav`` layout is known
    is read as raw PCM from its data chunk. ``on_format`` is called in Trio once the
    decoder knows the source's format, before the first frame.

    Raises:
        DecodeError: the body is not decodable as ``container``, holds no
            audio, is longer than ``max_seconds``, or is cut short (its header
            declares more audio than arrived).
    """
    reader = _BodyReader(body, head)
    if wav is not None:
        reader.skip(wav.data_offset)
        reader.limit(wav.data_bytes)
    job = _DecodeJob(reader, frames, container, output, volume, max_seconds, on_format)
    job.wav = wav
    async with frames:
        await trio.to_thread.run_sync(job.run, limiter=DECODER_THREADS)


class _DecodeJob:
    """The decoding chain as it runs in its worker thread."""

    def __init__(self, reader: _BodyReader, frames: trio.MemorySendChannel[bytes], container: str,
                 output: OutputFormat, volume: float, max_seconds: float,
                 on_format: Callable[[SourceFormat], None]) -> None:
        self._reader = reader
        self._frames = frames
        self._container = container
        self._output = output
        self._volume = volume
        self._max_samples = int(max_seconds * output.sample_rate)
        self._max_seconds = max_seconds
        self._on_format = on_format
        self._pending = np.zeros(0, dtype=np.int16)
        self._samples_out = 0
        self.wav: WavLayout | None = None

    def run(self) -> None:
        try:
            # The container is known, so FFmpeg need not read ahead to guess
            # anything: the first frame comes sooner. The first decoded frame
            # tells the source's rate and channels.
            with av.open(self._reader, mode="r", **self._open_arguments()) as container:
                self._decode(container)
        except av.FFmpegError as error:
            self._reader.raise_pending()  # cancellation or a failed download explains it better
            raise DecodeError(f"the {self._container} data could not be decoded: {error}") from None
        self._reader.raise_pending()

    def _open_arguments(self) -> dict[str, Any]:
        options = {"probesize": "32", "analyzeduration": "0"}
        wav = self.wav
        if wav is None:
            return {"format": self._container, "options": options}
        layout = {1: "mono", 2: "stereo"}.get(wav.channels, f"{wav.channels} channels")
        return {"format": wav.raw_format,
                "options": dict(options, sample_rate=str(wav.sample_rate), ch_layout=layout)}

    def _decode(self, container: Any) -> None:
        if not container.streams.audio:
            raise DecodeError(f"the {self._container} file holds no audio stream")
        stream = container.streams.audio[0]
        declared = self.wav.declared_seconds if self.wav is not None else _declared_seconds(container, stream)
        if declared is not None and declared > self._max_seconds:
            raise DecodeError(f"the audio lasts {declared:.0f} s, longer than the {self._max_seconds:g} s cap")
        resampler: soxr.ResampleStream | None = None
        source_samples = 0
        source_rate = 1
        for frame in container.decode(stream):
            mono = _mono_float(frame)
            if resampler is None:
                source_rate = frame.sample_rate
                trio.from_thread.run_sync(self._on_format, SourceFormat(
                    self._container, stream.codec_context.name, source_rate, len(frame.layout.channels)))
                resampler = soxr.ResampleStream(source_rate, self._output.sample_rate, 1,
                                                dtype="float32", quality="HQ")
            source_samples += len(mono)
            self._emit(resampler.resample_chunk(mono, last=False))
        if resampler is None:
            raise DecodeError(f"the {self._container} file holds no audio")
        self._emit(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        self._flush()
        self._reader.raise_pending()
        played = source_samples / source_rate
        if declared is not None and played < declared * 0.95 - 0.05:
            raise DecodeError(f"the file is cut short: its header declares {declared:.2f} s of audio, "
                              f"only {played:.2f} s arrived")

    def _emit(self, mono: np.ndarray) -> None:
        if not len(mono):
            return
        if self._samples_out + len(mono) > self._max_samples:
            raise DecodeError(f"the audio is longer than the {self._max_seconds:g} s cap")
        self._samples_out += len(mono)
        pcm = np.clip(mono * (32767.0 * self._volume), -32768, 32767).astype(np.int16)
        pending = np.concatenate((self._pending, pcm)) if len(self._pending) else pcm
        size = self._output.samples_per_frame
        whole = len(pending) // size * size
        for start in range(0, whole, size):
            self._send(pending[start:start + size])
        self._pending = pending[whole:]

    def _flush(self) -> None:
        if len(self._pending):
            size = self._output.samples_per_frame
            self._send(np.concatenate((self._pending, np.zeros(size - len(self._pending), dtype=np.int16))))
            self._pending = np.zeros(0, dtype=np.int16)

    def _send(self, mono_frame: np.ndarray) -> None:
        if self._output.channels > 1:
            mono_frame = np.repeat(mono_frame, self._output.channels)
        trio.from_thread.run(self._frames.send, mono_frame.tobytes())


class _BodyReader:
    """The file object PyAV reads the body from, in the worker thread.

    PyAV's read callback handles only Exception; a cancellation (or any other
    BaseException) raised while waiting for Trio is kept here, reported to
    FFmpeg as the end of the file, and raised again once PyAV has returned.
    """

    def __init__(self, body: trio.MemoryReceiveChannel[bytes], head: bytes) -> None:
        self._body = body
        self._buffer = head
        self._raised: BaseException | None = None
        self._to_skip = 0
        self._left: int | None = None

    def skip(self, count: int) -> None:
        """Pass over the first ``count`` bytes (a header already read)."""
        self._to_skip = count

    def limit(self, count: int | None) -> None:
        """End the file after ``count`` more bytes (what follows is not audio)."""
        self._left = count

    def read(self, size: int = -1) -> bytes:
        while True:
            while not self._buffer and self._raised is None:
                try:
                    self._buffer = trio.from_thread.run(self._body.receive)
                except trio.EndOfChannel:
                    return b""
                except BaseException as raised:
                    self._raised = raised
            if self._raised is not None or self._left == 0:
                return b""
            if self._to_skip:
                skipped = min(self._to_skip, len(self._buffer))
                self._buffer, self._to_skip = self._buffer[skipped:], self._to_skip - skipped
                continue
            size = len(self._buffer) if size < 0 else size
            if self._left is not None:
                size = min(size, self._left)
                self._left -= min(size, len(self._buffer))
            piece, self._buffer = self._buffer[:size], self._buffer[size:]
            return piece

    def seekable(self) -> bool:
        return False

    def raise_pending(self) -> None:
        if self._raised is not None:
            raised, self._raised = self._raised, None
            raise raised


def _mono_float(frame: av.AudioFrame) -> np.ndarray:
    """The frame's samples as float32 in [-1, 1], channels averaged."""
    samples = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        samples = samples.reshape(-1, channels).T
    kind = samples.dtype
    if kind == np.int16:
        samples = samples.astype(np.float32) / 32768.0
    elif kind == np.int32:
        samples = samples.astype(np.float32) / 2147483648.0
    elif kind == np.int64:
        samples = samples.astype(np.float32) / 9223372036854775808.0
    elif kind == np.uint8:
        samples = (samples.astype(np.float32) - 128.0) / 128.0
    else:
        samples = samples.astype(np.float32, copy=False)
    return samples.mean(axis=0, dtype=np.float32) if channels > 1 else samples[0]


#: Longer declared durations are taken as "unknown": streaming WAV writers
#: put the largest size (0xFFFFFFFF) in the header because they cannot know it.
_IMPLAUSIBLE_SECONDS = 6 * 3600


def _declared_seconds(container: Any, stream: Any) -> float | None:
    """How long the header says the audio is, when it says (WAV, FLAC)."""
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    else:
        return None
    return seconds if 0 < seconds < _IMPLAUSIBLE_SECONDS else None
