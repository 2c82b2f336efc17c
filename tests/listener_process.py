"""The user's phone as a listener, in a process of its own, so that what it
costs to listen neither slows the bridge under test nor is slowed by it.

Usage: python tests/listener_process.py URL   (env LISTENER_TOKEN)

It joins with auto-subscribe, as the phone app does, and writes to stdout,
for every 10 ms frame of every track it hears (48 kHz mono PCM16), one
record: RECORD (arrival time on CLOCK_MONOTONIC, which every process of the
machine shares; the track name's length; the sample count), the name, the
samples. A first record with an empty name and no samples says it has
joined. It leaves the room and exits at the end of its stdin.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time

from livekit import rtc

RECORD = struct.Struct("<dHI")
RATE = 48_000


def write(name: str, samples: bytes, arrival: float) -> None:
    encoded = name.encode()
    sys.stdout.buffer.write(RECORD.pack(arrival, len(encoded), len(samples) // 2) + encoded + samples)
    sys.stdout.buffer.flush()


async def record(track: rtc.Track, name: str) -> None:
    async for event in rtc.AudioStream(track, sample_rate=RATE, num_channels=1):
        write(name, bytes(event.frame.data), time.monotonic())


async def main(url: str) -> None:
    from actors.livekit.sdk_core import configure_sdk_core

    configure_sdk_core()
    recorders: set[asyncio.Task[None]] = set()
    room = rtc.Room()

    def on_subscribed(track: rtc.Track, publication: rtc.RemoteTrackPublication, *_: object) -> None:
        task = asyncio.ensure_future(record(track, publication.name))
        recorders.add(task)
        task.add_done_callback(recorders.discard)

    room.on("track_subscribed", on_subscribed)
    await room.connect(url, os.environ["LISTENER_TOKEN"], rtc.RoomOptions(auto_subscribe=True))
    write("", b"", time.monotonic())
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    await room.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
