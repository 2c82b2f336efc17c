"""Supervision: children that run in a nursery, and what became of them.

A :class:`Supervisor` lives inside its owner's nursery. It starts each child
in a cancel scope of its own, learns of every exit (clean, cancelled or
crashed), restarts a crashed child when its policy allows, and describes its
subtree for operators. Stopping a child is *cancel, then wait for the whole
teardown*: when :meth:`Supervisor.stop` returns, the child's ``finally``
blocks have finished.

Stopping them all follows a :class:`ShutdownOrder` the owner declares: each
child is started into a named group, and the groups are stopped one after
the other, as OTP supervisors stop their children in a declared order.
:func:`open_supervisor` gives an owner children that outlive its own
cancellation until they have been stopped in that order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio
from loguru import logger

from .actor import Actor


class ChildState:
    STARTING = "starting"
    RUNNING = "running"
    #: Crashed, waiting out its backoff before the next start.
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"


class Restart(enum.Enum):
    """When a child is started again (Erlang/OTP's restart types)."""

    #: Whenever it ends by itself, returned or crashed.
    PERMANENT = "permanent"
    #: Only after a crash.
    TRANSIENT = "transient"
    #: Never.
    TEMPORARY = "temporary"


@dataclasses.dataclass(frozen=True)
class Backoff:
    """The wait before a restart: ``initial`` doubling (``multiplier``) with
    each restart inside the policy's window, at most ``maximum``, spread by
    ±``jitter`` so that children that crashed together do not restart together."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, restarts_in_window: int) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** max(0, restarts_in_window - 1))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """A child spec's restart part, as data: when to restart (``restart``),
    after how long (``backoff``), and when to give up: more than
    ``max_restarts`` restarts within ``within_seconds``, as Erlang supervisors
    do, since a fault that repeats at once is not cured by restarting. A child
    that ``escalates`` takes its supervisor's owner down when it is given up
    on (the owner's nursery fails with ChildGivenUp), as an Erlang supervisor
    terminates when its restart intensity is exceeded: for a child the owner
    cannot do without. A child that ``restarts_failed_start`` is restarted
    as its policy allows even when it fails before it first reported started
    (start() then waits for a start that succeeds); otherwise start() raises
    that failure, so the caller learns its child cannot start.
    """

    restart: Restart = Restart.TRANSIENT
    max_restarts: int = 3
    within_seconds: float = 60.0
    backoff: Backoff = Backoff()
    escalate: bool = False
    restarts_failed_start: bool = False


NEVER_RESTART = RestartPolicy(restart=Restart.TEMPORARY, max_restarts=0)


@dataclasses.dataclass(frozen=True)
class ShutdownOrder:
    """How a supervisor stops all its children, as data: group by group in
    the order of ``groups``; the children of one group at once, and the next
    group once they have all finished their teardown or ``teardown_timeout``
    has passed. A child is put in its group when it starts, whenever that is,
    so children added later are stopped in their place too.

    ``teardown_timeout`` is also how long stopping one child waits for it,
    unless the child's actor declares a bound of its own
    (:meth:`Actor.teardown_bound`, e.g. a supervisor of its own children).
    """

    groups: tuple[str, ...] = ("children",)
    teardown_timeout: float = math.inf

    def __post_init__(self) -> None:
        if not self.groups or len(set(self.groups)) != len(self.groups):
            raise ValueError(f"a shutdown order needs distinct groups, not {self.groups!r}")


class ChildGivenUp(Exception):
    """A child whose policy escalates was given up on; the message says which and why."""


class Child:
    """A supervisor's handle on one child: where to send messages, and its state.

    The handle stays valid across restarts: ``actor`` is always the current
    incarnation. ``done`` is set once the child has finished for good.
    """

    def __init__(self, factory: Callable[[], Actor], policy: RestartPolicy, group: str) -> None:
        self.factory = factory
        self.policy = policy
        #: Its group in its supervisor's ShutdownOrder.
        self.group = group
        self.actor = factory()
        self.state = ChildState.STARTING
        self.started_at = time.time()
        self.restarts = 0
        self.last_error: str | None = None
        #: Why the supervisor stopped restarting it, once it has.
        self.given_up: str | None = None
        self.start_value: Any = None
        self.done = trio.Event()
        self._cancel_scope = trio.CancelScope()
        self._restart_times: list[float] = []

    @property
    def name(self) -> str:
        return self.actor.name

    def tell(self, message: Any) -> None:
        self.actor.mailbox.tell(message)

    async def ask(self, request: Any, *, timeout: float) -> Any:
        return await self.actor.mailbox.ask(request, timeout=timeout)

    def describe(self) -> dict[str, Any]:
        mailbox = self.actor.mailbox
        return {
            "name": self.name,
            "kind": type(self.actor).__name__,
            "state": self.state,
            "started_at": self.started_at,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "given_up": self.given_up,
            "mailbox": {"depth": mailbox.depth, "capacity": mailbox.capacity, "refused_full": mailbox.refused_full},
            "counters": self.actor.counters(),
            "details": self.actor.details(),
            "children": self.actor.children(),
        }

    def _next_restart_delay(self) -> float | None:
        """Seconds to wait before restarting, or None when the policy gives up."""
        now = trio.current_time()
        window_start = now - self.policy.within_seconds
        self._restart_times = [t for t in self._restart_times if t >= window_start]
        if len(self._restart_times) >= self.policy.max_restarts:
            self.given_up = (f"{len(self._restart_times) + 1} ends within {self.policy.within_seconds:g} s "
                             f"(the policy allows {self.policy.max_restarts} restarts)")
            return None
        self._restart_times.append(now)
        return self.policy.backoff.delay(len(self._restart_times))


ExitCallback = Callable[[Child, BaseException | None], None]


class Supervisor:
    """Starts, stops and watches children in a nursery its owner opened.

    ``on_exit(child, error)`` is called once a started child has finished for
    good, with the error that crashed it or None; it runs synchronously in the
    child's task, so the owner's bookkeeping is current before anyone awaits
    ``child.done``. ``on_restart(child)`` is called as a child is restarted
    (for metrics).

    ``shutdown`` names the groups children start in and the order
    :meth:`stop_all` stops them in. Its ``teardown_timeout`` bounds how long
    stopping waits: a child whose teardown takes longer is logged and counted
    in ``teardown_overruns``, and the stop goes on while it finishes in the
    background (cancelled, it is never restarted). Children bound their own
    teardown; this is the backstop that keeps one stuck child from hanging
    its supervisor.
    """

    def __init__(self, nursery: trio.Nursery, *, shutdown: ShutdownOrder = ShutdownOrder(),
                 on_exit: ExitCallback | None = None, on_restart: Callable[[Child], None] | None = None,
                 on_given_up: Callable[[ChildGivenUp], None] | None = None) -> None:
        self._nursery = nursery
        self.shutdown = shutdown
        self._on_exit = on_exit
        self._on_restart = on_restart
        #: Where an escalating child's ChildGivenUp goes once it had started
        #: (open_supervisor's orderly stop); without it, into the nursery.
        self._on_given_up = on_given_up
        self._children: set[Child] = set()
        self.teardown_overruns = 0

    def __len__(self) -> int:
        return len(self._children)

    async def start(self, factory: Callable[[], Actor], *, policy: RestartPolicy = NEVER_RESTART,
                    group: str | None = None) -> Child:
        """Start a child in ``group`` (one of the shutdown order's groups;
        may be left out when there is only one) and return once it reported
        itself started (after restarts, when its policy ``restarts_failed_start``).

        The child's ``run`` is called with a task status; the value it passes
        to ``started()`` is kept as ``child.start_value``.

        Raises:
            ValueError: ``group`` is not one of the shutdown order's groups.
            Exception: whatever the child raised before it had started (its
                last failure, once its policy gives up); nothing of it is left
                running.
            ChildGivenUp: the policy escalates and gave up before it started.
        """
        groups = self.shutdown.groups
        if group is None and len(groups) == 1:
            group = groups[0]
        if group not in groups:
            raise ValueError(f"a child must start in one of its supervisor's shutdown groups {groups!r}, "
                             f"not {group!r}")
        child = Child(factory, policy, group)
        child.start_value = await self._nursery.start(self._supervise, child)
        return child

    async def stop(self, child: Child) -> None:
        """Cancel the child and wait until its teardown has finished (at most
        its teardown bound). A stopped child is never restarted and never
        counts toward its policy's restarts or escalation, whatever its
        teardown raises: stopping is also how a child is retired."""
        await self._stop_at_once([child])

    async def stop_all(self) -> None:
        """Stop every child in the shutdown order: each group's children at
        once, the next group once they are gone (each group within its
        bound), children that start meanwhile in their group's turn."""
        for group in self.shutdown.groups:
            await self._stop_at_once([child for child in self._children if child.group == group])
        started_meanwhile = [child for child in self._children if not child._cancel_scope.cancel_called]
        if started_meanwhile:  # into a group whose turn had passed
            await self._stop_at_once(started_meanwhile)

    @property
    def teardown_bound(self) -> float:
        """How long :meth:`stop_all` takes at the most: for each group in
        sequence, the longest bound of its children (the shutdown order's
        teardown_timeout unless a child declares its own)."""
        return sum(max([self._bound_of(child) for child in self._children if child.group == group],
                       default=self.shutdown.teardown_timeout)
                   for group in self.shutdown.groups)

    def _bound_of(self, child: Child) -> float:
        declared = child.actor.teardown_bound()
        return self.shutdown.teardown_timeout if declared is None else declared

    async def _stop_at_once(self, children: list[Child]) -> None:
        for child in children:
            _cancel(child)
        bound = max((self._bound_of(child) for child in children), default=0.0)
        with trio.move_on_after(bound):
            for child in children:
                await child.done.wait()
        for child in children:
            if not child.done.is_set():
                self.teardown_overruns += 1
                logger.error("actor {} did not finish its teardown within {:g} s; going on without it",
                             child.name, bound)

    def describe(self) -> list[dict[str, Any]]:
        return [child.describe() for child in sorted(self._children, key=lambda c: c.started_at)]

    async def _supervise(self, child: Child, task_status: trio.TaskStatus[Any]) -> None:
        self._children.add(child)
        start_signal = _StartSignal(child, task_status)
        crash: Exception | None = None
        # Every line logged in the child's task, and in the tasks it starts, carries its fields.
        with logger.contextualize(**child.actor.log_fields()):
            try:
                with child._cancel_scope:
                    crash = await self._run_until_given_up(child, start_signal)
            finally:
                child.actor.mailbox.close()
                self._children.discard(child)
                child.state = ChildState.CRASHED if crash is not None else ChildState.STOPPED
                # A child that failed to start is reported by start() raising, not here.
                if start_signal.fired and self._on_exit is not None:
                    self._on_exit(child, crash)
                child.done.set()
        if crash is not None and child.given_up is not None and child.policy.escalate:
            given_up = ChildGivenUp(f"{child.name} was given up on after {child.given_up}: {child.last_error}")
            given_up.__cause__ = crash
            if not start_signal.fired or self._on_given_up is None:
                raise given_up  # (before it started, to start()'s caller)
            self._on_given_up(given_up)
            return
        if crash is not None and not start_signal.fired:
            raise crash  # it never started: start() reports its last failure

    async def _run_until_given_up(self, child: Child, start_signal: _StartSignal) -> Exception | None:
        """Run the child, restarting it as its policy allows; return the crash
        that ended it, or None when it returned or was cancelled.

        Only a failure of the first start is raised (start() reports it),
        unless the policy restarts_failed_start; anything later is a crash,
        including an error raised while the child was being cancelled, so no
        child's failure reaches the nursery that other children share, unless
        its policy escalates (see _supervise).
        """
        restart = child.policy.restart
        while True:
            crash: Exception | None = None
            try:
                await child.actor.run(start_signal)
            except BaseException as raised:
                crash = _crash_in(raised)
                if crash is None:
                    raise  # cancelled, nothing else
                if not start_signal.fired and child.restarts == 0 and not child.policy.restarts_failed_start:
                    raise
                child.last_error = _describe(crash)
            if crash is None and restart is not Restart.PERMANENT:
                return None
            delay = None if restart is Restart.TEMPORARY or _being_cancelled() else child._next_restart_delay()
            if delay is None:
                if crash is not None:
                    logger.opt(exception=crash).error("actor {} crashed; not restarting", child.name)
                return crash
            ended = f"crashed ({child.last_error})" if crash is not None else "ended"
            logger.opt(exception=crash).warning("actor {} {}; restarting in {:.2f} s", child.name, ended, delay)
            child.actor.mailbox.close()
            child.state = ChildState.RESTARTING
            await trio.sleep(delay)
            child.restarts += 1
            child.actor = child.factory()
            child.actor.incarnation = child.restarts
            if self._on_restart is not None:
                self._on_restart(child)
            child.state = ChildState.STARTING
            if start_signal.fired:  # (one that never fired still tells start() when it does)
                start_signal = _StartSignal(child, trio.TASK_STATUS_IGNORED)


@contextlib.asynccontextmanager
async def open_supervisor(*, shutdown: ShutdownOrder = ShutdownOrder(), on_exit: ExitCallback | None = None,
                          on_restart: Callable[[Child], None] | None = None) -> AsyncIterator[Supervisor]:
    """A supervisor whose children live in a nursery of their own, which the
    owner's cancellation does not reach: when the block ends (returns,
    raises, or is cancelled), they are stopped in the shutdown order, within
    its bound, before this returns, so no group ends before the one declared
    ahead of it.

    A child whose policy escalates, given up on after it had started, ends
    the block (cancelled), its siblings are stopped in the same order, and
    then this raises ChildGivenUp.
    """
    given_up: list[ChildGivenUp] = []
    children_scope = trio.CancelScope(shield=True)
    body = trio.CancelScope()

    def escalate(error: ChildGivenUp) -> None:
        given_up.append(error)
        body.cancel()

    async with trio.open_nursery() as nursery:
        children = await nursery.start(_nursery_in, children_scope)
        supervisor = Supervisor(children, shutdown=shutdown, on_exit=on_exit, on_restart=on_restart,
                                on_given_up=escalate)
        try:
            with body:
                yield supervisor
        finally:
            with trio.CancelScope(shield=True):
                await supervisor.stop_all()
            children_scope.cancel()
    if given_up:
        raise given_up[0]


async def _nursery_in(scope: trio.CancelScope, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    """A nursery inside ``scope``, open until ``scope`` is cancelled."""
    with scope:
        async with trio.open_nursery() as nursery:
            task_status.started(nursery)
            await trio.sleep_forever()


def _cancel(child: Child) -> None:
    if not child.done.is_set():
        child.state = ChildState.STOPPING
        child._cancel_scope.cancel()


def _describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(leaf) for leaf in error.exceptions)
    return f"{type(error).__name__}: {error}"


def _being_cancelled() -> bool:
    """True when the running task is being cancelled, by its own scope or an
    outer one: no moment to restart anything."""
    return trio.current_effective_deadline() == -math.inf


def _crash_in(raised: BaseException) -> Exception | None:
    """The failure in what an actor raised, without the cancellations that
    stopping it adds (Trio groups them together); None if it was only
    cancelled, or if it holds something that is no failure of the actor's
    (KeyboardInterrupt, SystemExit), which must travel on."""
    if isinstance(raised, BaseExceptionGroup):
        crashes, rest = raised.split(Exception)
        if rest is not None and rest.split(trio.Cancelled)[1] is not None:
            return None
        return crashes
    return raised if isinstance(raised, Exception) else None


class _StartSignal:
    """The task status handed to an actor's run(): marks the child running."""

    def __init__(self, child: Child, task_status: trio.TaskStatus[Any]) -> None:
        self._child = child
        self._task_status = task_status
        self.fired = False

    def started(self, value: Any = None) -> None:
        self.fired = True
        self._child.state = ChildState.RUNNING
        self._task_status.started(value)
