"""PlayAudio and StopAudio end to end: a real HTTP server serves the audio, the
bridge plays it into a real livekit-server, and the user's phone, subscribed as
the app is, listens. What it hears is checked for pitch, timing and loss."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Iterator

import numpy as np
import pytest
import trio
from grpclib.const import Status
from prometheus_client import REGISTRY

from audio_fixtures import STEP_SECONDS, STEPS_HZ, dominant_hz, encode, expected_hz_at, stepped_tone, tone, wav
from bridge_harness import (FRAME_SAMPLES, LISTEN_RATE, Heard, PlayCall, cloud, join_request, listener_in_room,
                            running_bridge)
from http_audio import AudioHTTPServer, audio_http_server
from proto.mentra.livekit import bridge as pb

@pytest.fixture(scope="module")
def audio_server() -> Iterator[AudioHTTPServer]:
    with audio_http_server() as server:
        yield server


@pytest.fixture
def bridge_settings(bridge_settings):
    # Short limits, so each bad input fails within a test's patience.
    return dataclasses.replace(bridge_settings, playback_read_timeout=1.5,
                               playback_stall_timeout=2.5, playback_max_bytes=2_000_000,
                               playback_max_seconds=20.0)


def play_request(user: str, url: str, request_id: str, *, track_id: int = 0, **fields) -> pb.PlayAudioRequest:
    return pb.PlayAudioRequest(request_id=request_id, audio_url=url, user_id=user, track_id=track_id, **fields)


def served_tone(audio_server: AudioHTTPServer, name: str, seconds: float, hz: float, **tone_options) -> str:
    """The URL at which ``audio_server`` serves a 16 kHz mono WAV tone as ``name``."""
    return audio_server.add(name, wav(tone(16_000, seconds, hz, **tone_options), 16_000, channels=1), "audio/wav")


async def start_playing(client, nursery: trio.Nursery, request: pb.PlayAudioRequest) -> PlayCall:
    """Start a PlayAudio call in ``nursery`` and return once its sound has started."""
    call = PlayCall()
    nursery.start_soon(client.play, request, call)
    with trio.fail_after(20):
        await call.started.wait()
    return call


def assert_heard_stepped_tone(heard: Heard, seconds: float) -> None:
    """The listener heard the whole stepped tone: at least 98 % of it, every
    step in order at its exact pitch, each lasting about as long as in the file.

    Step lengths get a tolerance: the listener's jitter buffer stretches or
    squeezes a little audio to follow the network, as it does on the phone,
    most under load. Pitch gets none: a resampling error shows there (and in
    COMPLETED's duration_ms, checked by the caller)."""
    loud = heard.loud()
    assert loud, "the listener heard nothing"
    assert 10 * len(loud) >= 0.98 * seconds * 1000, f"heard {10 * len(loud)} ms of {seconds * 1000:.0f} ms"
    samples = heard.samples(loud[0])[: int(seconds * 1.5 * LISTEN_RATE)]
    block = LISTEN_RATE // 50  # 20 ms: resolves 50 Hz, enough to tell the steps apart
    runs: list[list] = []  # [step frequency, first block, blocks]
    for index in range(len(samples) // block):
        found = dominant_hz(samples[index * block:(index + 1) * block], LISTEN_RATE)
        nearest = min(STEPS_HZ, key=lambda hz: abs(hz - found))
        if abs(found - nearest) > 60:  # silence, a transition
            continue
        if runs and runs[-1][0] == nearest:
            runs[-1][2] = index - runs[-1][1] + 1
        else:
            runs.append([nearest, index, 1])
    steps: list[list] = []
    for hz, first, blocks in runs:
        if blocks < 3:  # a transition's blur, or concealment in a gap: no step
            continue
        if steps and steps[-1][0] == hz:  # the same step, on both sides of a blur
            steps[-1][2] = first + blocks - steps[-1][1]
        else:
            steps.append([hz, first, blocks])
    expected = [expected_hz_at((i + 0.5) * STEP_SECONDS) for i in range(int(seconds / STEP_SECONDS))]
    assert [hz for hz, _, _ in steps] == expected, steps
    for hz, first, blocks in steps:
        middle = (first + blocks // 2) * block
        window = samples[middle - LISTEN_RATE // 10:middle + LISTEN_RATE // 10]  # 200 ms: 5 Hz resolution
        assert abs(dominant_hz(window, LISTEN_RATE) - hz) <= max(10.0, 0.02 * hz), (hz, steps)
    # The listener runs in a process of its own (tests/listener_process.py),
    # so its jitter buffer stretches a step only by what the network and the
    # machine's two cores do to it; a resampling error is caught by the pitch
    # above and by duration_ms.
    lengths = [blocks * 20 for _, _, blocks in steps]
    assert abs(statistics.median(lengths) - STEP_SECONDS * 1000) <= 0.15 * STEP_SECONDS * 1000, lengths
    assert all(abs(length - STEP_SECONDS * 1000) <= 250 for length in lengths), lengths


FORMATS = {
    "wav-44k-stereo": ("tone.wav", "audio/wav", lambda: wav(stepped_tone(44_100), 44_100, channels=2)),
    "mp3": ("tone.mp3", "audio/mpeg", lambda: encode(stepped_tone(44_100), 44_100, container="mp3", codec="mp3")),
    "ogg-opus": ("tone.opus", "application/octet-stream",  # found by its suffix and magic bytes
                 lambda: encode(stepped_tone(48_000), 48_000, container="ogg", codec="libopus")),
}


@pytest.mark.parametrize("kind", FORMATS)
async def test_the_listener_hears_the_file_right(bridge, livekit, audio_server, kind) -> None:
    name, content_type, make = FORMATS[kind]
    url = audio_server.add(name, make(), content_type)
    user = f"hear-{kind}"
    async with cloud(bridge.address) as client, listener_in_room(livekit, user) as heard:
        assert (await client.join(join_request(livekit, user))).success
        with trio.fail_after(30):
            call = await client.play(play_request(user, url, f"req-{kind}", track_id=2))
        await trio.sleep(0.3)  # the last frames reach the listener
    assert call.status == Status.OK, call.message
    assert call.kinds()[0] == "STARTED" and call.kinds()[-1] == "COMPLETED", call.kinds()
    started = call.events[0].metadata
    assert started["source_sample_rate"] == ("48000" if kind == "ogg-opus" else "44100")
    assert started["source_channels"] == "2" and started["format"].split("/")[0] in ("wav", "mp3", "ogg")
    assert "PROGRESS" in call.kinds()
    assert abs(call.final.duration_ms - 3000) <= 150, call.final.duration_ms
    assert_heard_stepped_tone(heard["tts"], 3.0)


async def test_stop_audio_silences_at_once_and_the_stream_ends_failed_stopped(
        bridge_settings, livekit, audio_server) -> None:
    """The track queues 3 s of audio here (BRIDGE_TRACK_QUEUE_MS), so a stop
    that left the queue would be heard for 3 s more; the 1 s allowed is for
    the way to the listener on a loaded machine, not a measure of it."""
    settings = dataclasses.replace(bridge_settings, track_queue_ms=3000)
    url = served_tone(audio_server, "long.wav", 10.0, 500.0)
    user = "stopper"
    async with running_bridge(settings) as bridge, cloud(bridge.address) as client, \
            listener_in_room(livekit, user) as heard, trio.open_nursery() as nursery:
        assert (await client.join(join_request(livekit, user))).success
        call = await start_playing(client, nursery, play_request(user, url, "long-one"))
        await trio.sleep(1.0)
        reply = await client.stop_audio(user, request_id="long-one", reason="user said stop")
        stopped_at = time.monotonic()
        assert reply.success and reply.stopped_request_id == "long-one"
        with trio.fail_after(10):
            await call.done.wait()
        await trio.sleep(1.5)  # listen on: nothing more may come
    speaker = heard["speaker"]
    assert speaker.loud_ms() >= 700  # it was playing
    assert speaker.last_loud_at() <= stopped_at + 1.0, speaker.last_loud_at() - stopped_at
    assert call.status == Status.OK
    assert call.kinds()[-1] == "FAILED" and "COMPLETED" not in call.kinds()
    assert call.final.metadata.get("stopped") == "true"
    assert "user said stop" in call.final.error


async def test_two_tracks_mix_and_stop_other_stops_both(bridge, livekit, audio_server) -> None:
    low = served_tone(audio_server, "low.wav", 8.0, 400.0)
    high = served_tone(audio_server, "high.wav", 8.0, 1100.0)
    short = served_tone(audio_server, "short.wav", 1.0, 700.0)
    user = "mixer"
    async with cloud(bridge.address) as client, listener_in_room(livekit, user) as heard, \
            trio.open_nursery() as nursery:
        assert (await client.join(join_request(livekit, user))).success
        app, tts = PlayCall(), PlayCall()
        nursery.start_soon(client.play, play_request(user, low, "app", track_id=1), app)
        nursery.start_soon(client.play, play_request(user, high, "tts", track_id=2), tts)
        with trio.fail_after(20):
            await app.started.wait()
            await tts.started.wait()
        await trio.sleep(1.5)
        tree = await client.actor_tree()
        third = await client.play(play_request(user, short, "third", track_id=0, stop_other=True))
        with trio.fail_after(10):
            await app.done.wait()
            await tts.done.wait()
    for name, hz in (("app_audio", 400.0), ("tts", 1100.0)):
        loud = heard[name].loud()
        assert 10 * len(loud) >= 500, name  # both were heard, at once
        middle = heard[name].samples(loud[0])[:int(0.5 * LISTEN_RATE)]
        assert abs(dominant_hz(middle, LISTEN_RATE) - hz) < 15, name
    for call in (app, tts):
        assert call.kinds()[-1] == "FAILED" and call.final.metadata.get("stopped") == "true"
        assert "third" in call.final.error
    assert third.kinds()[-1] == "COMPLETED", third.kinds()
    [session] = [node for node in tree["children"][0]["children"] if node["name"] == f"session:{user}"]
    playing = {child["details"]["request_id"]: child for child in session["children"]}
    assert set(playing) == {"app", "tts"}
    assert playing["app"]["details"]["url"].endswith("/files/low.wav")
    assert playing["tts"]["details"]["format"]["format"] == "wav/pcm_s16le"


async def test_a_playback_replaces_the_one_on_its_track_and_stop_audio_names_every_id_it_stopped(
        bridge, livekit, audio_server) -> None:
    first = served_tone(audio_server, "first.wav", 8.0, 400.0)
    second = served_tone(audio_server, "second.wav", 8.0, 700.0)
    beside = served_tone(audio_server, "beside.wav", 8.0, 1100.0)
    user = "replacer"
    async with cloud(bridge.address) as client, listener_in_room(livekit, user) as heard, \
            trio.open_nursery() as nursery:
        assert (await client.join(join_request(livekit, user))).success
        replaced = await start_playing(client, nursery, play_request(user, first, "first", track_id=0))
        other = await start_playing(client, nursery, play_request(user, beside, "beside", track_id=1))
        replacing = await start_playing(client, nursery, play_request(user, second, "second", track_id=0))
        with trio.fail_after(10):
            await replaced.done.wait()
        assert not other.done.is_set()  # another track's playback plays on
        heard_from = len(heard["speaker"].frames)
        with trio.fail_after(10):  # half a second of the second sound reaches the listener
            while heard["speaker"].loud_ms(after=replacing.started_at) < 500:
                await trio.sleep(0.05)
        reply = await client.stop_audio(user)  # no request id, no track: every playback
        with trio.fail_after(10):
            await other.done.wait()
            await replacing.done.wait()
    assert replaced.kinds()[-1] == "FAILED" and replaced.final.metadata.get("stopped") == "true"
    assert "replaced by playback 'second'" in replaced.final.error
    assert reply.success and sorted(reply.stopped_request_id.split(",")) == ["beside", "second"]
    for call in (other, replacing):
        assert call.kinds()[-1] == "FAILED" and call.final.metadata.get("stopped") == "true", call.kinds()
    # What the track carried after the replacement is the second sound alone.
    speaker = heard["speaker"]
    loud = speaker.loud(start=heard_from)
    assert abs(dominant_hz(speaker.samples(loud[0])[:LISTEN_RATE // 2], LISTEN_RATE) - 700.0) < 15


async def test_hanging_up_a_playaudio_call_does_not_stop_the_sound(bridge, livekit, audio_server) -> None:
    url = served_tone(audio_server, "on-its-own.wav", 2.0, 500.0)
    user = "hung-up"

    def counted(outcome: str) -> float:
        return REGISTRY.get_sample_value("bridge_playbacks_total", {"outcome": outcome}) or 0.0

    def playbacks(tree: dict) -> list:
        [session] = [n for n in tree["children"][0]["children"] if n["name"] == f"session:{user}"]
        return session["children"]

    before = {outcome: counted(outcome) for outcome in ("completed", "stopped")}
    async with cloud(bridge.address) as client, listener_in_room(livekit, user) as heard:
        assert (await client.join(join_request(livekit, user))).success
        async with trio.open_nursery() as calls:
            call = await start_playing(client, calls, play_request(user, url, "hung-up"))
            calls.cancel_scope.cancel()  # the cloud hangs up
        assert call.final.type == pb.PlayAudioEventEventType.STARTED  # it heard no more
        assert playbacks(await client.actor_tree())
        with trio.fail_after(10):
            while playbacks(await client.actor_tree()):
                await trio.sleep(0.1)
        await trio.sleep(0.3)  # the last frames reach the listener
    assert {outcome: counted(outcome) - count for outcome, count in before.items()} == {"completed": 1, "stopped": 0}
    assert heard["speaker"].loud_ms() >= 1800  # of 2 s


async def test_every_bad_input_fails_with_its_reason_while_another_track_plays(
        bridge, livekit, audio_server) -> None:
    good_wav = wav(tone(16_000, 3.0, 600.0), 16_000, channels=1)
    files = {
        "good.wav": (good_wav, "audio/wav"),
        "page.html": (b"<!DOCTYPE html><html><body>not found</body></html>", "text/html"),
        "noise.mp3": (bytes(np.random.default_rng(7).integers(0, 256, 40_000, dtype=np.uint8)), "audio/mpeg"),
        "cut.wav": (wav(tone(16_000, 1.0, 600.0), 16_000, channels=1, declared_seconds=3.0), "audio/wav"),
        "huge.wav": (wav(tone(16_000, 70.0, 600.0), 16_000, channels=1), "audio/wav"),
        "long.wav": (wav(tone(8_000, 25.0, 600.0), 8_000, channels=1, bits=8), "audio/wav"),
        "mystery.bin": (b"\x00\x01\x02\x03" * 1000, "application/octet-stream"),
    }
    for name, (body, content_type) in files.items():
        audio_server.add(name, body, content_type)
    background = served_tone(audio_server, "background.wav", 19.0, 440.0)
    cases = {
        "not found": (audio_server.url("/status/404"), "HTTP 404"),
        "server error": (audio_server.url("/status/500"), "HTTP 500"),
        "refused": ("http://127.0.0.1:9/x.wav", "could not connect"),
        "unresolvable": ("http://no-such-host.invalid/x.wav", "could not connect to no-such-host.invalid"),
        "html": (audio_server.url("/files/page.html"), "text/html, not audio"),
        "corrupt": (audio_server.url("/files/noise.mp3"), "could not be decoded"),
        "unknown format": (audio_server.url("/files/mystery.bin"), "not audio the bridge recognises"),
        "cut short": (audio_server.url("/files/cut.wav"), "cut short"),
        "broken off": (audio_server.url("/truncated/good.wav"), "broke off"),
        "too large": (audio_server.url("/files/huge.wav"), "larger than the 2 MB cap"),
        "too long": (audio_server.url("/files/long.wav"), "longer than the 20 s cap"),
        "slow drip": (audio_server.url("/drip/good.wav"), "sends too slowly: no playable audio for 2.5 s"),
        "silent server": (audio_server.url("/silent-headers"), "sent no answer within 1.5 s"),
        "silent body": (audio_server.url("/silent-body/good.wav"), "sent nothing for 1.5 s"),
        "redirect loop": (audio_server.url("/redirect/6/good.wav"), "redirects more than 5 times"),
        "redirect to ftp": (audio_server.url("/redirect-to?location=ftp://127.0.0.1/x.wav&token=secret"),
                            "not http(s)"),
    }
    user = "robust"
    async with cloud(bridge.address) as client, listener_in_room(livekit, user) as heard, \
            trio.open_nursery() as nursery:
        assert (await client.join(join_request(livekit, user))).success
        playing = await start_playing(client, nursery, play_request(user, background, "background", track_id=1))
        calls: dict[str, PlayCall] = {}
        async with trio.open_nursery() as bad:
            for track_id, (case, (url, _)) in enumerate(cases.items(), start=10):  # a track each
                calls[case] = PlayCall()
                bad.start_soon(client.play, play_request(user, url, case, track_id=track_id), calls[case])
                await trio.sleep(0.05)
        # Five redirects are allowed.
        followed = await client.play(play_request(user, audio_server.url("/redirect/5/good.wav"), "five", track_id=3))
        # The next second of the background's track, by its frames' count (not the test's clock).
        background_heard, first = heard["app_audio"], len(heard["app_audio"].frames)
        with trio.fail_after(10):
            while len(background_heard.frames) < first + 100:
                await trio.sleep(0.05)
        still_heard = 10 * sum(1 for index in background_heard.loud(start=first) if index < first + 100)
        assert not playing.done.is_set()
        await client.stop_audio(user, request_id="background")
    for case, (_, reason) in cases.items():
        call = calls[case]
        assert call.status == Status.OK, (case, call.status, call.message)
        assert call.kinds()[-1] == "FAILED", (case, call.kinds())
        assert reason in call.final.error, (case, call.final.error)
        assert "secret" not in call.final.error
    assert followed.kinds()[-1] == "COMPLETED", followed.events
    assert still_heard >= 800, still_heard  # the background kept playing throughout
    assert playing.final.metadata.get("stopped") == "true"


async def test_requests_the_bridge_cannot_take_get_a_failed_event_and_a_status(bridge, livekit) -> None:
    user = "validated"
    async with cloud(bridge.address) as client:
        assert (await client.join(join_request(livekit, user))).success
        for url, reason in (("", "audio_url is empty"), ("ftp://127.0.0.1/a.wav", "http:// or https://")):
            call = await client.play(play_request(user, url, "bad-url"))
            assert call.status == Status.INVALID_ARGUMENT and reason in call.message
            assert call.kinds() == ["FAILED"] and reason in call.final.error
        call = await client.play(play_request("nobody", "http://127.0.0.1/a.wav", "x"))
        assert call.status == Status.NOT_FOUND
        call = await client.play(play_request(user, "http://127.0.0.1/a.wav", "x", volume=-1.0))
        assert call.status == Status.INVALID_ARGUMENT and call.kinds() == ["FAILED"]
    # A session whose room is not connected: tests/test_healing.py (LiveKit down).


async def test_volume_scales_and_clips_and_a_silent_track_is_unpublished(bridge, livekit, audio_server) -> None:
    url = served_tone(audio_server, "quiet.wav", 1.0, 500.0, amplitude=0.2)
    user = "loudness"
    async with cloud(bridge.address) as client, listener_in_room(livekit, user) as heard:
        assert (await client.join(join_request(livekit, user))).success
        for request_id, volume in (("unset", 0.0), ("boosted", 8.0)):
            call = await client.play(play_request(user, url, request_id, volume=volume))
            assert call.kinds()[-1] == "COMPLETED"
        await trio.sleep(0.5)
        published = (await client.actor_tree())
        await trio.sleep(3.0)  # past the 2 s grace
        after = await client.actor_tree()
    def session_counters(tree):
        [session] = [n for n in tree["children"][0]["children"] if n["name"] == f"session:{user}"]
        return session["counters"]
    assert session_counters(published)["published_tracks"] == 1
    assert session_counters(after)["published_tracks"] == 0
    assert session_counters(after)["tracks_unpublished_idle"] >= 1
    frames = heard["speaker"]
    peaks = [int(np.abs(frame).max()) for frame in frames.frames]
    loud = [p for p in peaks if p > 1000]
    # Unset volume plays at 1.0 (peak ~0.2 full scale); 8x clips at full scale, never wraps.
    assert any(5000 < p < 8000 for p in loud)
    assert any(p > 30000 for p in loud)
    assert len(frames.samples()) >= FRAME_SAMPLES


@pytest.mark.parametrize("ending", ["leave", "replace"])
async def test_leaving_or_replacing_the_session_stops_its_playbacks_first(
        bridge, livekit, audio_server, ending, log_lines) -> None:
    url = served_tone(audio_server, "ending.wav", 10.0, 500.0)
    url += "?signature=do-not-log-me"
    user = f"ending-{ending}"
    async with cloud(bridge.address) as client, listener_in_room(livekit, user) as heard, \
            trio.open_nursery() as nursery:
        assert (await client.join(join_request(livekit, user))).success
        call = await start_playing(client, nursery, play_request(user, url, "cut"))
        await trio.sleep(0.5)
        if ending == "leave":
            assert (await client.leave(user)).success
        else:
            assert (await client.join(join_request(livekit, user))).success
        ended_at = time.monotonic()
        # The old session's teardown awaited its playback: its final event is already out.
        with trio.fail_after(5):
            await call.done.wait()
        await trio.sleep(1.0)
        tree = await client.actor_tree()
    assert call.kinds()[-1] == "FAILED" and call.final.metadata.get("stopped") == "true"
    assert "session" in call.final.error
    assert heard["speaker"].last_loud_at() <= ended_at + 0.2
    sessions = tree["children"][0]["children"]
    assert all(node["children"] == [] for node in sessions)  # no playback outlived its session
    assert not any("do-not-log-me" in line for line in log_lines)


async def test_a_streamed_track_that_falls_silent_is_unpublished_and_comes_back(bridge, livekit) -> None:
    user = "streamed-idle"
    async with cloud(bridge.address) as client, listener_in_room(livekit, user) as heard:
        assert (await client.join(join_request(livekit, user))).success
        async with client.audio_stream(user) as stream:
            pcm = wav(tone(16_000, 0.1, 600.0), 16_000, channels=1)[44:]

            async def speak(seconds: float) -> None:
                for _ in range(int(seconds * 10)):
                    await stream.send(pb.AudioChunk(pcm_data=pcm, sample_rate=16_000, channels=1, track_id=1))
                    await trio.sleep(0.1)

            def counters(tree):
                [session] = [n for n in tree["children"][0]["children"] if n["name"] == f"session:{user}"]
                return session["counters"]

            await speak(1.0)
            assert counters(await client.actor_tree())["published_tracks"] == 1
            with trio.fail_after(10):
                while counters(await client.actor_tree())["published_tracks"] == 1:
                    await trio.sleep(0.2)
            heard_before = heard["app_audio"].loud_ms()
            await speak(1.0)
            await trio.sleep(0.5)
            tree = await client.actor_tree()
    assert counters(tree)["published_tracks"] == 1 and counters(tree)["tracks_unpublished_idle"] == 1
    assert heard["app_audio"].loud_ms() - heard_before >= 500  # heard again after it came back


async def test_playback_starts_before_the_download_ends_and_reads_only_a_bounded_window_ahead(
        bridge, livekit, audio_server) -> None:
    # A minute of audio whose header does not say its length, as a streaming TTS writer sends it.
    body = bytearray(wav(tone(16_000, 60.0, 500.0), 16_000, channels=1))
    body[40:44] = b"\xff\xff\xff\xff"
    url = audio_server.add("minute.wav", bytes(body), "audio/wav")
    user = "bounded"
    async with cloud(bridge.address) as client, listener_in_room(livekit, user), trio.open_nursery() as nursery:
        assert (await client.join(join_request(livekit, user))).success
        await start_playing(client, nursery, play_request(user, url, "minute"))
        await trio.sleep(1.5)
        tree = await client.actor_tree()
        await client.stop_audio(user, request_id="minute")
    [session] = [n for n in tree["children"][0]["children"] if n["name"] == f"session:{user}"]
    [playback] = session["children"]
    assert playback["details"]["state"] == "playing"
    assert 1000 <= playback["counters"]["position_ms"] <= 3000
    # What was read is the audio played plus the bounded buffers between the
    # stages, nowhere near the whole file (the socket holds the rest).
    assert playback["counters"]["bytes_downloaded"] < len(body) // 2, playback["counters"]
