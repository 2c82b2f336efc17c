"""Unit tests of the actor runtime (no LiveKit, no gRPC)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import pytest
import trio
from loguru import logger

from actors.runtime import (Actor, ActorGone, Backoff, ChildGivenUp, ChildState, MailboxFull, Mailbox, Request, Restart,
                            RestartPolicy, ShutdownOrder, Supervisor, open_supervisor)


@dataclasses.dataclass
class Echo(Request[Any]):
    value: Any


@dataclasses.dataclass
class Crash(Request[None]):
    pass


@dataclasses.dataclass
class Hang(Request[None]):
    pass


class EchoActor(Actor):
    mailbox_capacity = 4

    def __init__(self, name: str = "echo", log: list[str] | None = None) -> None:
        super().__init__(name)
        self.log = log if log is not None else []

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.log.append(f"{self.name} up")
        try:
            task_status.started(f"{self.name} ready")
            await self.serve()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.05)  # a teardown that takes time, like leaving a room
            self.log.append(f"{self.name} down")

    async def handle(self, message: Any) -> None:
        if isinstance(message, Echo):
            message.reply.send(message.value)
        elif isinstance(message, Crash):
            raise RuntimeError("boom")
        elif isinstance(message, Hang):
            await trio.sleep_forever()


async def test_full_mailbox_refuses_at_once_and_counts() -> None:
    mailbox = Mailbox(2)
    mailbox.tell("a")
    mailbox.tell("b")
    with pytest.raises(MailboxFull, match="2 messages waiting"):
        mailbox.tell("c")
    assert mailbox.depth == 2
    assert mailbox.refused_full == 1


async def test_closed_mailbox_fails_waiting_requests() -> None:
    mailbox = Mailbox(4)
    request = Echo(1)
    mailbox.tell(request)
    mailbox.close()
    with pytest.raises(ActorGone):
        await request.reply.wait()
    with pytest.raises(ActorGone):
        mailbox.tell(Echo(2))


async def test_ask_returns_the_answer_and_times_out_when_none_comes() -> None:
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery)
        child = await supervisor.start(EchoActor)
        assert child.start_value == "echo ready"
        assert await child.ask(Echo(42), timeout=1) == 42
        with pytest.raises(TimeoutError, match="Hang"):
            await child.ask(Hang(), timeout=0.1)
        await supervisor.stop(child)


async def test_supervisor_sees_a_crash_and_the_asker_gets_the_error() -> None:
    exits: list[tuple[str, BaseException | None]] = []
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, on_exit=lambda child, error: exits.append((child.name, error)))
        child = await supervisor.start(EchoActor)
        with pytest.raises(RuntimeError, match="boom"):
            await child.ask(Crash(), timeout=1)
        await child.done.wait()
    assert child.state == ChildState.CRASHED
    assert "boom" in child.last_error
    assert [(name, type(error)) for name, error in exits] == [("echo", RuntimeError)]


async def test_restart_policy_restarts_then_gives_up() -> None:
    restarted: list[int] = []
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, on_restart=lambda child: restarted.append(child.restarts))
        child = await supervisor.start(EchoActor, policy=RestartPolicy(max_restarts=2, within_seconds=60))
        for expected_restarts in (1, 2):
            with pytest.raises(RuntimeError):
                await child.ask(Crash(), timeout=1)
            with trio.fail_after(5):
                while child.restarts < expected_restarts:
                    await trio.sleep(0.01)
            assert await child.ask(Echo("alive"), timeout=1) == "alive"
        with pytest.raises(RuntimeError):
            await child.ask(Crash(), timeout=1)
        await child.done.wait()
    assert child.state == ChildState.CRASHED
    assert child.restarts == 2
    assert restarted == [1, 2], "on_restart is told of each restart, and only of restarts"


class FieldedActor(EchoActor):
    def log_fields(self) -> dict[str, Any]:
        return {"user_id": "ann"}

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        logger.info("fielded actor running")
        await super().run(task_status)


async def test_an_actors_log_fields_are_on_every_line_of_its_task_its_restarts_and_its_supervisor(
        log_records) -> None:
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, on_exit=lambda child, crash: logger.info("fielded actor gone"))
        child = await supervisor.start(FieldedActor, policy=RestartPolicy(max_restarts=1, within_seconds=60))
        with pytest.raises(RuntimeError):
            await child.ask(Crash(), timeout=1)
        with trio.fail_after(5):
            while child.restarts < 1:
                await trio.sleep(0.01)
        await supervisor.stop(child)
    logger.info("outside any actor")
    users = {record["message"]: record["user_id"] for record in log_records}
    restarting = [message for message in users if "restarting in" in message]
    assert restarting and users[restarting[0]] == "ann"
    assert users["fielded actor running"] == "ann" and users["fielded actor gone"] == "ann"
    assert users["outside any actor"] is None


async def test_failure_before_started_is_raised_by_start_and_leaves_nothing() -> None:
    class FailsToStart(Actor):
        async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
            raise ConnectionError("unreachable")

    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery)
        with pytest.raises(ConnectionError, match="unreachable"):
            await supervisor.start(lambda: FailsToStart("doomed"))
        assert len(supervisor) == 0


async def test_stop_cancels_and_awaits_the_whole_teardown_before_the_replacement_starts() -> None:
    log: list[str] = []
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery)
        old = await supervisor.start(lambda: EchoActor("old", log))
        await supervisor.stop(old)
        assert old.state == ChildState.STOPPED
        await supervisor.start(lambda: EchoActor("new", log))
        assert log == ["old up", "old down", "new up"]
        await supervisor.stop_all()
    assert log[-1] == "new down"


async def test_describe_reports_state_mailbox_and_restarts() -> None:
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery)
        child = await supervisor.start(EchoActor)
        [node] = supervisor.describe()
        assert node["name"] == "echo"
        assert node["kind"] == "EchoActor"
        assert node["state"] == ChildState.RUNNING
        assert node["mailbox"] == {"depth": 0, "capacity": 4, "refused_full": 0}
        assert node["restarts"] == 0 and node["last_error"] is None
        await supervisor.stop(child)
        assert supervisor.describe() == []


async def test_an_error_raised_while_being_stopped_is_a_crash_not_a_nursery_failure() -> None:
    class FailsOnTheWayOut(Actor):
        async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                task_status.started()
                try:
                    await self.serve()
                finally:
                    raise RuntimeError("teardown failed")

    exits: list[BaseException | None] = []
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, on_exit=lambda child, error: exits.append(error))
        bystander = await supervisor.start(EchoActor)
        child = await supervisor.start(lambda: FailsOnTheWayOut("fragile"))
        await supervisor.stop(child)
        assert child.state == ChildState.CRASHED and "teardown failed" in child.last_error
        assert await bystander.ask(Echo("still here"), timeout=1) == "still here"
        await supervisor.stop(bystander)
    assert [error is not None for error in exits] == [True, False]  # fragile crashed; bystander stopped


async def test_a_restart_that_fails_to_start_counts_as_a_crash() -> None:
    incarnations = []

    class FailsAfterFirstLife(EchoActor):
        async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
            incarnations.append(self)
            if len(incarnations) > 1:
                raise ConnectionError("cannot come back")
            await super().run(task_status)

    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery)
        child = await supervisor.start(FailsAfterFirstLife, policy=RestartPolicy(max_restarts=1))
        with pytest.raises(RuntimeError):
            await child.ask(Crash(), timeout=1)
        with trio.fail_after(5):
            await child.done.wait()
    assert child.state == ChildState.CRASHED and "cannot come back" in child.last_error
    assert len(incarnations) == 2


def test_backoff_doubles_up_to_its_maximum_within_its_jitter() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.2)
    for restarts, base in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)):
        delays = [backoff.delay(restarts) for _ in range(200)]
        assert base * 0.8 <= min(delays) and max(delays) <= base * 1.2
        assert max(delays) - min(delays) > base * 0.1  # spread, so siblings do not restart in step


class Returns(EchoActor):
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.log.append("up")
        task_status.started()


async def test_permanent_children_come_back_after_returning_transient_and_temporary_do_not(autojump_clock) -> None:
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery)
        lives: dict[Restart, list[str]] = {}
        children = {}
        for restart in Restart:
            lives[restart] = []
            policy = RestartPolicy(restart=restart, max_restarts=2, within_seconds=60)
            children[restart] = await supervisor.start(functools.partial(Returns, log=lives[restart]), policy=policy)
        for child in children.values():
            await child.done.wait()
    assert lives == {Restart.PERMANENT: ["up"] * 3, Restart.TRANSIENT: ["up"], Restart.TEMPORARY: ["up"]}
    assert "3 ends within 60 s" in children[Restart.PERMANENT].given_up
    assert children[Restart.TRANSIENT].given_up is None


async def test_a_crashing_child_waits_out_a_growing_backoff_and_is_then_given_up_on(autojump_clock) -> None:
    started_at: list[float] = []

    class CrashesAtOnce(EchoActor):
        async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
            started_at.append(trio.current_time())
            task_status.started()
            raise RuntimeError("crash")

    policy = RestartPolicy(max_restarts=3, within_seconds=60, backoff=Backoff(initial=1.0, jitter=0.0))
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery)
        child = await supervisor.start(CrashesAtOnce, policy=policy)
        await trio.sleep(0.5)
        assert child.describe()["state"] == ChildState.RESTARTING
        await child.done.wait()
    gaps = [later - earlier for earlier, later in zip(started_at, started_at[1:])]
    assert gaps == pytest.approx([1.0, 2.0, 4.0])
    assert child.state == ChildState.CRASHED and child.restarts == 3
    assert "allows 3 restarts" in child.describe()["given_up"]


async def test_a_child_that_escalates_takes_its_supervisors_owner_down_once_given_up_on(autojump_clock) -> None:
    class CrashesAtOnce(EchoActor):
        async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            raise RuntimeError("crash")

    def policy(escalate: bool) -> RestartPolicy:
        return RestartPolicy(restart=Restart.PERMANENT, max_restarts=2, backoff=Backoff(initial=1.0, jitter=0.0),
                             escalate=escalate)

    # Without escalation the owner's nursery goes on: a sibling still answers.
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery)
        child = await supervisor.start(CrashesAtOnce, policy=policy(False))
        sibling = await supervisor.start(EchoActor)
        await child.done.wait()
        assert child.given_up is not None and await sibling.ask(Echo("still here"), timeout=1) == "still here"
        nursery.cancel_scope.cancel()
    # With it, the owner's nursery fails once the child is given up on.
    with pytest.RaisesGroup(pytest.RaisesExc(ChildGivenUp, match="given up on after 3 ends")):
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(nursery)
            child = await supervisor.start(CrashesAtOnce, policy=policy(True))
            await trio.sleep_forever()
    assert child.restarts == 2


class StuckInTeardown(EchoActor):
    """A teardown that never ends by itself; ``bound``: its declared teardown bound."""

    def __init__(self, name: str = "stuck", bound: float | None = None) -> None:
        super().__init__(name)
        self._bound = bound

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(60)  # a leave that never answers

    def teardown_bound(self) -> float | None:
        return self._bound


async def test_a_teardown_that_overruns_is_counted_and_never_hangs_its_supervisor(autojump_clock) -> None:
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, shutdown=ShutdownOrder(teardown_timeout=5))
        child = await supervisor.start(StuckInTeardown)
        started = trio.current_time()
        await supervisor.stop(child)
        assert trio.current_time() - started == pytest.approx(5)
        assert supervisor.teardown_overruns == 1 and not child.done.is_set()
        await child.done.wait()  # it does finish, in the background


class LogsItsTeardown(EchoActor):
    """Logs when its teardown begins and when it has finished."""

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.log.append(f"{self.name} stopping")
            with trio.CancelScope(shield=True):
                await trio.sleep(1)  # a teardown that takes time, like leaving a room
            self.log.append(f"{self.name} stopped")


async def test_the_owners_cancellation_stops_the_groups_one_after_the_other_in_the_declared_order(
        autojump_clock) -> None:
    log: list[str] = []
    order = ShutdownOrder(groups=("links", "sessions", "workers"), teardown_timeout=10)
    with trio.CancelScope() as owner:
        async with open_supervisor(shutdown=order) as supervisor:
            # Started in another order than they stop in, and some while others run.
            for name, group in [("worker-1", "workers"), ("link-a", "links"), ("session-a", "sessions"),
                                ("link-b", "links"), ("worker-2", "workers"), ("session-b", "sessions")]:
                await supervisor.start(functools.partial(LogsItsTeardown, name, log), group=group)
            with pytest.raises(ValueError, match="shutdown groups"):
                await supervisor.start(functools.partial(LogsItsTeardown, "nowhere", log), group="elsewhere")
            owner.cancel()
            await trio.sleep_forever()
    # Each group's teardowns run at once, and the next group's begin only once they have ended.
    phases = [(line.split("-")[0], line.split()[1]) for line in log]
    assert phases == [("link", "stopping")] * 2 + [("link", "stopped")] * 2 + \
        [("session", "stopping")] * 2 + [("session", "stopped")] * 2 + \
        [("worker", "stopping")] * 2 + [("worker", "stopped")] * 2


async def test_stopping_them_all_is_bounded_by_each_groups_bound_in_sequence(autojump_clock) -> None:
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, shutdown=ShutdownOrder(groups=("first", "second"), teardown_timeout=5))
        await supervisor.start(functools.partial(StuckInTeardown, "stuck"), group="first")
        assert supervisor.teardown_bound == 10
        # A child that declares a bound of its own (a supervisor of its own children) is waited for that long.
        await supervisor.start(functools.partial(StuckInTeardown, "nested", bound=7), group="second")
        assert supervisor.teardown_bound == 12
        started = trio.current_time()
        await supervisor.stop_all()
        assert trio.current_time() - started == pytest.approx(12)
        assert supervisor.teardown_overruns == 2
        nursery.cancel_scope.cancel()


async def test_an_escalation_stops_the_siblings_in_the_shutdown_order_then_raises(autojump_clock) -> None:
    class CrashesWhenTold(EchoActor):
        async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            await self.mailbox.receive()
            self.log.append(f"{self.name} crashed")
            raise RuntimeError("crash")

    log: list[str] = []
    policy = RestartPolicy(restart=Restart.PERMANENT, max_restarts=0, escalate=True)
    with pytest.raises(ChildGivenUp, match="worker was given up on"):
        async with open_supervisor(shutdown=ShutdownOrder(groups=("links", "workers"))) as supervisor:
            worker = await supervisor.start(functools.partial(CrashesWhenTold, "worker", log), policy=policy,
                                            group="workers")
            await supervisor.start(functools.partial(LogsItsTeardown, "link", log), group="links")
            await supervisor.start(functools.partial(LogsItsTeardown, "late-worker", log), group="workers")
            worker.tell("crash")
            await trio.sleep_forever()
    assert log == ["worker crashed", "link stopping", "link stopped", "late-worker stopping", "late-worker stopped"]


async def test_a_stopped_child_is_never_restarted_nor_escalates_whatever_its_teardown_raises(autojump_clock) -> None:
    class FailsInTeardown(EchoActor):
        async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                raise RuntimeError("teardown failed")

    exits: list[BaseException | None] = []
    policy = RestartPolicy(restart=Restart.PERMANENT, max_restarts=0, escalate=True)
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, on_exit=lambda child, error: exits.append(error))
        child = await supervisor.start(FailsInTeardown, policy=policy)
        await supervisor.stop(child)
        await trio.sleep(10)
        assert child.done.is_set() and child.restarts == 0 and child.given_up is None
        assert [str(error) for error in exits] == ["teardown failed"]
        nursery.cancel_scope.cancel()


async def test_each_restart_knows_its_incarnation(autojump_clock) -> None:
    incarnations: list[int] = []

    class CrashesAtOnce(EchoActor):
        async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
            incarnations.append(self.incarnation)
            task_status.started()
            raise RuntimeError("crash")

    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery)
        child = await supervisor.start(CrashesAtOnce, policy=RestartPolicy(max_restarts=2))
        await child.done.wait()
    assert incarnations == [0, 1, 2]


async def test_the_asyncio_loop_takes_a_negative_delay_as_now_as_asyncio_does() -> None:
    import asyncio

    import trio_asyncio

    from actors.asyncio_compat import match_asyncio

    match_asyncio()
    called = trio.Event()
    async with trio_asyncio.open_loop():
        async def schedule() -> None:
            asyncio.get_running_loop().call_later(-0.01, called.set)  # as livekit's AudioSource does

        await trio_asyncio.aio_as_trio(schedule)()
        with trio.fail_after(5):
            await called.wait()


async def test_the_asyncio_loop_drops_cancelled_timers_as_asyncio_does() -> None:
    """trio-asyncio alone keeps a cancelled timer until it would have fired:
    every gRPC deadline and asyncio.wait timeout of a busy bridge piled up."""
    import asyncio

    import trio_asyncio

    from actors.asyncio_compat import match_asyncio

    match_asyncio()
    fired = trio.Event()
    async with trio_asyncio.open_loop() as loop:
        async def schedule_and_cancel() -> None:
            running = asyncio.get_running_loop()
            running.call_later(0.5, fired.set)  # one that must still fire
            for _ in range(1000):
                running.call_later(3600, lambda: None).cancel()
                await asyncio.sleep(0)  # the loop moves each timer into its heap

        await trio_asyncio.aio_as_trio(schedule_and_cancel)()
        assert len(loop._timers) <= 101, "cancelled timers were kept"
        with trio.fail_after(5):
            await fired.wait()



async def test_a_policy_that_restarts_a_failed_start_starts_it_again_until_it_starts_or_gives_up(
        autojump_clock) -> None:
    """restarts_failed_start: start() returns once a later incarnation has
    started; when the policy gives up first, start() raises the last failure."""
    attempts = {"flaky": 0, "broken": 0}

    class Flaky(EchoActor):
        """Fails its first two starts, then runs."""

        async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
            attempts[self.name] += 1
            if self.name == "broken" or attempts[self.name] < 3:
                raise ConnectionError(f"{self.name}: attempt {attempts[self.name]} failed")
            await super().run(task_status)

    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery)
        child = await supervisor.start(lambda: Flaky("flaky"),
                                       policy=RestartPolicy(max_restarts=2, restarts_failed_start=True))
        assert (child.state, child.restarts, attempts["flaky"]) == (ChildState.RUNNING, 2, 3)
        assert await child.ask(Echo("up"), timeout=1) == "up"
        with pytest.raises(ConnectionError, match="broken: attempt 2 failed"):
            await supervisor.start(lambda: Flaky("broken"),
                                   policy=RestartPolicy(max_restarts=1, restarts_failed_start=True))
        assert len(supervisor) == 1
        nursery.cancel_scope.cancel()
