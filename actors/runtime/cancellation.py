"""Telling a stop from a failure in what a task raised."""

from __future__ import annotations

import trio


def only_cancelled(raised: BaseException) -> bool:
    """True when ``raised`` is a cancellation, or a group of nothing else:
    the task was stopped, nothing failed."""
    if isinstance(raised, BaseExceptionGroup):
        return raised.split(trio.Cancelled)[1] is None
    return isinstance(raised, trio.Cancelled)
