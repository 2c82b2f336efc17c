"""The playback's signal path without LiveKit: format detection, the fetch
limits against a real HTTP server, and decoding every WAV layout and codec
into frames of the right pitch and length."""

from __future__ import annotations

import functools
import ipaddress

import numpy as np
import pytest
import trio

from actors.audio.decoder import DecodeError, OutputFormat, decode_frames
from actors.audio.fetch import FetchError, FetchLimits, open_audio_url, redacted
from actors.audio.formats import UnsupportedAudio, detect_container, wav_layout
from audio_fixtures import dominant_hz, encode, tone, wav
from http_audio import audio_http_server


class Decoded:
    def __init__(self) -> None:
        self.formats: list = []
        self.frames: list[bytes] = []
        self.sent_before_first_frame = 0

    @property
    def pcm(self) -> np.ndarray:
        return np.frombuffer(b"".join(self.frames), dtype=np.int16)


async def decode_fully(body: bytes, container: str, output: OutputFormat = OutputFormat(48_000, 1), *,
                       volume: float = 1.0, max_seconds: float = 600.0) -> Decoded:
    """Decode ``body`` fed in network-sized pieces, as the playback does (head first)."""
    head = body[:4096]
    body_send, body_receive = trio.open_memory_channel[bytes](0)
    frames_send, frames_receive = trio.open_memory_channel[bytes](4)
    decoded = Decoded()
    sent = len(head)
    async with trio.open_nursery() as nursery:
        async def feed() -> None:
            nonlocal sent
            async with body_send:
                for start in range(len(head), len(body), 1500):
                    await body_send.send(body[start:start + 1500])
                    sent += len(body[start:start + 1500])

        nursery.start_soon(feed)
        nursery.start_soon(functools.partial(
            decode_frames, body_receive, frames_send, head=head, container=container, output=output,
            volume=volume, max_seconds=max_seconds, on_format=decoded.formats.append,
            wav=wav_layout(head) if container == "wav" else None))
        async for frame in frames_receive:
            assert len(frame) == output.samples_per_frame * output.channels * 2
            if not decoded.frames:
                decoded.sent_before_first_frame = sent
            decoded.frames.append(frame)
    return decoded


async def decode(body: bytes, container: str, output: OutputFormat = OutputFormat(48_000, 1), *,
                 volume: float = 1.0, max_seconds: float = 600.0) -> tuple[np.ndarray, list]:
    decoded = await decode_fully(body, container, output, volume=volume, max_seconds=max_seconds)
    return decoded.pcm, decoded.formats


WAV_LAYOUTS = {
    "8-bit mono 8 kHz": dict(bits=8, channels=1, rate=8_000),
    "16-bit stereo 44.1 kHz": dict(bits=16, channels=2, rate=44_100),
    "24-bit stereo 48 kHz": dict(bits=24, channels=2, rate=48_000),
    "32-bit mono 22.05 kHz": dict(bits=32, channels=1, rate=22_050),
    "float stereo 11.025 kHz": dict(floating=True, channels=2, rate=11_025),
    "16-bit mono with odd extra chunks": dict(bits=16, channels=1, rate=16_000, extra_chunks=True,
                                              trailing_chunk=True),
}


@pytest.mark.parametrize("layout", WAV_LAYOUTS)
async def test_every_wav_layout_decodes_to_the_right_pitch_and_length(layout) -> None:
    options = dict(WAV_LAYOUTS[layout])
    rate = options.pop("rate")
    pcm, formats = await decode(wav(tone(rate, 1.0, 523.0), rate, **options), "wav")
    assert formats[0].sample_rate == rate and formats[0].channels == options["channels"]
    assert 48_000 <= len(pcm) <= 48_000 + 960  # one second, and the last frame's padding: no chunk played
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


def test_a_wav_header_tells_its_layout_and_length_unless_it_is_a_streaming_one() -> None:
    with_chunks = wav(tone(16_000, 2.0, 440.0), 16_000, channels=1, extra_chunks=True)
    layout = wav_layout(with_chunks[:4096])
    assert (layout.raw_format, layout.sample_rate, layout.channels) == ("s16le", 16_000, 1)
    assert layout.declared_seconds == pytest.approx(2.0)
    assert with_chunks[layout.data_offset - 8:layout.data_offset - 4] == b"data"
    assert wav_layout(wav(tone(8_000, 0.1, 1.0), 8_000, floating=True)[:4096]).raw_format == "f32le"
    plain = wav(tone(16_000, 2.0, 440.0), 16_000, channels=1)
    assert plain[36:40] == b"data"
    streaming = plain[:40] + b"\xff\xff\xff\xff" + plain[44:]
    assert wav_layout(streaming[:4096]).declared_seconds is None
    assert wav_layout(plain[:12]) is None  # the head ends before the data chunk
    assert wav_layout(encode(tone(8_000, 0.1, 1.0), 8_000, container="wav", codec="pcm_alaw")) is None


@pytest.mark.parametrize("container,make", [
    ("wav", lambda: wav(tone(24_000, 5.0, 440.0), 24_000, channels=1)),
    ("mp3", lambda: encode(tone(24_000, 5.0, 440.0), 24_000, container="mp3", codec="mp3", channels=1)),
    ("ogg", lambda: encode(tone(48_000, 5.0, 440.0), 48_000, container="ogg", codec="libopus", channels=1)),
])
async def test_the_first_frame_needs_only_the_first_few_kilobytes(container, make) -> None:
    # A server that streams while it synthesises sends little at a time: the
    # first sound must not wait for seconds of it (FFmpeg's WAV demuxer alone
    # reads 64 KiB ahead, 1.4 s of this file).
    decoded = await decode_fully(make(), container)
    assert decoded.sent_before_first_frame <= 16_384, decoded.sent_before_first_frame


def test_urls_are_reported_without_query_or_credentials() -> None:
    assert redacted("https://user:pw@tts.example:8443/a/b.mp3?token=s3cret#x") == "https://tts.example:8443/a/b.mp3"


async def test_redirects_are_followed_and_the_private_address_guard_refuses_loopback() -> None:
    with audio_http_server() as server:
        url = server.add("a.wav", wav(tone(8_000, 0.1, 440.0), 8_000, channels=1), "audio/wav")
        async with open_audio_url(server.url("/redirect/2/a.wav"), FetchLimits()) as download:  # guard off
            assert download.url == url and download.content_length is not None
        assert server.requests == ["/redirect/2/a.wav", "/redirect/1/a.wav", "/files/a.wav"]
        server.requests.clear()
        with pytest.raises(FetchError, match="private address"):
            async with open_audio_url(url, FetchLimits(refuse_private_addresses=True)):
                pass
        assert server.requests == []  # the refused request was never sent


#: The guard as the tests see it: their servers are all on loopback, so one
#: loopback address stands for the public internet and every other is refused.
PUBLIC_STAND_IN = "127.0.0.1"
PRIVATE_STAND_IN = "127.0.0.3"


async def test_the_private_address_guard_refuses_a_redirect_to_a_private_address() -> None:
    """BRIDGE_PLAYBACK_REFUSE_PRIVATE: a public server's redirect to a
    private address is followed by the real client and refused before the
    request is sent."""
    guarded = FetchLimits(refuse_private_addresses=True,
                          is_refused_address=lambda address: address != ipaddress.ip_address(PUBLIC_STAND_IN))
    body = wav(tone(8_000, 0.1, 440.0), 8_000, channels=1)
    with audio_http_server(PUBLIC_STAND_IN) as public, audio_http_server(PRIVATE_STAND_IN) as private:
        public_url = public.add("a.wav", body, "audio/wav")
        private_url = private.add("a.wav", body, "audio/wav")
        async with open_audio_url(public_url, guarded) as download:  # the guard lets the public server through
            assert download.content_length == len(body)
        async with open_audio_url(private_url, FetchLimits()) as download:  # and only the guard stops this one
            assert download.content_length == len(body)
        private.requests.clear()
        with pytest.raises(FetchError, match=f"{PRIVATE_STAND_IN}, a private address"):
            async with open_audio_url(public.url(f"/redirect-to?location={private_url}"), guarded):
                pass
        assert public.requests[-1].startswith("/redirect-to?")
        assert private.requests == []
