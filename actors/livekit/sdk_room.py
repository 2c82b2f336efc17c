"""Rooms joined with the livekit SDK of this process (room_interface's local host).

The bridge uses it directly when it runs no SDK worker processes, and every
SDK worker process uses it for the rooms it holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import trio
from livekit import rtc
from trio_asyncio import aio_as_trio

from .event_filter import DataCallback
from .room import in_background, joined_room
from .room_interface import EventCallback


class SdkAudioOutput:
    """An AudioOutput: a LocalAudioTrack published in an rtc.Room."""

    def __init__(self, room: rtc.Room, source: rtc.AudioSource, publication: rtc.LocalTrackPublication) -> None:
        self._room = room
        self._source = source
        self._publication = publication
        self.sid = publication.sid
        self.sample_rate = source.sample_rate
        self.channels = source.num_channels

    async def wait_for_subscription(self) -> None:
        await aio_as_trio(self._publication.wait_for_subscription)()

    async def capture(self, pcm: bytes) -> None:
        frame = rtc.AudioFrame(pcm, self.sample_rate, self.channels, len(pcm) // (2 * self.channels))
        await aio_as_trio(self._source.capture_frame)(frame)

    @property
    def queued_seconds(self) -> float:
        return self._source.queued_duration

    def clear(self) -> None:
        self._source.clear_queue()

    async def unpublish(self) -> None:
        await aio_as_trio(self._room.local_participant.unpublish_track)(self.sid)

    async def close(self) -> None:
        await aio_as_trio(self._source.aclose)()


class SdkRoom:
    """A JoinedRoom: an rtc.Room of this process."""

    def __init__(self, room: rtc.Room) -> None:
        self.room = room

    @property
    def identity(self) -> str:
        return self.room.local_participant.identity

    def connected(self) -> bool:
        return self.room.connection_state == rtc.ConnectionState.CONN_CONNECTED

    def remote_identities(self) -> Iterable[str]:
        return [participant.identity for participant in self.room.remote_participants.values()]

    async def publish_audio(self, name: str, sample_rate: int, channels: int, queue_ms: int) -> SdkAudioOutput:
        source = rtc.AudioSource(sample_rate, channels, queue_size_ms=queue_ms)
        local = rtc.LocalAudioTrack.create_audio_track(name, source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        try:
            publication = await aio_as_trio(self.room.local_participant.publish_track)(local, options)
        except BaseException:
            with trio.CancelScope(shield=True):
                await aio_as_trio(source.aclose)()
            raise
        return SdkAudioOutput(self.room, source, publication)

    async def simulate(self, scenario: str) -> None:
        kind = rtc.SimulateScenarioKind.Value("SIMULATE_" + scenario)
        await aio_as_trio(in_background)(self.room.simulate_scenario(kind))


class SdkHost:
    """A RoomHost: this process's SDK, ``connect_slots`` bounding its connects in flight."""

    def __init__(self, name: str = "this process", connect_slots: trio.CapacityLimiter | None = None) -> None:
        self.name = name
        self.connect_slots = connect_slots

    @contextlib.asynccontextmanager
    async def open_room(self, url: str, token: str, *, connect_timeout: float, teardown_timeout: float,
                        on_data: DataCallback, on_event: EventCallback) -> AsyncIterator[SdkRoom]:
        subscribe = {
            "disconnected": lambda reason: on_event("disconnected", disconnect_reason_name(reason)),
            "reconnecting": lambda: on_event("reconnecting", ""),
            "reconnected": lambda: on_event("reconnected", ""),
            # (A host in another process passes the new list on; see worker_process.py.)
            "participant_connected": lambda _: on_event("participants", ""),
            "participant_disconnected": lambda _: on_event("participants", ""),
        }
        async with joined_room(url, token, connect_timeout=connect_timeout, teardown_timeout=teardown_timeout,
                               on_data=on_data, subscribe=subscribe, connect_slots=self.connect_slots) as room:
            yield SdkRoom(room)


def disconnect_reason_name(reason: Any) -> str:
    try:
        return rtc.DisconnectReason.Name(reason)
    except (ValueError, TypeError, AttributeError):
        return str(reason)
