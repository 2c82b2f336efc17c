"""Unit tests of the actor runtime (no LiveKit, no gRPC)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import trio

from actors.runtime import Actor, ActorGone, ChildState, MailboxFull, Mailbox, Request, RestartPolicy, Supervisor


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
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery)
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
