"""Playback latency: PlayAudio call -> first sound at a listener subscribed as the phone is.

Two cases, because they are different costs:
- fresh track: the track is not published yet, so the bridge publishes it and
  waits for the listener to subscribe before the first frame;
- warm track: the track is still published from the previous sound (within the
  idle grace), so only fetch, decode and the network remain.
"""

from __future__ import annotations

import time

import trio

from audio_fixtures import tone, wav
from bridge_harness import PlayCall, join_request, listener_in_room
from http_audio import audio_http_server
from proto.mentra.livekit import bridge as pb


async def first_sound_after(heard: dict, track: str, since: float, timeout: float = 10.0) -> float:
    """Milliseconds from ``since`` to the first loud frame on ``track`` that arrived after it."""
    with trio.fail_after(timeout):
        while True:
            frames = heard.get(track)
            if frames is not None:
                for index in frames.loud():
                    if frames.arrivals[index] >= since:
                        return (frames.arrivals[index] - since) * 1000
            await trio.sleep(0.002)


async def playback_latency(client, livekit, samples: int) -> tuple[list[float], list[float]]:
    """(fresh-track latencies, warm-track latencies) in ms, for a 44.1 kHz stereo WAV."""
    user = "bench-playback"
    fresh: list[float] = []
    warm: list[float] = []
    with audio_http_server() as server:
        url = server.add("bench.wav", wav(tone(44_100, 0.4, 700.0), 44_100, channels=2), "audio/wav")
        async with listener_in_room(livekit, user) as heard:
            assert (await client.join(join_request(livekit, user))).success
            for index in range(samples):
                for latencies, track_id in ((fresh, 10 + index), (warm, 10 + index)):
                    call = PlayCall()
                    started = time.monotonic()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(client.play, pb.PlayAudioRequest(
                            request_id=f"bench-{index}-{len(latencies)}", audio_url=url, user_id=user,
                            track_id=track_id), call)
                        latencies.append(await first_sound_after(heard, f"track_{track_id}", started))
                    assert call.kinds()[-1] == "COMPLETED", call.events
    return fresh, warm
