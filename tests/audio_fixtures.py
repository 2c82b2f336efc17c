"""Audio files the tests make themselves: stepped tones whose pitch tells where
in the file a listener is, encoded with PyAV (WAV, MP3, Ogg Opus, FLAC) or
written byte by byte where the point is an unusual WAV layout."""

from __future__ import annotations

import io
import struct

import av
import numpy as np

#: The stepped tone: each step lasts STEP_SECONDS at its own frequency.
STEP_SECONDS = 0.5
STEPS_HZ = (330.0, 470.0, 610.0, 790.0, 1010.0, 1230.0)


def stepped_tone(sample_rate: int, seconds: float = 3.0, amplitude: float = 0.3) -> np.ndarray:
    """float32 samples in [-1, 1]; the frequency steps through STEPS_HZ (cycling)."""
    count = int(sample_rate * seconds)
    t = np.arange(count) / sample_rate
    step = (t // STEP_SECONDS).astype(int) % len(STEPS_HZ)
    phase = 2 * np.pi * np.cumsum(np.asarray(STEPS_HZ)[step]) / sample_rate
    return (amplitude * np.sin(phase)).astype(np.float32)


def expected_hz_at(seconds: float) -> float:
    return STEPS_HZ[int(seconds // STEP_SECONDS) % len(STEPS_HZ)]


def tone(sample_rate: int, seconds: float, hz: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def encode(samples: np.ndarray, sample_rate: int, *, container: str, codec: str, channels: int = 2) -> bytes:
    """Encode mono float samples (copied to every channel) with PyAV."""
    layout = "stereo" if channels == 2 else "mono"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(codec, rate=sample_rate, layout=layout)
        planes = np.repeat(samples[None, :], channels, axis=0)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes), format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()


def wav(samples: np.ndarray, sample_rate: int, *, channels: int = 2, bits: int = 16, floating: bool = False,
        extra_chunks: bool = False, declared_seconds: float | None = None, trailing_chunk: bool = False) -> bytes:
    """A RIFF/WAVE file written by hand, so the tests control every byte:
    PCM 8/16/24/32-bit or 32-bit float, optional odd-sized chunks before the
    data (each followed by its pad byte, as RIFF requires), and optionally a
    data size that declares more audio than the file holds."""
    frames = np.repeat(samples[:, None], channels, axis=1)
    if floating:
        data = frames.astype("<f4").tobytes()
        format_tag, bits = 3, 32
    elif bits == 8:
        data = np.clip(frames * 128 + 128, 0, 255).astype(np.uint8).tobytes()
        format_tag = 1
    else:
        scaled = np.clip(frames * (2 ** (bits - 1) - 1), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1).astype("<i4")
        if bits == 24:  # the low three bytes of each little-endian int32
            data = scaled.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
        else:
            data = scaled.astype(f"<i{bits // 8}").tobytes()
        format_tag = 1
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", format_tag, channels, sample_rate, sample_rate * block, block, bits)
    chunks = [b"fmt " + struct.pack("<I", len(fmt)) + fmt]
    if extra_chunks:
        for name, body in ((b"LIST", b"INFOISFT\x05\x00\x00\x00test\x00"), (b"junk", b"odd")):
            chunks.append(name + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b""))
    declared = len(data) if declared_seconds is None else int(declared_seconds * sample_rate) * block
    chunks.append(b"data" + struct.pack("<I", declared) + data + (b"\x00" if len(data) % 2 else b""))
    if trailing_chunk:
        chunks.append(b"LIST" + struct.pack("<I", 26) + b"INFOICMT\x0e\x00\x00\x00not audio!!!\x00\x00")
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def dominant_hz(samples: np.ndarray, sample_rate: int) -> float:
    window = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(window))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * sample_rate / len(samples))
