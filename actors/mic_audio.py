"""The phone's microphone audio as it arrives in LiveKit data packets.

The phone sends lossy data packets: one sequence byte, then PCM16LE at
16 kHz mono. This module turns packets into PCM, counts what was lost on the
way, and holds the PCM in a bounded buffer until the cloud's stream takes it.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Generic, TypeVar

import trio

MIC_SAMPLE_RATE = 16_000
MIC_CHANNELS = 1

T = TypeVar("T")


def pcm_from_packet(payload: bytes) -> tuple[int | None, bytes]:
    """Split a phone packet into (sequence number or None, PCM16 bytes).

    A packet of odd length starts with the sequence byte. PCM16 samples are two
    bytes each, so what remains is even; an even packet carries no sequence
    byte and is all PCM. The PCM may be empty (a packet of 0 or 1 bytes).
    """
    if len(payload) % 2 == 1:
        return payload[0], payload[1:]
    return None, payload


@dataclasses.dataclass
class SequenceTracker:
    """Counts packets lost between consecutive sequence bytes (mod 256).

    A packet whose sequence number lies behind the last one (a late or
    duplicated packet on the lossy channel) is counted as out of order, not as
    a loss of most of the sequence space.
    """

    lost: int = 0
    out_of_order: int = 0
    _last: int | None = None

    def observe(self, sequence: int) -> None:
        if self._last is not None:
            gap = (sequence - self._last - 1) % 256
            if gap >= 128:
                self.out_of_order += 1
                return
            self.lost += gap
        self._last = sequence


class DropOldestBuffer(Generic[T]):
    """A bounded FIFO between a producer that must never wait and one consumer.

    ``push`` never blocks: when ``capacity`` items wait, the oldest is dropped
    and counted in ``dropped``; fresh audio matters more than stale audio.
    After ``close``, ``get`` drains what is left and then raises
    trio.EndOfChannel.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.dropped = 0
        self._items: collections.deque[T] = collections.deque()
        self._waiting = trio.lowlevel.ParkingLot()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: T) -> None:
        if self._closed:
            return
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._waiting.unpark()

    async def get(self) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._items:
            if self._closed:
                raise trio.EndOfChannel
            await self._waiting.park()
        return self._items.popleft()

    def close(self) -> None:
        self._closed = True
        self._waiting.unpark_all()
