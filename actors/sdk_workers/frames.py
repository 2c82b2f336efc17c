"""Messages between the bridge and its SDK worker processes, over one socket.

Each frame is a 4-byte length and a pickled list of messages (tuples whose
first item names the kind). Pickle is safe here because both ends are this
program, connected by a socketpair the bridge made; nothing else can write
to it. An :class:`Outbox` gathers what is put while a frame is being
written, so a burst of microphone packets crosses in one frame.
"""

from __future__ import annotations

import pickle
from typing import Any

import trio

_LENGTH = 4
#: A frame longer than this is a bug on the other side, not a message.
MAX_FRAME = 64 * 1024 * 1024


class FrameChannel:
    """Lists of messages over a Trio stream; one writer at a time (an Outbox)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def send(self, messages: list[Any]) -> None:
        data = pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
        await self._stream.send_all(len(data).to_bytes(_LENGTH, "big") + data)

    async def receive(self) -> list[Any]:
        """The next frame's messages.

        Raises:
            trio.EndOfChannel: the other side closed the connection.
        """
        length = int.from_bytes(await self._read(_LENGTH), "big")
        if length > MAX_FRAME:
            raise ValueError(f"a frame of {length} bytes from the other process: the stream is out of step")
        return pickle.loads(await self._read(length))

    async def _read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = await self._stream.receive_some(max(65536, size - len(self._buffer)))
            if not chunk:
                raise trio.EndOfChannel("the other process closed the connection")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def aclose(self) -> None:
        await self._stream.aclose()


class Outbox:
    """What one side sends, written by :meth:`run` in frames.

    ``put`` never blocks and keeps everything: replies, events, requests.
    ``put_droppable`` (microphone packets) refuses once ``droppable_limit``
    messages wait, so a side that stops reading costs bounded memory; the
    refusals are counted in ``dropped``.
    """

    def __init__(self, channel: FrameChannel, droppable_limit: int = 10_000) -> None:
        self._channel = channel
        self._pending: list[Any] = []
        self._droppable = 0
        self._droppable_limit = droppable_limit
        self._wake = trio.Event()
        self.dropped = 0
        self.frames = 0

    def put(self, message: Any) -> None:
        self._pending.append(message)
        self._wake.set()

    def put_droppable(self, message: Any) -> bool:
        if self._droppable >= self._droppable_limit:
            self.dropped += 1
            return False
        self._droppable += 1
        self.put(message)
        return True

    async def run(self) -> None:
        """Write what is put, until cancelled or the connection fails. A
        frame after drops ends with ("dropped", how many in all)."""
        reported = 0
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch, self._pending, self._droppable = self._pending, [], 0
            if self.dropped != reported:
                batch.append(("dropped", self.dropped))
                reported = self.dropped
            await self._channel.send(batch)
            self.frames += 1

    async def run_until_closed(self) -> None:
        """``run``, returning quietly once the other side has gone (its
        reader learns that too, and decides what follows)."""
        try:
            await self.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass
