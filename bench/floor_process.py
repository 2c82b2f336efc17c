"""The floor: a bare livekit rtc process that joins the users' rooms and only
receives their phones' packets. It runs the SDK exactly as the bridge does
(actors/livekit/sdk_core.py: log forwarding off, 4 tokio workers;
actors/livekit/event_filter.py: each room hears only its own events, data
packets taken at the source), so what it costs is what the SDK costs at its
best; the bridge is measured beside it.

Usage: python bench/floor_process.py   (env LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET)
Commands (bench/receiver_commands.py): {"op": "join", "users": [...]} (all at
once) and {"op": "arrivals"}, as bench/cloud_process.py; for the memory rung
(bench/memory.py) also {"op": "talk", "on": true|false}: every room joined
publishes an audio track and sends 100 ms of 16 kHz PCM into it every 100 ms,
as the bridge does with the cloud's audio, and {"op": "leave", "users": [...]}.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from livekit import api, rtc

from actors.livekit.event_filter import receive_only_own_events
from actors.livekit.sdk_core import configure_sdk_core
from receiver_commands import join_all_at_once, serve_commands
from stamps import Arrivals


def floor_token(user: str) -> str:
    grants = api.VideoGrants(room_join=True, room=f"room-{user}", can_subscribe=True)
    return (api.AccessToken(os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"])
            .with_identity(f"floor:{user}").with_grants(grants).to_jwt())


#: The cloud's audio as the memory rung sends it: 100 ms of 16 kHz mono PCM16 every 100 ms.
TALK_INTERVAL = 0.1
TALK_SAMPLES = 1600


class Floor:
    def __init__(self) -> None:
        self.arrivals = Arrivals()
        self.rooms: dict[str, rtc.Room] = {}
        self.talkers: dict[str, asyncio.Task] = {}
        self.talking = False

    async def join_one(self, user: str) -> tuple[float, str]:
        room = rtc.Room()
        room.on("data_received", lambda packet: self.arrivals.record(user, packet.data[1:]))
        started = time.perf_counter()
        try:
            await room.connect(os.environ["LIVEKIT_URL"], floor_token(user), rtc.RoomOptions(auto_subscribe=False))
        except rtc.ConnectError as error:
            return (time.perf_counter() - started) * 1000, str(error)
        self.rooms[user] = room
        if self.talking:
            self.talkers[user] = asyncio.create_task(self._talk(room))
        receive_only_own_events(room, lambda sender, payload, received_at: self.arrivals.record(user, payload[1:]),
                                call_soon=asyncio.get_running_loop().call_soon_threadsafe)
        return (time.perf_counter() - started) * 1000, ""

    async def join(self, command: dict[str, Any]) -> dict[str, Any]:
        return await join_all_at_once(command["users"], self.join_one)

    async def _talk(self, room: rtc.Room) -> None:
        """Publish a track in ``room`` and send silence into it until cancelled."""
        source = rtc.AudioSource(16000, 1)
        try:
            track = rtc.LocalAudioTrack.create_audio_track("speaker", source)
            await room.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
            frame = rtc.AudioFrame(bytes(TALK_SAMPLES * 2), 16000, 1, TALK_SAMPLES)
            next_at = time.monotonic()
            while True:
                await source.capture_frame(frame)
                next_at += TALK_INTERVAL
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            await source.aclose()

    async def talk(self, command: dict[str, Any]) -> dict[str, Any]:
        self.talking = bool(command["on"])
        for user, room in self.rooms.items():
            if self.talking and user not in self.talkers:
                self.talkers[user] = asyncio.create_task(self._talk(room))
            elif not self.talking and user in self.talkers:
                await self._silence(user)
        return {"talking": len(self.talkers)}

    async def _silence(self, user: str) -> None:
        task = self.talkers.pop(user, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def leave(self, command: dict[str, Any]) -> dict[str, Any]:
        took = []
        for user in command["users"]:
            started = time.perf_counter()
            await self._silence(user)
            room = self.rooms.pop(user, None)
            if room is not None:
                await room.disconnect()
            took.append((time.perf_counter() - started) * 1000)
        return {"ms": took}

    async def take_arrivals(self, command: dict[str, Any]) -> dict[str, Any]:
        return self.arrivals.take()


async def main() -> None:
    configure_sdk_core()
    floor = Floor()
    await serve_commands({"join": floor.join, "arrivals": floor.take_arrivals, "talk": floor.talk,
                          "leave": floor.leave})


if __name__ == "__main__":
    asyncio.run(main())
