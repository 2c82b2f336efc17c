"""A phone in its own process, so the bench's CPU figures are the bridge's alone.

Usage: python bench/phone_process.py URL PACKETS INTERVAL_S   (env PHONE_TOKEN)
Joins, prints "ready", waits for a line on stdin, then sends PACKETS lossy
100 ms microphone packets whose PCM starts with time.monotonic() of the send.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time

from livekit import rtc


async def main(url: str, packets: int, interval: float) -> None:
    room = rtc.Room()
    await room.connect(url, os.environ["PHONE_TOKEN"], rtc.RoomOptions(auto_subscribe=False))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for index in range(packets):
        pcm = struct.pack("<d", time.monotonic()) + bytes(3200 - 8)
        await room.local_participant.publish_data(bytes([index % 256]) + pcm, reliable=False)
        await asyncio.sleep(interval)
    await room.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
