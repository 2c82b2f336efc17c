"""Unit tests of the microphone packet format, loss counting and the drop-oldest buffer."""

from __future__ import annotations

import pytest
import trio

from actors.session.mic_audio import SequenceTracker, pcm_from_packet
from actors.runtime import DropOldestBuffer


@pytest.mark.parametrize("packet, expected", [
    (b"", (None, b"")),
    (bytes([7]), (7, b"")),
    (bytes([7]) + b"abcd", (7, b"abcd")),
    (b"abcd", (None, b"abcd")),
])
def test_an_odd_packet_starts_with_its_sequence_byte(packet: bytes, expected) -> None:
    assert pcm_from_packet(packet) == expected


def test_gaps_count_as_lost_and_late_packets_do_not() -> None:
    tracker = SequenceTracker()
    found = [tracker.observe(sequence) for sequence in [250, 251, 254, 255, 0, 3]]  # 252, 253, 1, 2 lost
    assert found == [0, 0, 2, 0, 0, 2] and tracker.lost == 4
    assert tracker.observe(2) == 0  # late: behind the last one
    assert (tracker.lost, tracker.out_of_order) == (4, 1)


async def test_a_full_buffer_drops_the_oldest_and_counts_it() -> None:
    buffer = DropOldestBuffer[int](3)
    assert [buffer.push(item) for item in range(5)] == [False, False, False, True, True]
    assert (len(buffer), buffer.dropped) == (3, 2)
    assert [await buffer.get() for _ in range(3)] == [2, 3, 4]


async def test_a_waiting_consumer_is_woken_and_a_closed_buffer_drains_then_ends() -> None:
    buffer = DropOldestBuffer[str](2)
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        async def consume() -> None:
            while True:
                try:
                    got.append(await buffer.get())
                except trio.EndOfChannel:
                    return

        nursery.start_soon(consume)
        await trio.sleep(0.01)
        buffer.push("a")
        buffer.push("b")
        buffer.close()
        buffer.push("ignored after close")
    assert got == ["a", "b"]


async def test_a_batch_takes_what_waits_in_order_up_to_its_size_and_waits_for_one() -> None:
    buffer = DropOldestBuffer[int](10)
    for item in range(5):
        buffer.push(item)
    assert await buffer.get_batch(3) == [0, 1, 2]
    assert await buffer.get_batch(3) == [3, 4]
    async with trio.open_nursery() as nursery:
        got: list[list[int]] = []

        async def take() -> None:
            got.append(await buffer.get_batch(3))

        nursery.start_soon(take)
        await trio.sleep(0.01)
        assert got == []  # nothing waits: it waits too
        buffer.push(5)
    assert got == [[5]]
    buffer.close()
    with pytest.raises(trio.EndOfChannel):
        await buffer.get_batch(3)
