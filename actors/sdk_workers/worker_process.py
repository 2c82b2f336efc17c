"""The SDK worker process: it holds rooms for the bridge that started it.

Run as ``python -m actors.sdk_workers.worker_process FD NAME LOG_LEVEL LOG_FORMAT [ship-logs]``
by actors/sdk_workers/worker.py (a frozen bundle runs ``livekit-bridge
__sdk_worker_process__ FD ...``: see command.py), with FD one end of a
socketpair. It joins, publishes into and leaves rooms as the bridge asks (the
messages are listed in worker.py), and sends back each room's microphone
packets and events; with ``ship-logs``, its log lines too (the bridge ships
them: it holds the token, the worker does not), beside writing them on the
bridge's stderr (LOG_FD). Its own fd 2, where the SDK core logs, is a pipe the
bridge reads through a redactor (actors/operations/stderr_redaction.py).

It guarantees: when the bridge closes the connection, or dies, every room it
holds is left (tracks unpublished, disconnected) before it exits. It ignores
SIGINT and SIGTERM, which a terminal or a service manager sends the whole
process group: the bridge drains first and then closes the connection.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import time
from typing import Any, TextIO

import trio
import trio_asyncio
from loguru import logger

from .. import asyncio_compat
from ..livekit.room import AbandonedConnect, RoomConnectError
from ..livekit.sdk_core import configure_sdk_core
from ..livekit.sdk_room import SdkAudioOutput, SdkHost, SdkRoom
from ..operations.log_setup import configure_logging
from ..operations.log_shipping import WorkerLines
from ..operations.stderr_redaction import log_stream
from .frames import FrameChannel, Outbox
from .own_group_process import LOG_FD, discard_group_signals_and_unblock


class RoomsHeld:
    """The rooms and published tracks of this worker, by the bridge's keys."""

    def __init__(self, outbox: Outbox, nursery: trio.Nursery) -> None:
        self._outbox = outbox
        self._nursery = nursery
        self._host = SdkHost("worker")
        self._rooms: dict[int, SdkRoom] = {}
        #: key -> the cancel scope of the task that holds the room, and its end.
        self._holds: dict[int, tuple[trio.CancelScope, trio.Event]] = {}
        #: output id -> (room key, the track)
        self._outputs: dict[int, tuple[int, SdkAudioOutput]] = {}
        self._abandoned_ids = itertools.count(1)
        #: Requests being answered, so the bridge can cancel one it stopped waiting for.
        self._answering: dict[int, trio.CancelScope] = {}
        #: The requests answered with a reply, by kind.
        self._handlers: dict[str, Any] = {
            "leave": self._leave, "simulate": self._simulate, "publish": self._publish,
            "subscribed": self._subscribed, "capture": self._capture, "unpublish": self._unpublish,
            "close": self._close, "live_objects": self._live_objects, "ping": self._ping}

    def dispatch(self, message: tuple[Any, ...]) -> None:
        """Carry out one message of the bridge's (see worker.py for the list).

        Raises:
            LookupError: a kind this process does not know (a bridge and a
                worker of different versions: the worker exits).
        """
        kind, request = message[0], message[1]
        if kind == "join":
            self._nursery.start_soon(self._hold, request, *message[2:])
        elif kind == "clear":
            output = self._outputs.get(message[2])
            if output is not None:
                output[1].clear()
        elif kind == "cancel":  # the bridge stopped waiting for that request
            scope = self._answering.pop(message[2], None)
            if scope is not None:
                scope.cancel()
        else:
            handler = self._handlers.get(kind)
            if handler is None:
                raise LookupError(f"the bridge sent a message of an unknown kind: {kind!r}")
            # Registered now, so a "cancel" right behind it finds it.
            scope = self._answering[request] = trio.CancelScope()
            self._nursery.start_soon(self._answer, request, scope, handler, message[2:])

    async def _answer(self, request: int, scope: trio.CancelScope, handler: Any, arguments: tuple[Any, ...]) -> None:
        with scope:
            try:
                value = await handler(*arguments)
            except Exception as error:
                self._outbox.put(("reply", request, False, f"{type(error).__name__}: {error}"))
            else:
                self._outbox.put(("reply", request, True, value))
            finally:
                self._answering.pop(request, None)

    # -- rooms ---------------------------------------------------------------

    async def _hold(self, request: int, key: int, url: str, token: str, connect_timeout: float,
                    teardown_timeout: float) -> None:
        """Join, answer the join, and hold the room until the bridge says leave."""
        scope, ended = trio.CancelScope(), trio.Event()
        self._holds[key] = (scope, ended)
        answered = False
        try:
            with scope:
                async with self._host.open_room(
                        url, token, connect_timeout=connect_timeout, teardown_timeout=teardown_timeout,
                        on_data=lambda sender, payload, received_at: self._outbox.put_droppable(
                            ("data", key, sender, payload, received_at, time.monotonic())),
                        on_event=lambda name, detail: self._event(key, name, detail)) as room:
                    self._rooms[key] = room
                    self._outbox.put(("reply", request, True,
                                      (room.identity, list(room.remote_identities()), room.connected())))
                    answered = True
                    await trio.sleep_forever()
        except RoomConnectError as error:
            answered = True
            self._outbox.put(("reply", request, False, ("RoomConnectError", str(error),
                                                        self._watch(error.abandoned))))
        except Exception as error:
            answered = True
            logger.opt(exception=error).error("joining a room failed unexpectedly")
            self._outbox.put(("reply", request, False, ("Exception", f"{type(error).__name__}: {error}", None)))
        finally:
            self._rooms.pop(key, None)
            self._holds.pop(key, None)
            self._outputs = {out: held for out, held in self._outputs.items() if held[0] != key}
            if not answered:
                self._outbox.put(("reply", request, False, ("RoomConnectError", "the room was left before it "
                                                            "was joined", None)))
            ended.set()

    def _watch(self, abandoned: AbandonedConnect | None) -> int | None:
        """An id the bridge can wait on for a connect given up on, told by a
        "settled" message once it ended (and any room it reached was left)."""
        if abandoned is None:
            return None
        abandoned_id = next(self._abandoned_ids)

        async def watch() -> None:
            while not await abandoned.settle(5.0):
                pass
            self._outbox.put(("settled", abandoned_id))

        self._nursery.start_soon(watch)
        return abandoned_id

    def _event(self, key: int, name: str, detail: str) -> None:
        if name == "participants":
            room = self._rooms.get(key)
            if room is not None:
                self._outbox.put(("participants", key, list(room.remote_identities())))
        else:
            connected = self._rooms[key].connected() if key in self._rooms else False
            self._outbox.put(("event", key, name, detail, connected))

    async def _leave(self, key: int) -> None:
        hold = self._holds.get(key)
        if hold is not None:
            scope, ended = hold
            scope.cancel()
            await ended.wait()

    async def _ping(self) -> None:
        """Answered as soon as the event loop gets to it: the bridge's watchdog."""

    async def _live_objects(self) -> dict[str, Any]:
        """The leak check, in this process (actors/operations/live_objects.py)."""
        from ..operations.live_objects import live_objects

        return live_objects()

    async def _simulate(self, key: int, scenario: str) -> None:
        await self._room(key).simulate(scenario)

    def _room(self, key: int) -> SdkRoom:
        room = self._rooms.get(key)
        if room is None:
            raise LookupError("the room was left")
        return room

    # -- published tracks ------------------------------------------------------

    async def _publish(self, key: int, out: int, name: str, sample_rate: int, channels: int,
                       queue_ms: int) -> str:
        output = await self._room(key).publish_audio(name, sample_rate, channels, queue_ms)
        if key not in self._rooms:  # left while it published
            await output.close()
            raise LookupError("the room was left")
        self._outputs[out] = (key, output)
        return output.sid

    def _output(self, out: int) -> SdkAudioOutput:
        held = self._outputs.get(out)
        if held is None:
            raise LookupError("the track is no longer published (its room was left)")
        return held[1]

    async def _subscribed(self, out: int) -> None:
        await self._output(out).wait_for_subscription()

    async def _capture(self, out: int, pcm: bytes) -> float:
        output = self._output(out)
        await output.capture(pcm)
        return output.queued_seconds

    async def _unpublish(self, out: int) -> None:
        await self._output(out).unpublish()

    async def _close(self, out: int) -> None:
        held = self._outputs.pop(out, None)
        if held is not None:
            await held[1].close()


async def serve_bridge(sock: socket.socket, log_lines: WorkerLines | None = None) -> None:
    """Serve the bridge on ``sock`` until it closes the connection; hand it
    ``log_lines`` meanwhile, if given."""
    channel = FrameChannel(sock)
    async with trio.open_nursery() as nursery:
        outbox = Outbox(channel)
        nursery.start_soon(outbox.run_until_closed)
        if log_lines is not None:
            nursery.start_soon(log_lines.hand_over, outbox)
        rooms = RoomsHeld(outbox, nursery)
        outbox.put(("ready",))
        logger.info("SDK worker process ready (pid {})", os.getpid())
        try:
            while True:
                for message in await channel.receive():
                    rooms.dispatch(message)
        except (trio.EndOfChannel, trio.BrokenResourceError, ConnectionError):
            logger.info("the bridge closed the connection; leaving every room")
        nursery.cancel_scope.cancel()


def _own_log_lines() -> TextIO:
    """Where this process's own log lines go: the bridge's stderr, passed at
    LOG_FD. They need not pass through the redactor that this process's fd 2
    leads to (worker.py), which the SDK core's log and Python's own stderr
    (tracebacks) do. A worker started without it (bench/worker_hop.py) logs on fd 2."""
    try:
        return log_stream(LOG_FD)
    except OSError:
        return sys.stderr


def main(argv: list[str]) -> None:
    fd, name, log_level, log_format, *options = argv
    # The bridge drains on a stop of its group; it closes this process's connection when done.
    discard_group_signals_and_unblock()
    configure_logging(_own_log_lines(), level=log_level, log_format=log_format or None)
    log_lines = None
    if "ship-logs" in options:
        log_lines = WorkerLines()
        log_lines.install(log_level)
    asyncio_compat.match_asyncio()
    configure_sdk_core()
    sock = socket.socket(fileno=int(fd))
    with logger.contextualize(sdk_worker=name):
        trio_asyncio.run(serve_bridge, sock, log_lines)


if __name__ == "__main__":
    main(sys.argv[1:])
