"""Where trio-asyncio's loop differs from asyncio's in ways the bridge meets.

- asyncio (and uvloop) take a negative ``call_later`` delay as "now";
  trio-asyncio asserts it is non-negative (trio-asyncio issue 159). The SDK's
  AudioSource schedules its play-out timer with ``call_later(queued seconds)``,
  and after a gap in the audio that figure goes negative: the capture then
  failed with an AssertionError.
- asyncio drops cancelled timers from its heap once they are more than half
  of it; trio-asyncio keeps every cancelled timer (with its context) until it
  would have fired. Every gRPC call with a deadline and every ``asyncio.wait``
  with a timeout leaves one behind, so a busy bridge held thousands, each
  call's for as long as its deadline.

:func:`match_asyncio` gives trio-asyncio's loop asyncio's behaviour in both;
the bridge applies it before it opens its loop.
"""

from __future__ import annotations

import heapq
from typing import Any

from trio_asyncio._base import BaseTrioEventLoop

_original_call_later = BaseTrioEventLoop.call_later

#: As asyncio's base_events: prune when more than half of at least this many timers are cancelled.
_MIN_TIMERS_TO_PRUNE = 100


def _call_later(self: BaseTrioEventLoop, delay: float, callback: Any, *args: Any, **context: Any) -> Any:
    return _original_call_later(self, max(0.0, delay), callback, *args, **context)


def _timer_handle_cancelled(self: BaseTrioEventLoop, handle: Any) -> None:
    # Called by TimerHandle.cancel(), in the loop's thread, never while the
    # loop itself is inside an operation on its heap.
    self._cancelled_timers = getattr(self, "_cancelled_timers", 0) + 1
    if len(self._timers) > _MIN_TIMERS_TO_PRUNE and self._cancelled_timers > len(self._timers) // 2:
        drop_cancelled_timers(self)


def drop_cancelled_timers(loop: BaseTrioEventLoop) -> None:
    """Take the cancelled timers out of ``loop``'s heap now (from its thread)."""
    kept = [timer for timer in loop._timers if not timer.cancelled()]
    heapq.heapify(kept)
    loop._timers = kept
    loop._cancelled_timers = 0


def match_asyncio() -> None:
    """Make trio-asyncio's loops take negative delays and drop cancelled
    timers as asyncio does (idempotent)."""
    BaseTrioEventLoop.call_later = _call_later
    BaseTrioEventLoop._timer_handle_cancelled = _timer_handle_cancelled
