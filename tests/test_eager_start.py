"""actors/eager_start.py: an asyncio coroutine run in the calling Trio task
until it first waits, then carried on by an asyncio task."""

from __future__ import annotations

import asyncio

import pytest
import trio
import trio_asyncio

from actors.eager_start import start_eagerly


async def test_a_coroutine_that_never_waits_is_done_before_the_call_returns() -> None:
    ran_in: list[object] = []

    async def quick() -> int:
        ran_in.append(trio.lowlevel.current_task())
        return 42

    async with trio_asyncio.open_loop():
        outcome = start_eagerly(quick())
        assert outcome.done() and outcome.result() == 42
        assert ran_in == [trio.lowlevel.current_task()]


async def test_an_error_before_the_first_wait_is_the_outcome() -> None:
    async def fails() -> None:
        raise ValueError("refused")

    async with trio_asyncio.open_loop():
        outcome = start_eagerly(fails())
        assert outcome.done() and isinstance(outcome.exception(), ValueError)


async def test_a_coroutine_that_waits_is_carried_on_by_asyncio_to_its_end() -> None:
    steps: list[str] = []

    async def waits(event: asyncio.Event) -> str:
        steps.append("before")
        await event.wait()
        await asyncio.sleep(0)  # a bare yield, as asyncio.sleep(0) makes
        failing = asyncio.get_running_loop().create_future()
        failing.set_exception(KeyError("k"))
        try:
            await failing
        except KeyError:
            steps.append("saw the future's error")
        return "after"

    async with trio_asyncio.open_loop():
        event = asyncio.Event()
        outcome = start_eagerly(waits(event))
        assert steps == ["before"] and not outcome.done()
        event.set()
        with trio.fail_after(5):
            assert await trio_asyncio.run_aio_future(outcome) == "after"
        assert steps == ["before", "saw the future's error"]


async def test_cancelling_the_outcome_cancels_the_coroutine_where_it_waits() -> None:
    cleaned_up = trio.Event()

    async def waits_forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.set()

    async with trio_asyncio.open_loop():
        outcome = start_eagerly(waits_forever())
        with trio.move_on_after(0.05) as waited:
            await trio_asyncio.run_aio_future(outcome)
        assert waited.cancelled_caught
        with trio.fail_after(5):
            await cleaned_up.wait()
        assert outcome.cancelled()
        with pytest.raises(asyncio.CancelledError):
            outcome.result()


async def test_cancelling_a_coroutine_that_only_lets_others_run_cancels_it() -> None:
    async def spins() -> str:
        for _ in range(100_000):  # a few seconds of letting others run
            await asyncio.sleep(0)
        return "never cancelled"

    async with trio_asyncio.open_loop():
        outcome = start_eagerly(spins())
        with trio.move_on_after(0.05):
            await trio_asyncio.run_aio_future(outcome)
        with trio.fail_after(5):
            while not outcome.done():
                await trio.sleep(0.01)
        assert outcome.cancelled()
