"""Counting the bridge's live objects, to find what outlived its session."""

from __future__ import annotations

import collections
import gc

from livekit import rtc

from .livekit.output_tracks import OutputTrack
from .playback import Playback
from .runtime import Child
from .stream_lease import StreamLease
from .user_line import UserLine
from .user_session import UserSession

TRACKED = (UserSession, UserLine, StreamLease, Playback, OutputTrack, Child, rtc.Room, rtc.AudioSource)


def live_objects() -> dict[str, int]:
    """After a full collection: how many objects of each kind a session owns
    are alive (with no sessions, every count should be 0: a leak otherwise),
    and how many objects the collector tracks in all."""
    gc.collect()
    objects = gc.get_objects()
    counts = collections.Counter(type(obj).__name__ for obj in objects if isinstance(obj, TRACKED))
    return {**{kind.__name__: counts.get(kind.__name__, 0) for kind in TRACKED}, "python_objects": len(objects)}
