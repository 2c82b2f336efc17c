"""The floor for memory: a bare livekit rtc process doing what the bridge does
in the chaos suite's rounds, with nothing of the bridge in it.

Usage: python tests/floor_process.py URL API_KEY ROUNDS USERS   (env LIVEKIT_API_SECRET)
Each round joins USERS rooms at once, publishes an audio track in each and
sends 100 ms into it, then leaves them all; after each round it prints
"round N RSS_KIB".
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys

from livekit import api, rtc


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def one_session(url: str, key: str, secret: str, user: str) -> None:
    grants = api.VideoGrants(room_join=True, room=f"room-{user}", can_publish=True)
    token = api.AccessToken(key, secret).with_identity(f"cloud-agent:{user}").with_grants(grants).to_jwt()
    room = rtc.Room()
    await room.connect(url, token, rtc.RoomOptions(auto_subscribe=False))
    source = rtc.AudioSource(16000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("speaker", source)
    await room.local_participant.publish_track(track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    await source.capture_frame(rtc.AudioFrame(bytes(3200), 16000, 1, 1600))
    await asyncio.sleep(0.2)
    await room.disconnect()
    await source.aclose()


async def main(url: str, key: str, rounds: int, users: int) -> None:
    secret = os.environ["LIVEKIT_API_SECRET"]
    for round_ in range(1, rounds + 1):
        await asyncio.gather(*(one_session(url, key, secret, f"floor-{index}") for index in range(users)))
        gc.collect()
        print(f"round {round_} {rss_kib()}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
