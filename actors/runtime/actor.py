"""The actor: a Trio task with a bounded mailbox, run by a supervisor."""

from __future__ import annotations

from typing import Any

import trio

from .mailbox import Mailbox, Request


class Actor:
    """Base class for actors.

    An actor is started by a :class:`~actors.runtime.supervisor.Supervisor`,
    which runs :meth:`run` in a cancel scope of its own. The default ``run``
    reports itself started and then handles messages one at a time with
    :meth:`handle`, until it is cancelled. Actors that must set something up
    first, or that need tasks of their own, override ``run`` and call
    ``task_status.started(value)`` once they are ready, then :meth:`serve`.

    Whatever ``handle`` raises crashes the actor; a request whose handling
    raised is failed with that error first, so its asker learns at once.
    """

    #: How many messages may wait before ``tell`` refuses with MailboxFull.
    mailbox_capacity = 64

    def __init__(self, name: str) -> None:
        self.name = name
        self.mailbox = Mailbox(self.mailbox_capacity)
        #: 0 for a child's first start, n for its n-th restart (set by its
        #: supervisor). A restart that finds nothing left to serve (what it
        #: served has ended meanwhile) returns rather than crash again.
        self.incarnation = 0

    async def run(self, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self.serve()

    async def serve(self) -> None:
        """Handle messages in arrival order until the mailbox is closed."""
        while True:
            try:
                message = await self.mailbox.receive()
            except trio.EndOfChannel:
                return
            try:
                await self.handle(message)
            except Exception as error:
                if isinstance(message, Request):
                    message.reply.fail(error)
                raise

    async def handle(self, message: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not handle {type(message).__name__}")

    def teardown_bound(self) -> float | None:
        """How long this actor's teardown may take, for an actor that knows
        (one that stops children of its own: their groups' bounds in
        sequence); None leaves it to its supervisor's shutdown order."""
        return None

    def log_fields(self) -> dict[str, Any]:
        """Fields that every log line of this actor carries (its supervisor
        binds them around its run, restarts included); override to add."""
        return {}

    def counters(self) -> dict[str, int]:
        """Numbers an operator wants to see in the actor tree; override to add."""
        return {}

    def details(self) -> dict[str, Any]:
        """Facts of this actor's kind that are not counts (ids, names, states); override to add."""
        return {}

    def children(self) -> list[dict[str, Any]]:
        """Descriptions of this actor's own children, for actors that supervise."""
        return []
