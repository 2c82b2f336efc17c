"""Where trio-asyncio's loop differs from asyncio's in ways the livekit SDK meets.

asyncio (and uvloop) take a negative ``call_later`` delay as "now";
trio-asyncio asserts it is non-negative (trio-asyncio issue 159). The SDK's
AudioSource schedules its play-out timer with ``call_later(queued seconds)``,
and after a gap in the audio that figure goes negative: the capture then
failed with an AssertionError. :func:`match_asyncio` gives trio-asyncio's
loop asyncio's behaviour; the bridge applies it before it opens its loop.
"""

from __future__ import annotations

from typing import Any

from trio_asyncio._base import BaseTrioEventLoop

_original_call_later = BaseTrioEventLoop.call_later


def _call_later(self: BaseTrioEventLoop, delay: float, callback: Any, *args: Any, **context: Any) -> Any:
    return _original_call_later(self, max(0.0, delay), callback, *args, **context)


def match_asyncio() -> None:
    """Make trio-asyncio's loops take negative delays as asyncio does (idempotent)."""
    BaseTrioEventLoop.call_later = _call_later
