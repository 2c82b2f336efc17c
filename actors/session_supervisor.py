"""The session supervisor: the one place that decides which session a user has.

It guarantees, by structure rather than by checks:
- a user has at most one session: a JoinRoom for a user who has one cancels
  the old session and waits for its whole teardown (stream ended, tracks
  unpublished, room left) before the replacement starts;
- one user's JoinRoom and LeaveRoom calls are carried out one at a time, in
  arrival order, so the last join wins;
- different users never wait for each other: each user's commands run in a
  task of their own, so a slow or unreachable LiveKit URL delays only its user.
"""

from __future__ import annotations

import collections
from typing import Any

import trio
from loguru import logger

from .livekit.room import AbandonedConnect, RoomConnectError
from .messages import AttachStream, GetHealth, GetStatus, Health, Join, Joined, Leave, Play, StopPlayback
from .runtime import Actor, ActorGone, Child, MailboxFull, Supervisor
from .settings import BridgeSettings
from .user_session import UserSession

UserCommand = Join | Leave


class SessionSupervisor(Actor):
    mailbox_capacity = 4096

    def __init__(self, settings: BridgeSettings, *, name: str = "sessions") -> None:
        super().__init__(name)
        self._settings = settings
        self._sessions: dict[str, Child] = {}
        self._pending: dict[str, collections.deque[UserCommand]] = {}
        self._abandoned_connects: dict[str, AbandonedConnect] = {}
        self._supervisor: Supervisor | None = None
        self._nursery: trio.Nursery | None = None
        self._joins = 0
        self._replacements = 0
        self._failed_joins = 0
        self._skipped = 0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._supervisor = Supervisor(nursery, on_exit=self._on_session_exit)
            task_status.started()
            try:
                await self.serve()
            finally:
                with trio.CancelScope(shield=True):
                    await self._supervisor.stop_all()
                    with trio.move_on_after(self._settings.teardown_timeout):
                        for abandoned in self._abandoned_connects.values():
                            await abandoned.settle(self._settings.teardown_timeout)

    async def handle(self, message: Any) -> None:
        if isinstance(message, (Join, Leave)):
            self._enqueue(message)
        elif isinstance(message, (GetStatus, AttachStream, Play, StopPlayback)):
            self._forward_to_session(message)
        elif isinstance(message, GetHealth):
            message.reply.send(Health(active_sessions=len(self._sessions)))
        else:
            raise TypeError(f"the session supervisor does not handle {type(message).__name__}")

    def counters(self) -> dict[str, int]:
        return {
            "sessions": len(self._sessions),
            "users_with_pending_commands": len(self._pending),
            "joins": self._joins,
            "replacements": self._replacements,
            "failed_joins": self._failed_joins,
            "skipped_commands_of_gone_callers": self._skipped,
        }

    def children(self) -> list[dict[str, Any]]:
        return self._supervisor.describe() if self._supervisor is not None else []

    # -- per-user command queues -------------------------------------------

    def _enqueue(self, command: UserCommand) -> None:
        queue = self._pending.get(command.user_id)
        if queue is None:
            queue = self._pending[command.user_id] = collections.deque()
            assert self._nursery is not None
            self._nursery.start_soon(self._run_user_commands, command.user_id, queue)
        elif len(queue) >= self._settings.max_pending_commands_per_user:
            command.reply.fail(MailboxFull(
                f"{len(queue)} JoinRoom/LeaveRoom calls of user {command.user_id!r} are already waiting"))
            return
        queue.append(command)

    async def _run_user_commands(self, user_id: str, queue: collections.deque[UserCommand]) -> None:
        try:
            while queue:
                command = queue.popleft()
                if isinstance(command, Join) and command.reply.abandoned:
                    # Its caller gave up while it waited: joining now would only
                    # replace a newer state with one nobody asked for any more.
                    # (A Leave always runs: the user wants out either way.)
                    self._skipped += 1
                    logger.info("user {}: skipping a JoinRoom whose caller gave up", user_id)
                    continue
                try:
                    await self._settle_abandoned_connect(user_id)
                    if isinstance(command, Join):
                        command.reply.send(await self._join(command))
                    else:
                        command.reply.send(await self._leave(command))
                finally:
                    command.reply.fail(ActorGone("the bridge is shutting down; try again"))  # if unanswered
        finally:
            # No await between the last check of the queue and this: a command
            # enqueued meanwhile would have found the queue and been run above.
            del self._pending[user_id]
            for command in queue:
                command.reply.fail(ActorGone("the bridge is shutting down; try again"))

    async def _settle_abandoned_connect(self, user_id: str) -> None:
        """A connect of this user's that timed out may still join LiveKit under
        the user's identity and evict the next session; let it settle first."""
        abandoned = self._abandoned_connects.get(user_id)
        if abandoned is None:
            return
        if await abandoned.settle(self._settings.connect_timeout):
            del self._abandoned_connects[user_id]
        else:
            logger.warning("user {}: an earlier connect is still running; going on without it", user_id)

    def _forget_settled_connects(self) -> None:
        """Users who never come back must not leave an entry behind forever."""
        self._abandoned_connects = {
            user_id: connect for user_id, connect in self._abandoned_connects.items() if not connect.settled
        }

    async def _join(self, join: Join) -> Joined:
        assert self._supervisor is not None
        self._joins += 1
        old = self._sessions.pop(join.user_id, None)
        if old is not None:
            self._replacements += 1
            logger.info("Replacing existing bridge session for user {}", join.user_id)
            await self._supervisor.stop(old)
        try:
            child = await self._supervisor.start(lambda: UserSession(join, self._settings))
        except RoomConnectError as error:
            self._failed_joins += 1
            if error.abandoned is not None:
                self._forget_settled_connects()
                self._abandoned_connects[join.user_id] = error.abandoned
            logger.warning("user {}: JoinRoom failed: {}", join.user_id, error)
            return Joined(False, error=str(error))
        except Exception as error:
            self._failed_joins += 1
            logger.opt(exception=error).error("user {}: JoinRoom failed unexpectedly", join.user_id)
            return Joined(False, error=f"could not join the room: {type(error).__name__}: {error}")
        if child.done.is_set():  # it ended between reporting started and now
            return Joined(False, error=f"the session ended at once: {child.last_error or 'no error recorded'}")
        self._sessions[join.user_id] = child
        return child.start_value

    async def _leave(self, leave: Leave) -> str | None:
        assert self._supervisor is not None
        session = self._sessions.pop(leave.user_id, None)
        if session is None:
            return "session not found"
        logger.info("user {} leaves ({})", leave.user_id, leave.reason or "no reason given")
        await self._supervisor.stop(session)
        return None

    def _on_session_exit(self, child: Child, crash: BaseException | None) -> None:
        user_id = child.actor.user_id
        if self._sessions.get(user_id) is child:
            del self._sessions[user_id]
        if crash is not None:
            logger.error("session {} crashed: {}", child.name, crash)

    # -- questions for one session -------------------------------------------

    def _forward_to_session(self, message: GetStatus | AttachStream | Play | StopPlayback) -> None:
        session = self._sessions.get(message.user_id)
        if session is None:
            message.reply.send(None)
            return
        try:
            session.tell(message)
        except ActorGone:  # it ended a moment ago
            message.reply.send(None)
        except MailboxFull as error:
            message.reply.fail(error)
