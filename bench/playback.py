"""Playback latency: PlayAudio call -> first sound at a listener subscribed as the phone is.

Three cases, because they are different costs:
- fresh track: the track is not published yet, so the bridge publishes it and
  waits for the listener to subscribe before the first frame;
- fresh track behind a slow audio server: the server answers after 150 ms, as
  a TTS server that synthesises first; the bridge publishes the track while it
  waits, so LiveKit's subscription round trip hides behind that time;
- warm track: the track is still published from the previous sound (within the
  idle grace), so only fetch, decode and the network remain.
"""

from __future__ import annotations

import time

import trio

from audio_fixtures import dominant_hz, tone, wav
from bridge_harness import LISTEN_RATE, PlayCall, join_request, listener_in_room
from http_audio import audio_http_server
from proto.mentra.livekit import bridge as pb


async def first_sound_after(heard: dict, track: str, since: float, hz: float, timeout: float = 10.0) -> float:
    """Milliseconds from ``since`` to the first frame on ``track`` that carries
    the ``hz`` tone (consecutive sounds alternate tones, so the tail of the
    previous one, still arriving, is not taken for the start of this one)."""
    checked = 0  # frames are scanned once: the poll must not load the process it measures
    with trio.fail_after(timeout):
        while True:
            frames = heard.get(track)
            if frames is not None:
                for index in frames.loud(start=checked):
                    if frames.arrivals[index] >= since and \
                            abs(dominant_hz(frames.frames[index], LISTEN_RATE) - hz) < 100:
                        return (frames.arrivals[index] - since) * 1000
                checked = len(frames.levels)
            await trio.sleep(0.002)


SLOW_SERVER_MS = 150
TONES_HZ = (700.0, 1500.0)


async def playback_latency(client, livekit, samples: int) -> dict[str, list[float]]:
    """Latencies in ms by case, for a 44.1 kHz stereo WAV of 0.4 s: to the
    first sound at the listener, and to the STARTED event (the bridge's own
    part: fetch, decode, publish and subscription wait, first frame handed to
    LiveKit)."""
    user = "bench-playback"
    cases: dict[str, list[float]] = {"fresh track": [], f"fresh track, server answers after {SLOW_SERVER_MS} ms": [],
                                     "warm track": []}
    ours: dict[str, list[float]] = {case: [] for case in cases}
    with audio_http_server() as server:
        urls = {hz: server.add(f"bench-{hz:.0f}.wav", wav(tone(44_100, 0.4, hz), 44_100, channels=2), "audio/wav")
                for hz in TONES_HZ}
        async with listener_in_room(livekit, user) as heard:
            assert (await client.join(join_request(livekit, user))).success
            for index in range(samples):
                plan = ((TONES_HZ[0], "", 10 + 2 * index), (TONES_HZ[1], f"?delay_ms={SLOW_SERVER_MS}", 11 + 2 * index),
                        (TONES_HZ[0], "", 11 + 2 * index))
                for (case, latencies), (hz, query, track_id) in zip(cases.items(), plan):
                    call = PlayCall()
                    started = time.monotonic()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(client.play, pb.PlayAudioRequest(
                            request_id=f"bench-{index}-{track_id}-{hz:.0f}", audio_url=urls[hz] + query, user_id=user,
                            track_id=track_id), call)
                        latencies.append(await first_sound_after(heard, f"track_{track_id}", started, hz))
                    assert call.kinds()[-1] == "COMPLETED", call.events
                    ours[case].append((call.started_at - started) * 1000)
    return {**{f"first sound at the listener, {case}": values for case, values in cases.items()},
            **{f"STARTED (first frame to LiveKit), {case}": values for case, values in ours.items()}}
