"""The phone as a listener, in its own process, so what it costs to listen is not charged to the bridge.

Usage: python bench/listener_process.py URL   (env PHONE_TOKEN)
Joins with auto-subscribe (as the phone app does), prints "ready", then
answers each stdin line "TRACK HZ SINCE" (SINCE a time.monotonic() value; the
clock is shared by the processes of one machine) with one line: the
milliseconds from SINCE to the first 10 ms frame on TRACK that carries the HZ
tone, or "timeout".
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import numpy as np
from livekit import rtc

RATE = 48_000
LOUD_RMS = 1000.0


class Track:
    def __init__(self) -> None:
        self.loud: list[tuple[float, np.ndarray]] = []  # (arrival, samples) of frames with sound
        self.arrived = asyncio.Event()


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    spectrum[0] = 0
    return float(np.argmax(spectrum) * RATE / len(samples))


async def record(track: rtc.Track, into: Track) -> None:
    async for event in rtc.AudioStream(track, sample_rate=RATE, num_channels=1):
        samples = np.frombuffer(bytes(event.frame.data), dtype=np.int16)
        if np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > LOUD_RMS:
            into.loud.append((time.monotonic(), samples))
            into.arrived.set()


async def first_sound(track: Track, hz: float, since: float, timeout: float = 10.0) -> str:
    checked = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for arrival, samples in track.loud[checked:]:
            if arrival >= since and abs(dominant_hz(samples) - hz) < 100:
                return f"{(arrival - since) * 1000:.2f}"
        checked = len(track.loud)
        track.arrived.clear()
        try:
            await asyncio.wait_for(track.arrived.wait(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            break
    return "timeout"


async def main(url: str) -> None:
    tracks: dict[str, Track] = {}
    tasks: set[asyncio.Task[None]] = set()
    room = rtc.Room()

    def on_subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication, *_: object) -> None:
        task = asyncio.ensure_future(record(track, tracks.setdefault(publication.name, Track())))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    room.on("track_subscribed", on_subscribed)
    await room.connect(url, os.environ["PHONE_TOKEN"], rtc.RoomOptions(auto_subscribe=True))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        name, hz, since = line.split()
        print(await first_sound(tracks.setdefault(name, Track()), float(hz), float(since)), flush=True)
    await room.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
