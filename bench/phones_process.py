"""Phones in a process of their own: each joins its user's room and sends the
app's lossy microphone packets, stamped so the receiver can time them.

Usage: python bench/phones_process.py URL INTERVAL_S USER [USER ...]
       (env LIVEKIT_API_KEY, LIVEKIT_API_SECRET)

Every phone sends, every INTERVAL_S, one sequence byte and INTERVAL_S worth of
16 kHz PCM16 (3200 bytes for 100 ms). The PCM starts with stamps.STAMP: the
sender's CLOCK_MONOTONIC in ns, the user's index on the command line and a
16-bit packet counter. The phones are a load generator made cheap (no SDK
log forwarding, no room events, sends not awaited) so that they do not starve
the processes measured on the same two cores. Prints "ready" once every phone is in its room, starts
sending at a line "go" on stdin, pauses at the next line (e.g. "pause"; a
"go" after it resumes, the counters going on) and stops at end of input,
printing "sent USER COUNT" per phone.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from livekit import api, rtc
from livekit.rtc._ffi_client import FfiClient
from livekit.rtc._proto import ffi_pb2 as proto_ffi
from livekit.rtc._utils import get_address

from actors.livekit.sdk_core import configure_sdk_core
from stamps import STAMP


def phone_token(user: str) -> str:
    grants = api.VideoGrants(room_join=True, room=f"room-{user}", can_publish=True, can_publish_data=True)
    return (api.AccessToken(os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"])
            .with_identity(user).with_grants(grants).to_jwt())


def publish_lossy(room: rtc.Room, payload: bytes) -> None:
    """publish_data without waiting for its answer (the FFI copies the payload
    before it returns), so a process can drive tens of phones."""
    request = proto_ffi.FfiRequest()
    request.publish_data.local_participant_handle = room.local_participant._ffi_handle.handle
    request.publish_data.data_ptr = get_address(payload)
    request.publish_data.data_len = len(payload)
    request.publish_data.reliable = False
    FfiClient.instance.request(request)


async def send(room: rtc.Room, index: int, interval: float, stop: asyncio.Event, sent: int = 0) -> int:
    """Send until ``stop``, counting on from ``sent``; returns the count."""
    pcm_bytes = int(16000 * interval) * 2
    filler = bytes(pcm_bytes - STAMP.size)
    next_at = time.monotonic()
    while not stop.is_set():
        stamp = STAMP.pack(time.monotonic_ns(), index, sent % 65536)
        publish_lossy(room, bytes([sent % 256]) + stamp + filler)
        sent += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return sent


async def main(url: str, interval: float, users: list[str]) -> None:
    configure_sdk_core()
    rooms = [rtc.Room() for _ in users]
    await asyncio.gather(*(room.connect(url, phone_token(user), rtc.RoomOptions(auto_subscribe=False))
                           for room, user in zip(rooms, users)))
    # The phones need no room events: unsubscribe the rooms from the SDK's
    # event queue, which would hand each of them every event of the process.
    with FfiClient.instance.queue._lock:
        FfiClient.instance.queue._subscribers.clear()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    counts = [0] * len(rooms)
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "go":
        stop = asyncio.Event()
        # Spread the phones over one interval, as real phones are.
        senders = []
        for index, room in enumerate(rooms):
            senders.append(asyncio.ensure_future(send(room, index, interval, stop, counts[index])))
            await asyncio.sleep(interval / len(rooms))
        await loop.run_in_executor(None, sys.stdin.readline)  # a pause, or the end of input
        stop.set()
        counts = list(await asyncio.gather(*senders))
    for user, count in zip(users, counts):
        print(f"sent {user} {count}", flush=True)
    await asyncio.gather(*(room.disconnect() for room in rooms))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), sys.argv[3:]))
