"""Messages between the bridge and its SDK worker processes, over one socket.

Each frame is a 4-byte length and a pickled list of messages (tuples whose
first item names the kind). Pickle is safe here because both ends are this
program, connected by a socketpair the bridge made; nothing else can write
to it. An :class:`Outbox` writes a message at once when nothing waits,
and gathers what is put while a frame is being written, so a burst of
microphone packets crosses in one frame.
"""

from __future__ import annotations

import collections
import pickle
import socket
from typing import Any

import trio

_LENGTH = 4
#: A frame longer than this is a bug on the other side, not a message.
MAX_FRAME = 64 * 1024 * 1024
#: What a dropped message leaves in the outbox's queue until run() skips it.
_DROPPED = object()


class FrameChannel:
    """Lists of messages over a connected socket; one writer at a time (an Outbox)."""

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._buffer = bytearray()

    @staticmethod
    def encode(messages: list[Any]) -> bytes:
        """``messages`` as one frame's bytes."""
        data = pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
        return len(data).to_bytes(_LENGTH, "big") + data

    async def send(self, messages: list[Any]) -> None:
        await self.send_encoded(self.encode(messages))

    async def send_encoded(self, data: bytes) -> None:
        await self._stream.send_all(data)

    def send_now(self, data: bytes) -> int:
        """Write what of ``data`` the socket takes without waiting: how many
        bytes (0 when its buffer is full). Only while no send is under way.

        Raises:
            OSError: the connection failed.
        """
        try:
            return self._socket.send(data)
        except BlockingIOError:
            return 0

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
    """What one side sends, in frames, in the order put.

    ``put`` never blocks and keeps everything: replies, events, requests.
    While nothing waits to be written, it writes the message's frame at once
    (one wake-up less per microphone packet); what the socket does not take
    then, and what is put meanwhile, :meth:`run` writes, gathered in frames.
    ``put_droppable`` (microphone packets) never blocks either: once
    ``droppable_limit`` of them wait, the oldest waiting one is dropped, as
    the bridge's microphone buffers do (actors/runtime/buffer.py), so a side
    that stops reading costs bounded memory and what it reads is the
    freshest audio; the drops are counted in ``dropped``. Whatever is not
    dropped is written in the order put.
    """

    def __init__(self, channel: FrameChannel, droppable_limit: int = 10_000) -> None:
        self._channel = channel
        self._pending: list[Any] = []
        #: The rest of a frame written in part at once; run() writes it first.
        self._unsent = b""
        self._writing = False
        #: Where in _pending the droppable messages wait, oldest first.
        self._droppable_at: collections.deque[int] = collections.deque()
        self._droppable_limit = droppable_limit
        self._wake = trio.Event()
        self.dropped = 0
        self.frames = 0

    def _behind_others(self) -> bool:
        """Whether a message put now must wait behind others: a frame being
        written, or messages and bytes not yet written."""
        return self._writing or bool(self._pending) or bool(self._unsent)

    def put(self, message: Any) -> None:
        if self._behind_others():
            self._queue(message)
        else:
            self._write_now(message)

    def put_droppable(self, message: Any) -> bool:
        """Put ``message``; True if the oldest droppable message waiting was
        dropped to make room for it."""
        if not self._behind_others():
            self._write_now(message)
            return False
        dropped = len(self._droppable_at) >= self._droppable_limit
        if dropped:
            self._pending[self._droppable_at.popleft()] = _DROPPED
            self.dropped += 1
        self._droppable_at.append(len(self._pending))
        self._queue(message)
        return dropped

    def _queue(self, message: Any) -> None:
        self._pending.append(message)
        self._wake.set()

    def _write_now(self, message: Any) -> None:
        data = self._channel.encode([message])
        try:
            written = self._channel.send_now(data)
        except OSError:  # run() meets the failure too, and reports it
            self._queue(message)
            return
        if written < len(data):
            self._unsent = data[written:]
            self._wake.set()
        self.frames += 1

    async def run(self) -> None:
        """Write what is put, until cancelled or the connection fails. A
        frame after drops ends with ("dropped", how many in all)."""
        reported = 0
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            # Not reset when a write is cut short (cancelled, failed): a frame
            # may be half written, and nothing may follow it.
            self._writing = True
            if self._unsent:
                await self._channel.send_encoded(self._unsent)
                self._unsent = b""
            batch, self._pending = self._pending, []
            self._droppable_at.clear()
            if self.dropped != reported:
                batch = [message for message in batch if message is not _DROPPED]
                batch.append(("dropped", self.dropped))
                reported = self.dropped
            if batch:
                await self._channel.send(batch)
                self.frames += 1
            self._writing = False

    async def run_until_closed(self) -> None:
        """``run``, returning quietly once the other side has gone (its
        reader learns that too, and decides what follows)."""
        try:
            await self.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass
