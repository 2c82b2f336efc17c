"""Bounded mailboxes, one-shot replies and the request/reply protocol.

An actor owns exactly one :class:`Mailbox`. Others put messages into it with
:meth:`Mailbox.tell` (fire and forget) or :meth:`Mailbox.ask` (send a
:class:`Request` and wait for its reply). Nothing here ever blocks a sender on a
full mailbox: an overloaded actor is reported at once as :class:`MailboxFull`,
so the caller can shed load instead of piling up behind it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")


class MailboxFull(Exception):
    """The actor's mailbox is at capacity: it is overloaded or stuck.

    Retry later, or shed the work; the message was not delivered.
    """


class ActorGone(Exception):
    """The actor has stopped: its mailbox takes nothing more, and a request it
    had not answered will never be answered."""


class Reply(Generic[T]):
    """A one-shot reply slot: answered at most once, awaited by the asker.

    ``send`` and ``fail`` never block; only the first answer counts, later ones
    are ignored, so an actor that hands a reply to a helper task cannot answer
    twice by mistake.
    """

    __slots__ = ("_answered", "_value", "_error", "abandoned")

    def __init__(self) -> None:
        self._answered = trio.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        #: The asker stopped waiting (timed out or was cancelled); an actor may
        #: skip work nobody waits for.
        self.abandoned = False

    @property
    def answered(self) -> bool:
        return self._answered.is_set()

    def send(self, value: T) -> None:
        if not self.answered:
            self._value = value
            self._answered.set()

    def fail(self, error: BaseException) -> None:
        if not self.answered:
            self._error = error
            self._answered.set()

    async def wait(self) -> T:
        """Return the answer, or raise the error the actor failed it with."""
        await self._answered.wait()
        if self._error is not None:
            raise self._error
        return self._value


@dataclasses.dataclass
class Request(Generic[T]):
    """Base for messages that expect an answer.

    Subclasses are dataclasses; the reply slot is created with the message and
    travels with it, so an actor may answer it itself, forward the whole message
    to another actor, or hand it to a task of its own.
    """

    reply: Reply[T] = dataclasses.field(
        default_factory=Reply, init=False, repr=False, compare=False
    )


class Mailbox:
    """A bounded FIFO of messages for one actor.

    Guarantees: at most ``capacity`` messages wait; ``tell`` never blocks;
    after :meth:`close`, every request still waiting is failed with
    :class:`ActorGone` and new messages are refused with it.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a mailbox needs room for at least one message, not {capacity}")
        self.capacity = capacity
        self._send, self._receive = trio.open_memory_channel[Any](capacity)
        self.delivered = 0
        self.refused_full = 0

    @property
    def depth(self) -> int:
        """How many messages wait to be handled."""
        return self._receive.statistics().current_buffer_used

    def tell(self, message: Any) -> None:
        """Deliver ``message`` without waiting.

        Raises:
            MailboxFull: ``capacity`` messages already wait.
            ActorGone: the actor has stopped.
        """
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            self.refused_full += 1
            raise MailboxFull(
                f"mailbox full ({self.capacity} messages waiting); the actor is overloaded"
            ) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorGone("the actor has stopped") from None
        self.delivered += 1

    async def ask(self, request: Request[T], *, timeout: float) -> T:
        """Deliver ``request`` and return its answer.

        Raises:
            MailboxFull, ActorGone: as for :meth:`tell`, or ActorGone when the
                actor stops before answering.
            TimeoutError: no answer within ``timeout`` seconds.
            Exception: whatever the actor failed the request with.
        """
        self.tell(request)
        try:
            with trio.move_on_after(timeout):
                return await request.reply.wait()
        finally:
            request.reply.abandoned = not request.reply.answered
        raise TimeoutError(f"no answer to {type(request).__name__} within {timeout:g} s")

    async def receive(self) -> Any:
        """The next message; raises trio.EndOfChannel once closed and drained."""
        return await self._receive.receive()

    def close(self) -> None:
        """Refuse new messages and fail every request still waiting."""
        self._send.close()
        while True:
            try:
                message = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if isinstance(message, Request):
                message.reply.fail(ActorGone("the actor stopped before it handled this request"))
        self._receive.close()


