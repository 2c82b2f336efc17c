"""Each Room receives only its own FFI events; its data packets go straight to Trio.

This works around python-sdks issue 812 by reaching into the livekit SDK's FFI
queue, so the livekit version is pinned (pyproject.toml) and
tests/test_room_event_filter.py checks that the workaround still holds.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import trio
from livekit import rtc
from livekit.rtc._ffi_client import FfiClient, FfiHandle

DataCallback = Callable[[str, bytes], None]


def receive_only_own_events(room: rtc.Room, on_data: DataCallback) -> None:
    """Make the SDK deliver to ``room`` only the FFI events meant for it, and
    hand the room's data packets straight to ``on_data(sender_identity, payload)``.

    livekit 1.2.x puts every FFI event of the process into every Room's queue
    (python-sdks issue 812) and each Room wakes for each of them, so with N
    rooms every data packet costs N deliveries. This narrows the room's
    subscription to its own room events, its own RPC invocations and the
    publish/unpublish answers its local participant waits for.

    Data packets are taken at the source, in the SDK's callback thread, and
    passed to Trio: one copy and one wake-up per packet instead of the SDK's
    queue, listener task and event emitter.
    """
    room_handle = room._ffi_handle.handle
    participant_handle = room.local_participant._ffi_handle.handle
    trio_token = trio.lowlevel.current_trio_token()

    def is_own(event: Any) -> bool:  # runs in the SDK's callback thread
        which = event.WhichOneof("message")
        if which == "room_event":
            room_event = event.room_event
            if room_event.room_handle != room_handle:
                return False
            if room_event.WhichOneof("message") == "data_packet_received":
                return not _take_user_data(room_event.data_packet_received, trio_token, on_data)
            return True
        if which == "rpc_method_invocation":
            return event.rpc_method_invocation.local_participant_handle == participant_handle
        return which in ("publish_track", "unpublish_track")

    queue = FfiClient.instance.queue
    with queue._lock:
        queue._subscribers = [
            (q, loop, is_own if q is room._ffi_queue else keep)
            for q, loop, keep in queue._subscribers
        ]


def _take_user_data(packet: Any, trio_token: trio.lowlevel.TrioToken, on_data: DataCallback) -> bool:
    """Copy a user data packet out of the FFI and schedule ``on_data`` for it;
    False for other kinds of packet (SIP DTMF), which the SDK handles."""
    if packet.WhichOneof("value") != "user":
        return False
    owned = packet.user.data
    payload = ctypes.string_at(owned.data.data_ptr, owned.data.data_len)
    FfiHandle(owned.handle.id).dispose()
    trio_token.run_sync_soon(on_data, packet.participant_identity, payload)
    return True
