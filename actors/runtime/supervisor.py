"""Supervision: children that run in a nursery, and what became of them.

A :class:`Supervisor` lives inside its owner's nursery. It starts each child
in a cancel scope of its own, learns of every exit (clean, cancelled or
crashed), restarts a crashed child when its policy allows, and describes its
subtree for operators. Stopping a child is *cancel, then wait for the whole
teardown*: when :meth:`Supervisor.stop` returns, the child's ``finally``
blocks have finished.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
import time
from collections.abc import Callable
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


class ChildGivenUp(Exception):
    """A child whose policy escalates was given up on; the message says which and why."""


class Child:
    """A supervisor's handle on one child: where to send messages, and its state.

    The handle stays valid across restarts: ``actor`` is always the current
    incarnation. ``done`` is set once the child has finished for good.
    """

    def __init__(self, factory: Callable[[], Actor], policy: RestartPolicy) -> None:
        self.factory = factory
        self.policy = policy
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

    ``teardown_timeout`` bounds how long :meth:`stop` waits: a child whose
    teardown takes longer is logged and counted in ``teardown_overruns``, and
    ``stop`` returns while it finishes in the background (cancelled, it is
    never restarted). Children bound their own teardown; this is the backstop
    that keeps one stuck child from hanging its supervisor.
    """

    def __init__(self, nursery: trio.Nursery, *, on_exit: ExitCallback | None = None,
                 on_restart: Callable[[Child], None] | None = None, teardown_timeout: float = math.inf) -> None:
        self._nursery = nursery
        self._on_exit = on_exit
        self._on_restart = on_restart
        self._children: set[Child] = set()
        self._teardown_timeout = teardown_timeout
        self.teardown_overruns = 0

    def __len__(self) -> int:
        return len(self._children)

    async def start(self, factory: Callable[[], Actor], *, policy: RestartPolicy = NEVER_RESTART) -> Child:
        """Start a child and return once it reported itself started (after
        restarts, when its policy ``restarts_failed_start``).

        The child's ``run`` is called with a task status; the value it passes
        to ``started()`` is kept as ``child.start_value``.

        Raises:
            Exception: whatever the child raised before it had started (its
                last failure, once its policy gives up); nothing of it is left
                running.
            ChildGivenUp: the policy escalates and gave up before it started.
        """
        child = Child(factory, policy)
        child.start_value = await self._nursery.start(self._supervise, child)
        return child

    async def stop(self, child: Child) -> None:
        """Cancel the child and wait until its teardown has finished (at most
        ``teardown_timeout``)."""
        _cancel(child)
        await self._await_teardown([child])

    async def stop_all(self) -> None:
        """Cancel every child at once, then wait for all their teardowns."""
        await self.stop_each(list(self._children))

    async def stop_each(self, children: list[Child]) -> None:
        """Cancel ``children`` at once, then wait for all their teardowns (at
        most ``teardown_timeout``)."""
        for child in children:
            _cancel(child)
        await self._await_teardown(children)

    async def _await_teardown(self, children: list[Child]) -> None:
        with trio.move_on_after(self._teardown_timeout):
            for child in children:
                await child.done.wait()
        for child in children:
            if not child.done.is_set():
                self.teardown_overruns += 1
                logger.error("actor {} did not finish its teardown within {:g} s; going on without it",
                             child.name, self._teardown_timeout)

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
            raise ChildGivenUp(f"{child.name} was given up on after {child.given_up}: {child.last_error}") from crash
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
            if self._on_restart is not None:
                self._on_restart(child)
            child.state = ChildState.STARTING
            if start_signal.fired:  # (one that never fired still tells start() when it does)
                start_signal = _StartSignal(child, trio.TASK_STATUS_IGNORED)


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
