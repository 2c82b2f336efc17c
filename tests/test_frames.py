"""actors/sdk_workers/frames.py: the Outbox writes a message at once while
nothing waits, and never writes anything out of order or after a frame it
left half written."""

from __future__ import annotations

import socket

import pytest
import trio

from actors.sdk_workers.frames import FrameChannel, Outbox


@pytest.fixture
def sockets() -> tuple[socket.socket, socket.socket]:
    """A connected pair with small buffers, so that a large frame fills them."""
    ours, theirs = socket.socketpair()
    for end in (ours, theirs):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return ours, theirs


@pytest.fixture
def connected(sockets) -> tuple[FrameChannel, FrameChannel]:
    return FrameChannel(sockets[0]), FrameChannel(sockets[1])


async def test_a_message_put_while_nothing_waits_is_written_before_put_returns(connected) -> None:
    ours, theirs = connected
    outbox = Outbox(ours)  # its run() never starts: only put() can write
    outbox.put(("data", 1, "phone", b"\x01pcm"))
    with trio.fail_after(5):
        assert await theirs.receive() == [("data", 1, "phone", b"\x01pcm")]
    assert outbox.frames == 1


async def test_what_is_put_behind_a_frame_the_socket_took_in_part_follows_it_in_order(connected) -> None:
    ours, theirs = connected
    outbox = Outbox(ours)
    large = b"x" * 1_000_000  # far more than the socket's buffers hold
    outbox.put(("capture", 1, large))
    for index in range(50):
        outbox.put(("data", index))
        outbox.put_droppable(("data", index, "droppable"))
    received: list = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run)
            while len(received) < 101:
                received += await theirs.receive()
            nursery.cancel_scope.cancel()
    assert received[0] == ("capture", 1, large)
    assert received[1:] == [message for index in range(50)
                            for message in (("data", index), ("data", index, "droppable"))]


async def test_after_a_write_cut_short_nothing_more_is_written(sockets) -> None:
    ours, theirs = sockets
    outbox = Outbox(FrameChannel(ours))
    large = b"x" * 1_000_000  # far more than the socket's buffers hold
    outbox.put(("capture", 1, large))  # written in part at once; run() writes the rest
    outbox.put(("capture", 2, large))  # waits for run(), which writes it in a frame of its own
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run)
            assert await FrameChannel(theirs).receive() == [("capture", 1, large)]
            await trio.sleep(0.2)  # run() writes the second frame until the buffers are full
            nursery.cancel_scope.cancel()
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):  # the buffers emptied: the socket has room again
        while theirs.recv(65536):
            pass
    outbox.put(("data", 2))
    with pytest.raises(BlockingIOError):  # nothing follows the half-written frame
        theirs.recv(65536)


async def test_a_full_outbox_drops_the_oldest_packets_and_keeps_every_event_in_order(connected) -> None:
    ours, theirs = connected
    outbox = Outbox(ours, droppable_limit=5)
    large = b"x" * 1_000_000  # far more than the socket's buffers hold: the rest waits behind it
    outbox.put(("capture", 1, large))
    dropped = [outbox.put_droppable(("data", 7, "phone", bytes([sequence]))) for sequence in range(20)]
    outbox.put(("event", 7, "reconnecting"))
    dropped += [outbox.put_droppable(("data", 7, "phone", bytes([sequence]))) for sequence in range(20, 23)]
    assert dropped == [False] * 5 + [True] * 18 and outbox.dropped == 18
    received: list = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run)
            while not received or received[-1][0] != "dropped":
                received += await theirs.receive()
            nursery.cancel_scope.cancel()
    # The freshest five packets, the event where it was put among them, and the count of the drops last.
    assert received == [("capture", 1, large),
                        ("data", 7, "phone", bytes([18])), ("data", 7, "phone", bytes([19])),
                        ("event", 7, "reconnecting"),
                        ("data", 7, "phone", bytes([20])), ("data", 7, "phone", bytes([21])),
                        ("data", 7, "phone", bytes([22])), ("dropped", 18)]
