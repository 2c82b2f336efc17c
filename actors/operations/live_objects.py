"""Counting the bridge's live objects, to find what outlived its session."""

from __future__ import annotations

import collections
import gc
from typing import Any

import grpclib.server
from livekit import rtc
from trio_asyncio._base import BaseTrioEventLoop

from ..asyncio_compat import drop_cancelled_timers
from ..livekit.output_tracks import OutputTrack
from ..runtime import Child
from ..session.playback import Playback
from ..session.room_link import RoomLink
from ..session.stream_lease import StreamLease
from ..session.user_line import UserLine
from ..session.user_session import UserSession

TRACKED = (UserSession, RoomLink, UserLine, StreamLease, Playback, OutputTrack, Child, rtc.Room, rtc.AudioSource)


def live_objects() -> dict[str, Any]:
    """After a full collection: how many objects of each kind a session owns
    are alive (with no sessions, every count should be 0: a leak otherwise),
    how many objects the collector tracks in all (``python_objects``), and
    that total by type (``by_type``), so a count that grows with the sessions
    served names its type.

    Three libraries let go of finished things in batches: Trio keeps the
    deadline entries of exited cancel scopes until its heap holds 1,000 stale
    ones, grpclib keeps each finished call's task (with its stream) until
    every tenth call on the connection, and the asyncio loop keeps cancelled
    timers until they are half of its heap (actors.asyncio_compat). Those
    batches are run first, so the counts show what is alive, not what awaits
    a batch. Call it from the Trio thread.
    """
    _prune_stale_deadlines()
    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, grpclib.server.Handler):
            obj.__gc_collect__()
        elif isinstance(obj, BaseTrioEventLoop):
            drop_cancelled_timers(obj)
    gc.collect()
    objects = gc.get_objects()
    by_type = collections.Counter(_qualified(type(obj)) for obj in objects)
    tracked = {kind.__name__: by_type.get(_qualified(kind), 0) for kind in TRACKED}
    return {**tracked, "python_objects": len(objects), "by_type": dict(by_type)}


def add_worker_counts(counts: dict[str, Any], worker: dict[str, Any], name: str) -> None:
    """Add an SDK worker process's live_objects() to ``counts`` (this
    process's): the totals summed, its types under ``name``/."""
    for key, value in worker.items():
        if key == "by_type":
            counts["by_type"].update({f"{name}/{kind}": number for kind, number in value.items()})
        else:
            counts[key] = counts.get(key, 0) + value


def _prune_stale_deadlines() -> None:
    # Trio's own batch pruning (trio._core._run.Deadlines._prune), run now;
    # it changes no deadline. trio is pinned (pyproject.toml).
    from trio._core._run import GLOBAL_RUN_CONTEXT

    GLOBAL_RUN_CONTEXT.runner.deadlines._prune()


def _qualified(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"
