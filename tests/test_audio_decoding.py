"""The playback's signal path without LiveKit: format detection, the fetch
limits against a real HTTP server, and decoding every WAV layout and codec
into frames of the right pitch and length."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import trio

from actors.audio.decoder import DecodeError, OutputFormat, decode_frames
from actors.audio.fetch import FetchError, FetchLimits, open_audio_url, redacted
from actors.audio.formats import UnsupportedAudio, declared_seconds, detect_container
from audio_fixtures import dominant_hz, encode, tone, wav
from http_audio import audio_http_server


async def decode(body: bytes, container: str, output: OutputFormat = OutputFormat(48_000, 1), *,
                 volume: float = 1.0, max_seconds: float = 600.0) -> tuple[np.ndarray, list]:
    """Decode ``body`` fed in network-sized pieces; return the PCM and the formats reported."""
    body_send, body_receive = trio.open_memory_channel[bytes](2)
    frames_send, frames_receive = trio.open_memory_channel[bytes](4)
    formats: list = []
    frames: list[bytes] = []
    async with trio.open_nursery() as nursery:
        async def feed() -> None:
            async with body_send:
                for start in range(16, len(body), 1500):
                    await body_send.send(body[start:start + 1500])

        nursery.start_soon(feed)
        nursery.start_soon(functools.partial(
            decode_frames, body_receive, frames_send, head=body[:16], container=container, output=output,
            volume=volume, max_seconds=max_seconds, on_format=formats.append,
            declared_seconds=declared_seconds(container, body[:4096])))
        async for frame in frames_receive:
            assert len(frame) == output.samples_per_frame * output.channels * 2
            frames.append(frame)
    return np.frombuffer(b"".join(frames), dtype=np.int16), formats


WAV_LAYOUTS = {
    "8-bit mono 8 kHz": dict(bits=8, channels=1, rate=8_000),
    "16-bit stereo 44.1 kHz": dict(bits=16, channels=2, rate=44_100),
    "24-bit stereo 48 kHz": dict(bits=24, channels=2, rate=48_000),
    "32-bit mono 22.05 kHz": dict(bits=32, channels=1, rate=22_050),
    "float stereo 11.025 kHz": dict(floating=True, channels=2, rate=11_025),
    "16-bit mono with odd extra chunks": dict(bits=16, channels=1, rate=16_000, extra_chunks=True),
}


@pytest.mark.parametrize("layout", WAV_LAYOUTS)
async def test_every_wav_layout_decodes_to_the_right_pitch_and_length(layout) -> None:
    options = dict(WAV_LAYOUTS[layout])
    rate = options.pop("rate")
    pcm, formats = await decode(wav(tone(rate, 1.0, 523.0), rate, **options), "wav")
    assert formats[0].sample_rate == rate and formats[0].channels == options["channels"]
    assert abs(len(pcm) - 48_000) <= 960  # one second, give or take the last frame's padding
    assert abs(dominant_hz(pcm[4800:43200], 48_000) - 523.0) < 5
    assert 9000 < np.abs(pcm).max() < 10500  # 0.3 of full scale, every bit depth alike


@pytest.mark.parametrize("container,codec,rate", [
    ("mp3", "mp3", 44_100), ("ogg", "libopus", 48_000), ("flac", "flac", 96_000)])
async def test_compressed_formats_decode_to_the_right_pitch(container, codec, rate) -> None:
    pcm, formats = await decode(encode(tone(rate, 1.0, 440.0), rate, container=container, codec=codec),
                                container, OutputFormat(16_000, 2))
    left = pcm[0::2]
    assert np.array_equal(left, pcm[1::2])  # mono copied to both channels of a stereo track
    assert abs(len(left) - 16_000) <= 16_000 * 0.05
    assert abs(dominant_hz(left[1600:14400], 16_000) - 440.0) < 5
    assert formats[0].container == container


async def test_volume_boost_clips_instead_of_wrapping() -> None:
    pcm, _ = await decode(wav(tone(16_000, 0.5, 300.0, amplitude=0.5), 16_000, channels=1), "wav", volume=4.0)
    assert pcm.max() == 32767 and pcm.min() == -32768
    # Wrapping would put large values of the wrong sign next to the peaks.
    peaks = np.flatnonzero(pcm == 32767)
    assert np.all(pcm[peaks[peaks < len(pcm) - 1] + 1] > 0)


async def test_the_duration_cap_counts_what_has_no_header_length() -> None:
    body = encode(tone(44_100, 3.0, 440.0), 44_100, container="mp3", codec="mp3")
    with pytest.RaisesGroup(pytest.RaisesExc(DecodeError, match="longer than the 2 s cap")):
        await decode(body, "mp3", max_seconds=2.0)


def test_container_from_type_then_suffix_then_magic() -> None:
    riff = wav(tone(8_000, 0.01, 440.0), 8_000, channels=1)[:16]
    assert detect_container("audio/mpeg; charset=binary", "http://h/a.wav", b"") == "mp3"
    assert detect_container("application/octet-stream", "http://h/a.flac?x=1", b"") == "flac"
    assert detect_container("", "http://h/speech", riff) == "wav"
    assert detect_container("binary/octet-stream", "http://h/x", b"OggS\x00\x02") == "ogg"
    assert detect_container("", "http://h/x", b"ID3\x04\x00") == "mp3"
    with pytest.raises(UnsupportedAudio, match="text/html"):
        detect_container("text/html", "http://h/a.mp3", b"<html>")
    with pytest.raises(UnsupportedAudio, match="not audio"):
        detect_container("audio/wav", "http://h/a.wav", b"<!DOCTYPE html>")
    with pytest.raises(UnsupportedAudio, match="video/mp4"):
        detect_container("video/mp4", "http://h/a", b"\x00\x00\x00\x18ftyp")


def test_a_wav_header_tells_its_length_unless_it_is_a_streaming_one() -> None:
    with_chunks = wav(tone(16_000, 2.0, 440.0), 16_000, channels=1, extra_chunks=True)
    assert declared_seconds("wav", with_chunks[:4096]) == pytest.approx(2.0)
    plain = wav(tone(16_000, 2.0, 440.0), 16_000, channels=1)
    assert plain[36:40] == b"data"
    streaming = plain[:40] + b"\xff\xff\xff\xff" + plain[44:]
    assert declared_seconds("wav", streaming[:4096]) is None
    assert declared_seconds("wav", plain[:12]) is None  # the head ends before the data chunk
    assert declared_seconds("mp3", plain) is None


def test_urls_are_reported_without_query_or_credentials() -> None:
    assert redacted("https://user:pw@tts.example:8443/a/b.mp3?token=s3cret#x") == "https://tts.example:8443/a/b.mp3"


async def test_the_private_address_guard_refuses_loopback_and_redirects_to_it() -> None:
    with audio_http_server() as server:
        url = server.add("a.wav", wav(tone(8_000, 0.1, 440.0), 8_000, channels=1), "audio/wav")
        async with open_audio_url(url, FetchLimits()) as download:  # off by default
            assert download.content_length is not None
        with pytest.raises(FetchError, match="private address"):
            async with open_audio_url(url, FetchLimits(refuse_private_addresses=True)):
                pass
        assert server.requests == ["/files/a.wav"]  # the refused request was never sent
