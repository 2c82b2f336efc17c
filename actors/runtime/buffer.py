"""A bounded buffer for producers that must never wait."""

from __future__ import annotations

import collections
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


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

    def push(self, item: T) -> bool:
        """Add ``item``; True if the oldest item was dropped to make room."""
        if self._closed:
            return False
        dropped = len(self._items) >= self.capacity
        if dropped:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._waiting.unpark()
        return dropped

    async def get(self) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._items:
            if self._closed:
                raise trio.EndOfChannel
            await self._waiting.park()
        return self._items.popleft()

    async def get_batch(self, most: int) -> list[T]:
        """Wait for at least one item; take up to ``most``, oldest first."""
        first = await self.get()
        batch = [first]
        while self._items and len(batch) < most:
            batch.append(self._items.popleft())
        return batch

    def close(self) -> None:
        self._closed = True
        self._waiting.unpark_all()
