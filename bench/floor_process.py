"""The floor: a bare livekit rtc process that joins the users' rooms and only
receives their phones' packets. It runs the SDK exactly as the bridge does
(actors/livekit/sdk_core.py: log forwarding off, 4 tokio workers;
actors/livekit/event_filter.py: each room hears only its own events, data
packets taken at the source), so what it costs is what the SDK costs at its
best; the bridge is measured beside it.

Usage: python bench/floor_process.py   (env LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET)
Commands (bench/receiver_commands.py): {"op": "join", "users": [...]} (all at
once) and {"op": "arrivals"}, as bench/cloud_process.py.
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


class Floor:
    def __init__(self) -> None:
        self.arrivals = Arrivals()
        self.rooms: list[rtc.Room] = []

    async def join_one(self, user: str) -> tuple[float, str]:
        room = rtc.Room()
        room.on("data_received", lambda packet: self.arrivals.record(user, packet.data[1:]))
        started = time.perf_counter()
        try:
            await room.connect(os.environ["LIVEKIT_URL"], floor_token(user), rtc.RoomOptions(auto_subscribe=False))
        except rtc.ConnectError as error:
            return (time.perf_counter() - started) * 1000, str(error)
        self.rooms.append(room)
        receive_only_own_events(room, lambda sender, payload, received_at: self.arrivals.record(user, payload[1:]),
                                call_soon=asyncio.get_running_loop().call_soon_threadsafe)
        return (time.perf_counter() - started) * 1000, ""

    async def join(self, command: dict[str, Any]) -> dict[str, Any]:
        return await join_all_at_once(command["users"], self.join_one)

    async def take_arrivals(self, command: dict[str, Any]) -> dict[str, Any]:
        return self.arrivals.take()


async def main() -> None:
    configure_sdk_core()
    floor = Floor()
    await serve_commands({"join": floor.join, "arrivals": floor.take_arrivals})


if __name__ == "__main__":
    asyncio.run(main())
