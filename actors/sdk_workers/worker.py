"""The bridge's side of an SDK worker process: the supervised actor that runs
it, and the rooms and tracks it holds, seen from here.

A :class:`WorkerSlot` is a RoomHost that stays put while its process is
restarted: links are placed on a slot, and each join goes to the process
running in it then. An :class:`SdkWorker` is the actor that starts the
process (worker_process.py), serves its connection and, cancelled, closes the
connection, upon which the process leaves every room and exits.

If the process dies, every room it held is reported lost to its link
("disconnected", SDK_WORKER_EXITED), every request waiting on it fails, and
the actor crashes: its supervisor starts a new process in the slot, and the
links rejoin there by themselves (their rejoin backoff), with no JoinRoom
from the cloud; a join meanwhile waits for the new process. A process that
answers no ping for PING_TIMEOUT seconds is hung: it is killed, and so dies.

The messages (frames.py; ``request`` is an id the reply names, None for
none):

    bridge -> worker: ("join", request, key, url, token, connect_timeout, teardown_timeout)
                      ("leave", request, key)          ("simulate", request, key, scenario)
                      ("publish", request, key, out, name, sample_rate, channels, queue_ms)
                      ("subscribed", request, out)     ("capture", request, out, pcm)
                      ("clear", None, out)             ("unpublish", request, out)
                      ("close", request, out)          ("live_objects", request)
                      ("ping", request)
                      ("cancel", None, request)        (the bridge stopped waiting for it)
    worker -> bridge: ("ready",)                       ("reply", request, ok, value or error)
                      ("data", key, sender, payload, received_at, forwarded_at)
                      ("event", key, name, detail, connected)
                      ("participants", key, identities)
                      ("settled", abandoned_id)
                      ("log", lines, dropped)          (its log lines, when the bridge ships
                                                        them: log_shipping.WorkerLines)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import trio
from loguru import logger

from ..livekit.event_filter import DataCallback
from ..livekit.room import RoomConnectError, connect_slot
from ..livekit.room_interface import EventCallback
from ..operations.configuration import declared
from ..operations.log_shipping import ship_worker_lines, shipping_active
from ..operations.metrics import MIC_DROPPED, ROOM_CONNECT
from ..operations.settings import BridgeSettings
from ..operations.stderr_redaction import DRAIN_SECONDS, StderrRelay, open_child_stderr
from ..runtime import Actor, Reply, only_cancelled
from .command import worker_command, worker_environment
from .frames import FrameChannel, Outbox
from .own_group_process import PASSED_FD, OwnGroupProcess

#: Longest a new worker process may take to import the SDK and say it is ready.
START_TIMEOUT = 30.0
#: A running worker is asked every PING_INTERVAL seconds whether it still
#: answers; one that has not answered within PING_TIMEOUT is hung (its event
#: loop stuck, or the process stopped) and is killed, and then started again.
PING_INTERVAL = 5.0
PING_TIMEOUT = 15.0


def _exit_description(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _first_failure(raised: BaseException) -> str:
    """What ended a worker: the first failure in what its task raised."""
    while isinstance(raised, BaseExceptionGroup):
        failures = raised.split(Exception)[0]
        raised = (failures or raised).exceptions[0]
    return str(raised) if isinstance(raised, WorkerGone) else f"{type(raised).__name__}: {raised}"


class WorkerGone(Exception):
    """The SDK worker process exited, or was stopped, before it answered."""


class WorkerError(Exception):
    """The SDK worker process could not do what was asked; the message says why."""


class WorkerConnection:
    """The bridge's end of one running worker process's socket."""

    def __init__(self, channel: FrameChannel, name: str) -> None:
        self.name = name
        self.outbox = Outbox(channel)
        self._channel = channel
        self._ids = itertools.count(1)
        #: request id -> the reply its asker awaits: (ok, value) as the worker sent them.
        self._waiting: dict[int, Reply[tuple[bool, Any]]] = {}
        self.rooms: dict[int, WorkerRoom] = {}
        self._abandoned: dict[int, WorkerAbandoned] = {}
        #: Why the connection is over (None while it serves).
        self.closed: str | None = None
        self.ready = False
        #: Microphone packets the process dropped because this side read too slowly.
        self.packets_dropped = 0

    def next_id(self) -> int:
        return next(self._ids)

    async def request(self, kind: str, *arguments: Any) -> Any:
        """Ask the worker and wait for its answer.

        Raises:
            WorkerGone: the process exited first.
            WorkerError: it answered with a failure.
        """
        ok, value = await self.call(kind, *arguments)
        if not ok:
            raise WorkerError(value)
        return value

    async def call(self, kind: str, *arguments: Any) -> tuple[bool, Any]:
        """``request``'s (ok, value) as the worker sent them.

        Raises:
            WorkerGone: the process exited first.
        """
        if self.closed is not None:
            raise WorkerGone(f"{self.name} is gone ({self.closed})")
        request = self.next_id()
        reply = self._waiting[request] = Reply()
        self.outbox.put((kind, request, *arguments))
        try:
            return await reply.wait()
        finally:
            del self._waiting[request]
            if not reply.answered:  # cancelled: the worker need not go on with it
                self.post("cancel", request)

    def requests_waiting(self) -> int:
        return len(self._waiting)

    def post(self, kind: str, *arguments: Any) -> None:
        """Tell the worker something that has no answer."""
        if self.closed is None:
            self.outbox.put((kind, None, *arguments))

    def abandoned(self, abandoned_id: int) -> WorkerAbandoned:
        pending = self._abandoned[abandoned_id] = WorkerAbandoned()
        return pending

    async def receive(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report started once the process is ready, then route what it sends
        until it closes the connection (it closes it only by exiting).

        Raises:
            WorkerGone: it closed the connection before it was ready.
        """
        try:
            while True:
                for message in await self._channel.receive():
                    self._route(message, task_status)
        except (trio.EndOfChannel, trio.BrokenResourceError, ConnectionError):
            if not self.ready:
                raise WorkerGone(f"{self.name} exited before it was ready (its log says why)") from None

    def _route(self, message: tuple[Any, ...], task_status: trio.TaskStatus[None]) -> None:
        kind = message[0]
        if kind == "data":
            room = self.rooms.get(message[1])
            if room is not None:
                room.on_data(message[2], message[3], message[4], message[5])
        elif kind == "reply":
            reply = self._waiting.get(message[1])
            if reply is not None:
                reply.send((message[2], message[3]))
        elif kind == "event":
            room = self.rooms.get(message[1])
            if room is not None:
                room.event(message[2], message[3], message[4])
        elif kind == "participants":
            room = self.rooms.get(message[1])
            if room is not None:
                room.remote = message[2]
        elif kind == "settled":
            pending = self._abandoned.pop(message[1], None)
            if pending is not None:
                pending.done.set()
        elif kind == "dropped":
            MIC_DROPPED.inc(message[1] - self.packets_dropped)
            self.packets_dropped = message[1]
        elif kind == "log":
            ship_worker_lines(message[1], message[2])
        elif kind == "ready":
            self.ready = True
            task_status.started()

    def close(self, why: str, *, rooms_lost: bool) -> None:
        """The process is gone: its waiters fail, its abandoned connects are
        over (a dead process holds no room), and, when ``rooms_lost`` (it
        died: it was not stopped with the bridge, whose links are stopping
        too), each room's link hears that its room is lost."""
        if self.closed is not None:
            return
        self.closed = why
        for reply in self._waiting.values():
            reply.fail(WorkerGone(f"{self.name} is gone ({why})"))
        for room in list(self.rooms.values()):
            if rooms_lost:
                room.event("disconnected", f"SDK_WORKER_EXITED ({why})", False)
        for pending in self._abandoned.values():
            pending.done.set()
        self._abandoned.clear()


class WorkerAbandoned:
    """A PendingConnect in a worker process (see room.AbandonedConnect)."""

    def __init__(self) -> None:
        self.done = trio.Event()

    @property
    def settled(self) -> bool:
        return self.done.is_set()

    async def settle(self, timeout: float) -> bool:
        with trio.move_on_after(timeout):
            await self.done.wait()
        return self.done.is_set()


class WorkerAudioOutput:
    """An AudioOutput published by a worker process."""

    def __init__(self, connection: WorkerConnection, out: int, sid: str, sample_rate: int, channels: int) -> None:
        self._connection = connection
        self._out = out
        self.sid = sid
        self.sample_rate = sample_rate
        self.channels = channels
        #: The source's queue as the last capture left it, and when.
        self._queued = 0.0
        self._queued_at = 0.0

    async def wait_for_subscription(self) -> None:
        await self._connection.request("subscribed", self._out)

    async def capture(self, pcm: bytes) -> None:
        self._queued = await self._connection.request("capture", self._out, pcm)
        self._queued_at = trio.current_time()

    @property
    def queued_seconds(self) -> float:
        return max(0.0, self._queued - (trio.current_time() - self._queued_at))

    def clear(self) -> None:
        self._connection.post("clear", self._out)
        self._queued = 0.0

    async def unpublish(self) -> None:
        await self._connection.request("unpublish", self._out)

    async def close(self) -> None:
        if self._connection.closed is None:
            await self._connection.request("close", self._out)


class WorkerRoom:
    """A JoinedRoom held by a worker process, as the link sees it."""

    def __init__(self, connection: WorkerConnection, key: int, on_data: DataCallback,
                 on_event: EventCallback) -> None:
        self._connection = connection
        self.key = key
        self.on_data = on_data
        self._on_event = on_event
        self._identity = ""
        self._connected = False
        self.remote: list[str] = []

    async def join(self, url: str, token: str, connect_timeout: float, teardown_timeout: float) -> None:
        """Raises RoomConnectError (see RoomHost.open_room)."""
        try:
            # The worker bounds the connect itself; this only outlasts a worker that hangs.
            with trio.fail_after(connect_timeout + teardown_timeout + 5):
                ok, value = await self._connection.call("join", self.key, url, token, connect_timeout,
                                                        teardown_timeout)
        except WorkerGone as error:
            raise RoomConnectError(f"the SDK worker process exited while joining: {error}") from None
        except trio.TooSlowError:
            raise RoomConnectError(f"{self._connection.name} did not answer a join within "
                                   f"{connect_timeout + teardown_timeout + 5:g} s") from None
        if not ok:
            _, message, abandoned_id = value
            abandoned = self._connection.abandoned(abandoned_id) if abandoned_id is not None else None
            raise RoomConnectError(message, abandoned)
        self._identity, self.remote, self._connected = value

    def event(self, name: str, detail: str, connected: bool) -> None:
        self._connected = connected
        self._on_event(name, detail)

    @property
    def identity(self) -> str:
        return self._identity

    def connected(self) -> bool:
        return self._connected and self._connection.closed is None

    def remote_identities(self) -> Iterable[str]:
        return self.remote

    async def publish_audio(self, name: str, sample_rate: int, channels: int, queue_ms: int) -> WorkerAudioOutput:
        out = self._connection.next_id()
        sid = await self._connection.request("publish", self.key, out, name, sample_rate, channels, queue_ms)
        return WorkerAudioOutput(self._connection, out, sid, sample_rate, channels)

    async def simulate(self, scenario: str) -> None:
        await self._connection.request("simulate", self.key, scenario)


class WorkerSlot:
    """A RoomHost: the worker process in slot ``index``, whichever incarnation runs now."""

    def __init__(self, index: int, connect_slots: trio.CapacityLimiter | None = None) -> None:
        """``connect_slots`` bounds the connects in flight (shared by every worker: see room_hosts)."""
        self.index = index
        self.name = f"sdk-worker:{index}"
        self.connect_slots = connect_slots
        #: The running process's connection (None while it (re)starts).
        self.connection: WorkerConnection | None = None
        self._running = trio.Event()

    def serve(self, connection: WorkerConnection) -> None:
        self.connection = connection
        self._running.set()

    def lose(self, connection: WorkerConnection) -> None:
        if self.connection is connection:
            self.connection = None
            self._running = trio.Event()

    @contextlib.asynccontextmanager
    async def open_room(self, url: str, token: str, *, connect_timeout: float, teardown_timeout: float,
                        on_data: DataCallback, on_event: EventCallback) -> AsyncIterator[WorkerRoom]:
        with trio.move_on_after(connect_timeout):  # a process being restarted is waited for
            await self._running.wait()
        connection = self.connection
        if connection is None or connection.closed is not None:
            raise RoomConnectError(f"{self.name} (an SDK worker process) did not come back within "
                                   f"{connect_timeout:g} s; the link retries")
        # Registered before the join: packets and events that arrive while it connects find it.
        room = WorkerRoom(connection, connection.next_id(), on_data, on_event)
        connection.rooms[room.key] = room
        try:
            async with connect_slot(self.connect_slots):
                started = time.monotonic()
                await room.join(url, token, connect_timeout, teardown_timeout)
                ROOM_CONNECT.observe(time.monotonic() - started)
            yield room
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(teardown_timeout):
                with contextlib.suppress(WorkerGone, WorkerError):
                    await connection.request("leave", room.key)
            del connection.rooms[room.key]


class SdkWorker(Actor):
    """Runs the worker process of ``slot`` (see the module's docstring)."""

    mailbox_capacity = 1

    def __init__(self, slot: WorkerSlot, settings: BridgeSettings) -> None:
        super().__init__(slot.name)
        self.slot = slot
        self._settings = settings
        self._connection: WorkerConnection | None = None
        self._process: OwnGroupProcess | None = None
        #: Killed by the watchdog (see _kill_if_hung).
        self._hung = False

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report started once the process is ready; crash (WorkerGone) when it exits."""
        ours, theirs = socket.socketpair()
        try:
            process, stderr_relay = self._start_process(theirs)
        finally:
            theirs.close()
        self._process = process
        channel = FrameChannel(ours)
        connection = self._connection = WorkerConnection(channel, self.name)
        why, crashed = "stopped with the bridge", False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection.outbox.run_until_closed)
                with trio.fail_after(START_TIMEOUT):
                    await nursery.start(connection.receive)
                self.slot.serve(connection)
                logger.info("{} started (pid {})", self.name, process.pid)
                task_status.started()
                nursery.start_soon(self._kill_if_hung, connection, process)
                code = await process.wait()
                raise WorkerGone(f"pid {process.pid} " + (
                    f"answered no ping for {PING_TIMEOUT:g} s and was killed" if self._hung
                    else _exit_description(code)))
        except BaseException as raised:
            if not only_cancelled(raised):
                why, crashed = _first_failure(raised), True
            raise
        finally:
            self.slot.lose(connection)
            connection.close(why, rooms_lost=crashed)
            with trio.CancelScope(shield=True):
                await self._end_process(process, channel)
                # What it wrote last (a crash's last words) is still in the pipe: out before it is gone.
                await trio.to_thread.run_sync(stderr_relay.join, DRAIN_SECONDS)

    async def _kill_if_hung(self, connection: WorkerConnection, process: OwnGroupProcess) -> None:
        """Ping the process until cancelled; kill it when a ping goes
        unanswered for PING_TIMEOUT seconds (run() then reports it gone)."""
        while True:
            await trio.sleep(PING_INTERVAL)
            with trio.move_on_after(PING_TIMEOUT):
                await connection.request("ping")
                continue
            logger.error("{} (pid {}) has not answered for {:g} s; killing it", self.name, process.pid,
                         PING_TIMEOUT)
            self._hung = True
            process.kill()
            return

    def _start_process(self, theirs: socket.socket) -> tuple[OwnGroupProcess, StderrRelay]:
        settings = self._settings
        command = worker_command(str(PASSED_FD), self.name, settings.log_level, settings.log_format or "",
                                 *(["ship-logs"] if shipping_active() else []))
        # The worker joins with the tokens it is sent; it needs none of the bridge's secrets.
        secrets = {declaration.env for _, declaration, _ in declared(BridgeSettings) if declaration.secret}
        environment = worker_environment(
            {name: value for name, value in os.environ.items() if name not in secrets})
        # Its stderr, where the SDK core logs, reaches ours through the redactor (no token gets out: see
        # stderr_redaction.py), read here to its end; its own log lines go to ours directly (LOG_FD).
        stderr, relay = open_child_stderr(self.name)
        try:
            # A signal to the bridge's group (Ctrl-C, a service manager's stop) must not reach it.
            return OwnGroupProcess.spawn(command, environment, theirs.fileno(), stderr), relay
        finally:
            os.close(stderr)  # (the relay ends when the process's copy closes too, or at once if none was made)

    async def _end_process(self, process: OwnGroupProcess, channel: FrameChannel) -> None:
        """Close the connection (the process leaves its rooms and exits);
        kill it if it has not exited after two teardowns' time."""
        await channel.aclose()
        with trio.move_on_after(self._settings.teardown_timeout * 2):
            await process.wait()
        if process.returncode is None:
            logger.warning("{} (pid {}) did not exit after its connection closed; killing it", self.name,
                           process.pid)
            process.kill()
            await process.wait()

    def log_fields(self) -> dict[str, Any]:
        return {"sdk_worker": self.name}  # as the process's own lines carry it

    def details(self) -> dict[str, Any]:
        process = self._process
        return {"pid": process.pid if process is not None else None}

    def counters(self) -> dict[str, int]:
        connection = self._connection
        if connection is None:
            return {"rooms": 0}
        return {"rooms": len(connection.rooms), "frames_sent": connection.outbox.frames,
                "requests_waiting": connection.requests_waiting(),
                "mic_packets_dropped_in_worker": connection.packets_dropped}
