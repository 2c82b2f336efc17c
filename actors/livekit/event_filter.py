"""Each Room receives only its own FFI events, routed to it in O(1); its data
packets go straight to Trio.

This works around python-sdks issue 812 by reaching into the livekit SDK's FFI
queue, so the livekit version is pinned (pyproject.toml) and
tests/test_room_event_filter.py checks that the workaround still holds.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import trio
from livekit import rtc
from livekit.rtc._ffi_client import FfiClient, FfiHandle, FfiQueue

#: on_data(sender_identity, payload, received_at[, forwarded_at]): received_at is
#: time.monotonic() in the SDK's callback thread, when the packet reached the process;
#: forwarded_at, given only for a room an SDK worker process holds, is when the
#: worker's Trio thread sent it on to the bridge (one CLOCK_MONOTONIC on one machine).
DataCallback = Callable[..., None]


def receive_only_own_events(room: rtc.Room, on_data: DataCallback,
                            call_soon: Callable[..., Any] | None = None) -> None:
    """Deliver to the connected ``room`` only the FFI events meant for it, and
    hand its data packets straight to ``on_data(sender_identity, payload, received_at)``
    (scheduled with ``call_soon(on_data, ...)`` from the SDK's thread: by
    default in the calling Trio run; a bare asyncio process passes its loop's
    call_soon_threadsafe),
    for as long as the room's event listener runs (it ends at the room's last
    event, however the room was left: the SDK drops its own subscription then too).

    livekit 1.2.x puts every FFI event of the process into every Room's queue
    (python-sdks issue 812) and each Room wakes for each of them, so with N
    rooms every data packet costs N deliveries. Instead the room leaves the
    SDK's subscriber list and a process-wide router, which sees each event
    first, hands it to the one room it belongs to by a dictionary lookup: its
    room events, its RPC invocations, and (to every routed room, since they
    name no room) the publish/unpublish answers its local participant waits
    for. A packet's cost no longer grows with the number of rooms, and rooms
    still connecting are no longer handed the events of connected ones.

    Data packets are taken at the source, in the SDK's callback thread, and
    passed to Trio: one copy and one wake-up per packet instead of the SDK's
    queue, listener task and event emitter.
    """
    _router().add(room, on_data, call_soon or trio.lowlevel.current_trio_token().run_sync_soon)


@dataclasses.dataclass(frozen=True)
class _Route:
    room_handle: int
    participant_handle: int
    queue: Any  # the room's own livekit.rtc._utils.Queue
    loop: asyncio.AbstractEventLoop
    #: Thread-safe: schedules on_data where it runs.
    call_soon: Callable[..., Any]
    on_data: DataCallback

    def deliver(self, event: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


class _Router:
    """Sits in front of the SDK's FfiQueue.put: events of routed rooms go to
    those rooms alone; everything else goes on to the SDK's subscribers."""

    def __init__(self, queue: FfiQueue) -> None:
        self._queue = queue
        self._by_room: dict[int, _Route] = {}
        self._by_participant: dict[int, _Route] = {}
        subscribers_put = queue.put

        def put(event: Any) -> None:  # runs in the SDK's callback thread
            # The queue's lock makes routing and the subscriber list change together.
            with queue._lock:
                if not self._route(event):
                    subscribers_put(event)

        queue.put = put

    def add(self, room: rtc.Room, on_data: DataCallback, call_soon: Callable[..., Any]) -> None:
        route = _Route(room._ffi_handle.handle, room.local_participant._ffi_handle.handle, room._ffi_queue,
                       room._loop, call_soon, on_data)
        with self._queue._lock:
            self._by_room[route.room_handle] = route
            self._by_participant[route.participant_handle] = route
            self._queue._subscribers = [entry for entry in self._queue._subscribers if entry[0] is not route.queue]
        # The listener ends after the room's last event (its end-of-stream):
        # only then may the route go, or that event would find no one.
        room._task.add_done_callback(lambda _: self._remove(route))

    def _remove(self, route: _Route) -> None:
        with self._queue._lock:
            if self._by_room.get(route.room_handle) is route:
                del self._by_room[route.room_handle]
            if self._by_participant.get(route.participant_handle) is route:
                del self._by_participant[route.participant_handle]

    def _route(self, event: Any) -> bool:
        """Deliver ``event`` to its room; False if it belongs to no routed room
        alone (the SDK's subscribers get it then)."""
        which = event.WhichOneof("message")
        if which == "room_event":
            room_event = event.room_event
            route = self._by_room.get(room_event.room_handle)
            if route is None:
                return False
            if room_event.WhichOneof("message") == "data_packet_received" and _take_user_data(
                    room_event.data_packet_received, route.call_soon, route.on_data):
                return True
            route.deliver(event)
            return True
        if which == "rpc_method_invocation":
            route = self._by_participant.get(event.rpc_method_invocation.local_participant_handle)
            if route is None:
                return False
            route.deliver(event)
            return True
        if which in ("publish_track", "unpublish_track"):
            for route in self._by_room.values():
                route.deliver(event)
        return False


_the_router: _Router | None = None


def _router() -> _Router:
    global _the_router
    if _the_router is None:
        _the_router = _Router(FfiClient.instance.queue)
    return _the_router


def _take_user_data(packet: Any, call_soon: Callable[..., Any], on_data: DataCallback) -> bool:
    """Copy a user data packet out of the FFI and schedule ``on_data`` for it;
    False for other kinds of packet (SIP DTMF), which the SDK handles."""
    if packet.WhichOneof("value") != "user":
        return False
    received_at = time.monotonic()
    owned = packet.user.data
    payload = ctypes.string_at(owned.data.data_ptr, owned.data.data_len)
    FfiHandle(owned.handle.id).dispose()
    call_soon(on_data, packet.participant_identity, payload, received_at)
    return True
