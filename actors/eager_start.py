"""Asyncio coroutines started at once, in the calling task.

Crossing from Trio into asyncio (trio_asyncio.aio_as_trio) costs a task and
two wake-ups, about 40 us here, even for a coroutine that never waits, such
as a gRPC send whose flow-control window is open. :func:`start_eagerly` runs
the coroutine in the caller until it first waits, as Python 3.12's eager
tasks do; only a coroutine that does wait becomes an asyncio task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def start_eagerly(coroutine: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run ``coroutine`` (an asyncio one) here until it first waits.

    Call it from a task of the process's loop (asyncio's, or Trio's under
    trio_asyncio). Returns a future of the coroutine's outcome: done already
    when it never waited; else an asyncio task that carries it on from its
    first wait, which cancelling cancels.
    """
    loop = asyncio.get_running_loop()
    try:
        waiting_on = coroutine.send(None)
    except StopIteration as stop:
        outcome = loop.create_future()
        outcome.set_result(stop.value)
        return outcome
    except Exception as error:
        outcome = loop.create_future()
        outcome.set_exception(error)
        return outcome
    return loop.create_task(_carry_on(coroutine, waiting_on))


async def _carry_on(coroutine: Coroutine[Any, Any, T], waiting_on: Any) -> T:
    """Drive ``coroutine`` on from where it yielded ``waiting_on``, as an
    asyncio task would: a future to wait for, or None for "let the others
    run first"."""
    while True:
        resume = coroutine.send
        argument: Any = None
        if waiting_on is not None:
            # Taken, as a task takes what its coroutine yields; a future
            # still marked "yielded" refuses to be awaited again.
            waiting_on._asyncio_future_blocking = False
        try:
            await (asyncio.sleep(0) if waiting_on is None else waiting_on)
        except asyncio.CancelledError as cancelled:
            if waiting_on is None or not waiting_on.cancelled():
                # This task was cancelled: so is the coroutine, where it waits.
                resume, argument = coroutine.throw, cancelled
        except BaseException:
            pass  # the future's own error: the coroutine's await of it raises it
        try:
            waiting_on = resume(argument)
        except StopIteration as stop:
            return stop.value
