"""A LiveKit room joined from Trio, left completely on the way out.

The livekit SDK is asyncio code; everything here crosses into it through
trio-asyncio, so callers stay in Trio. :func:`joined_room` guarantees that when
its block exits, for any reason, the local tracks have been unpublished and
the room disconnected, shielded from the cancellation that is tearing the
caller down. The wait is bounded: a leave slower than ``teardown_timeout`` is
finished in the background, never interrupted (nor is a connect: see
_connect).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import trio
from livekit import rtc
from loguru import logger
from trio_asyncio import aio_as_trio

from ..operations.metrics import ROOM_CONNECT, ROOM_CONNECT_WAIT
from .event_filter import DataCallback, receive_only_own_events


class PendingConnect(Protocol):
    """A connect the bridge stopped waiting for, which may still reach the room."""

    @property
    def settled(self) -> bool:
        """It ended, and any room it reached was left."""

    async def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for it to settle; False if it has not."""


class RoomConnectError(Exception):
    """Joining the LiveKit room failed; the message says why.

    ``abandoned`` is set when the bridge stopped waiting for a connect that is
    still running inside the SDK (see AbandonedConnect).
    """

    def __init__(self, message: str, abandoned: PendingConnect | None = None) -> None:
        super().__init__(message)
        self.abandoned = abandoned


class AbandonedConnect:
    """A connect the bridge stopped waiting for, still running inside the SDK.

    It cannot be interrupted (see _connect), and it may yet join the room under
    the user's identity, which would make LiveKit evict the user's next session
    as a duplicate. It leaves the room the moment it gets there; ``settle``
    lets the next session of the same user wait for that first.
    """

    def __init__(self, leaving: asyncio.Future[None]) -> None:
        self._leaving = leaving

    @property
    def settled(self) -> bool:
        return self._leaving.done()

    async def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the connect to end and any room it
        reached to be left; False if it is still running."""
        await aio_as_trio(asyncio.wait)([self._leaving], timeout=timeout)
        return self._leaving.done()


@contextlib.asynccontextmanager
async def joined_room(
    url: str,
    token: str,
    *,
    connect_timeout: float,
    teardown_timeout: float,
    on_data: DataCallback,
    subscribe: dict[str, Any],
    auto_subscribe: bool = False,
    connect_slots: trio.CapacityLimiter | None = None,
) -> AsyncIterator[rtc.Room]:
    """Join the room at ``url`` with ``token`` (the bridge subscribes to no
    tracks: the phone's audio comes as data; a listener sets ``auto_subscribe``).

    ``on_data(sender_identity, payload, received_at)`` is called for every user data packet
    of this room; the sender is "" when the SDK cannot name it (the server
    itself, or a participant LiveKit has not announced yet). ``subscribe`` maps other
    room event names to callbacks. All are registered before connecting, so no
    event is missed, and all run in the Trio thread.

    ``connect_slots`` bounds the connects in flight in the process: while a
    room connects, the SDK delivers the data packets of rooms already
    connected late (by up to seconds when tens connect at once), so a join
    storm is let through a few at a time. ``connect_timeout`` counts from
    when the connect gets its slot.

    Raises:
        RoomConnectError: the server refused, could not be reached, or did not
            answer within ``connect_timeout`` seconds. Nothing is left joined;
            a connect still running is described by the error's ``abandoned``.
    """
    room = await aio_as_trio(_new_room)()
    for event, callback in subscribe.items():
        room.on(event, callback)
    # Packets that arrive before receive_only_own_events takes over come this way.
    room.on("data_received", lambda packet: on_data(
        packet.participant.identity if packet.participant is not None else "", packet.data,
        time.monotonic()))
    async with connect_slot(connect_slots):
        started = time.monotonic()
        await _connect(room, url, token, rtc.RoomOptions(auto_subscribe=auto_subscribe), connect_timeout,
                       teardown_timeout)
        ROOM_CONNECT.observe(time.monotonic() - started)
    try:
        receive_only_own_events(room, on_data)
        yield room
    finally:
        await _leave(room, teardown_timeout)


@contextlib.asynccontextmanager
async def connect_slot(slots: trio.CapacityLimiter | None) -> AsyncIterator[None]:
    """Hold one of ``slots`` (if any) for a connect; the wait is measured."""
    if slots is None:
        yield
        return
    waiting_since = time.monotonic()
    async with slots:
        ROOM_CONNECT_WAIT.observe(time.monotonic() - waiting_since)
        yield


async def _connect(room: rtc.Room, url: str, token: str, options: rtc.RoomOptions, timeout: float,
                   settle_timeout: float) -> None:
    """Connect, giving up after ``timeout`` without ever interrupting the SDK.

    The SDK must not be cancelled mid-connect: once the server accepts, its FFI
    waits for the Room to confirm it is ready for events and, without that
    confirmation, panics and kills the whole process. So the connect runs as an
    asyncio task of its own; when we stop waiting for it, it is abandoned: left
    to finish, and a room it still reaches is left again at once.
    """
    connecting = await aio_as_trio(in_background)(room.connect(url, token, options))
    try:
        with trio.fail_after(timeout):
            await aio_as_trio(asyncio.shield)(connecting)
    except rtc.ConnectError as error:
        # The SDK's reason quotes the token it was given ("invalid token: eyJ..."), and the reason is logged
        # and answered to the cloud.
        reason = str(error).replace(token, "[the token]") if token else str(error)
        raise RoomConnectError(f"LiveKit at {url} refused the connection: {reason}") from None
    except trio.TooSlowError:
        with trio.CancelScope(shield=True):
            abandoned = AbandonedConnect(await aio_as_trio(_abandon)(room, connecting))
        raise RoomConnectError(f"no answer from LiveKit at {url} within {timeout:g} s", abandoned) from None
    except BaseException:
        # Cancelled (the bridge is stopping): give the abandoned connect a
        # moment to settle, so a room it reaches is left before we exit.
        with trio.CancelScope(shield=True):
            abandoned = AbandonedConnect(await aio_as_trio(_abandon)(room, connecting))
            await abandoned.settle(settle_timeout)
        raise


#: asyncio tasks that may outlive whoever started them (connects and leaves
#: we stopped waiting for): held here so they are not garbage-collected midway.
_background: set[asyncio.Future[None]] = set()


async def in_background(coroutine: Any) -> asyncio.Future[None]:
    """Run ``coroutine`` as an asyncio task that nothing waits for and nothing
    interrupts (held until done, so it is not garbage-collected midway)."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def _abandon(room: rtc.Room, connecting: asyncio.Future[None]) -> asyncio.Future[None]:
    async def leave_once_connected() -> None:
        try:
            await connecting
        except BaseException:
            return  # never joined: nothing to leave
        logger.info("a connect given up on reached room {} after all; leaving it", room.name)
        await _unpublish_and_disconnect(room)

    return await in_background(leave_once_connected())


async def _new_room() -> rtc.Room:
    # rtc.Room binds itself to the running asyncio loop when constructed.
    return rtc.Room()


async def _leave(room: rtc.Room, timeout: float) -> None:
    """Unpublish the local tracks and disconnect, waiting at most ``timeout``
    s; a leave that takes longer goes on in the background rather than being
    interrupted, so the room is left in the end either way."""
    with trio.CancelScope(shield=True):
        leaving = await aio_as_trio(in_background)(_unpublish_and_disconnect(room))
        await aio_as_trio(asyncio.wait)([leaving], timeout=timeout)
    if not leaving.done():
        logger.warning("leaving LiveKit room {} takes longer than {:g} s; it goes on in the background",
                       room.name, timeout)


async def _unpublish_and_disconnect(room: rtc.Room) -> None:
    """Unpublish what is still published, then disconnect, whatever the
    unpublishing met (a track its session unpublished meanwhile is "not
    found"): a room not disconnected would stay joined for good."""
    if room.isconnected():
        for publication in list(room.local_participant.track_publications.values()):
            try:
                await room.local_participant.unpublish_track(publication.sid)
            except Exception as error:
                logger.debug("track {} of room {} not unpublished on leaving: {}", publication.sid, room.name, error)
    try:
        await room.disconnect()
    except Exception as error:
        logger.warning("leaving LiveKit room {} failed: {}", room.name, error)
