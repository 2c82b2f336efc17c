"""Playback latency: PlayAudio call -> first sound at a listener subscribed as the phone is.

The listener is a process of its own, as the phone is. Three cases, because
they are different costs:
- fresh track: the track is not published yet, so the bridge publishes it and
  waits for the listener to subscribe before the first frame;
- fresh track behind a slow audio server: the server answers after 150 ms, as
  a TTS server that synthesises first; the bridge publishes the track while it
  waits, so LiveKit's subscription round trip hides behind that time;
- warm track: the track is still published from the previous sound (within the
  idle grace), so only fetch, decode and the network remain.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import trio

from audio_fixtures import tone, wav
from bridge_harness import PlayCall, join_request, token
from http_audio import audio_http_server
from proto.mentra.livekit import bridge as pb


HERE = pathlib.Path(__file__).resolve().parent
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
        env = dict(os.environ, PHONE_TOKEN=token(livekit, user, f"room-{user}"))
        listener = await trio.lowlevel.open_process(
            [sys.executable, str(HERE / "listener_process.py"), livekit.url],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        try:
            lines = LineReader(listener.stdout)
            with trio.fail_after(30):
                assert await lines.next() == "ready"
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
                        await listener.stdin.send_all(f"track_{track_id} {hz} {started}\n".encode())
                        answer = await lines.next()
                        assert answer != "timeout", f"the listener never heard track_{track_id}"
                        latencies.append(float(answer))
                    assert call.kinds()[-1] == "COMPLETED", call.events
                    ours[case].append((call.started_at - started) * 1000)
            await listener.stdin.aclose()
            with trio.move_on_after(10):
                await listener.wait()
        finally:
            listener.kill()
    return {**{f"first sound at the listener, {case}": values for case, values in cases.items()},
            **{f"STARTED (first frame to LiveKit), {case}": values for case, values in ours.items()}}


class LineReader:
    """Lines from a process's stdout."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some(4096)
            if not data:
                raise EOFError("the listener process ended")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode().strip()
