"""The session supervisor: the one place that decides which session a user has.

A user's session runs beside the user's RoomLink (the LiveKit connection),
both children of this supervisor; the link is lent to one session at a time.

It guarantees, by structure rather than by checks:
- a user has at most one session: a JoinRoom for a user who has one cancels
  the old session and waits for its whole teardown (stream ended, tracks
  unpublished) before the replacement starts;
- a replacement keeps the user's LiveKit link when the link adopts it (it is
  healthy and the JoinRoom names the same room for the same identity: see
  RoomLink.adoption_refusal); otherwise the link too is stopped (room left)
  before a new one joins, so two connections of one user never coexist;
- one user's JoinRoom and LeaveRoom calls are carried out one at a time, in
  arrival order, so the last join wins;
- different users never wait for each other: each user's commands run in a
  task of their own, so a slow or unreachable LiveKit URL delays only its user;
- a crashed session is restarted from its JoinRoom (same link, same
  StreamAudio consumer) with backoff, and given up on after
  ``session_max_restarts`` crashes within a minute (its link is then left);
- a link that will not rejoin (LiveKit ended the participant, the token
  expired) ends the user's session;
- a session that has had no StreamAudio consumer for ``idle_session_ttl``
  seconds (a zombie whose cloud went away) is torn down;
- for ``ended_session_memory`` seconds after a session ended by itself (given
  up, reaped, or ended by LiveKit), GetStatus says why;
- with SDK worker processes (BRIDGE_SDK_WORKERS; by default one per core),
  the rooms are joined in those processes, supervised here: a new link is
  placed on the running worker that holds the fewest links (room_hosts.py),
  and a worker that dies is started again, its links rejoining there by
  themselves. On the way out the links stop first, then the sessions, then
  the workers (shutdown_order).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any

import trio
from loguru import logger

from ..livekit.room import PendingConnect, RoomConnectError
from ..operations.metrics import JOINS, SESSIONS, SESSIONS_ENDED, count_restart
from ..operations.settings import BridgeSettings
from ..runtime import (Actor, ActorGone, Child, MailboxFull, Request, Restart, RestartPolicy, ShutdownOrder,
                       Supervisor, open_supervisor)
from ..sdk_workers.worker import SdkWorker, WorkerError, WorkerGone
from .messages import (AtCapacity, AttachStream, CountWorkerObjects, Fault, GetHealth, GetStatus, Health, Join,
                       Joined, Leave, Play, SessionStatus, StopPlayback)
from .room_hosts import RoomHosts
from .room_link import RoomLink
from .user_line import UserLine
from .user_session import UserSession


@dataclasses.dataclass
class _EndUser(Request[None]):
    """Tear down the user's session and link, if ``incarnation`` (a session or
    a link) is still theirs: reaped for having no consumer, given up, or
    ended by its link."""

    user_id: str
    incarnation: Child
    reason: str
    #: bridge_sessions_ended_total's label, or None when counted already.
    counted_as: str | None = None


UserCommand = Join | Leave | _EndUser


def shutdown_order(settings: BridgeSettings) -> ShutdownOrder:
    """The links first: each leaves its room, then ends its line's stream,
    so the cloud's audio streams end only once there is no more audio (see
    FrontDoor.drain); an adopted link may have outlived the session it was
    lent to, so start order would not do. Then the sessions, whose streams
    the links' end has closed. The SDK worker processes that held the rooms
    go last. A link's or a session's own teardown is bounded (leave, stream
    end); ``teardown_timeout`` three times over is the backstop of each group."""
    return ShutdownOrder(groups=("links", "sessions", "workers"), teardown_timeout=settings.teardown_timeout * 3)


class SessionSupervisor(Actor):
    mailbox_capacity = 4096

    def __init__(self, settings: BridgeSettings, *, name: str = "sessions") -> None:
        super().__init__(name)
        self._settings = settings
        self._sessions: dict[str, Child] = {}
        #: user -> the RoomLink their session borrows.
        self._links: dict[str, Child] = {}
        self._pending: dict[str, collections.deque[UserCommand]] = {}
        self._abandoned_connects: dict[str, PendingConnect] = {}
        self._supervisor: Supervisor | None = None
        self._nursery: trio.Nursery | None = None
        self._hosts = RoomHosts(settings)
        self._joins = 0
        #: Joins between their start and their session's entry in _sessions
        #: (a replacement's old session is out of _sessions meanwhile).
        self._joins_in_flight = 0
        self._replacements = 0
        self._adoptions = 0
        self._failed_joins = 0
        self._refused_joins = 0
        self._skipped = 0
        self._reaped = 0
        self._given_up = 0
        #: user -> (when, why) their last session ended by itself; bounded by age.
        self._ended: dict[str, tuple[float, int, str]] = {}

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with open_supervisor(shutdown=shutdown_order(self._settings), on_exit=self._on_exit,
                                       on_restart=count_restart) as supervisor:
                self._supervisor = supervisor
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        SESSIONS.set_function(lambda: len(self._sessions))
                        nursery.start_soon(self._reap_unattended_sessions)
                        self._hosts.start(supervisor, nursery, lambda: [link.actor for link in self._links.values()])
                        task_status.started()
                        await self.serve()
                finally:
                    # Stopped by us: nothing of theirs to queue on the way out.
                    self._sessions.clear()
                    self._links.clear()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self._settings.teardown_timeout):
                for abandoned in self._abandoned_connects.values():
                    await abandoned.settle(self._settings.teardown_timeout)

    def teardown_bound(self) -> float | None:
        """Its children's groups in sequence, then the abandoned connects'
        settling (one teardown_timeout)."""
        if self._supervisor is None:
            return None
        return self._supervisor.teardown_bound + self._settings.teardown_timeout

    async def handle(self, message: Any) -> None:
        if isinstance(message, (Join, Leave)):
            self._enqueue(message)
        elif isinstance(message, GetStatus) and not self._serving(message.user_id):
            message.reply.send(self._ended_status(message.user_id))
        elif isinstance(message, (GetStatus, AttachStream, Play, StopPlayback, Fault)):
            self._forward_to_session(message)
        elif isinstance(message, GetHealth):
            message.reply.send(Health(active_sessions=len(self._sessions)))
        elif isinstance(message, CountWorkerObjects):
            assert self._nursery is not None
            self._nursery.start_soon(self._count_worker_objects, message)  # the mailbox is not held up
        else:
            raise TypeError(f"the session supervisor does not handle {type(message).__name__}")

    def counters(self) -> dict[str, int]:
        return {
            "sessions": len(self._sessions),
            "users_with_pending_commands": len(self._pending),
            "joins": self._joins,
            "replacements": self._replacements,
            "adoptions": self._adoptions,
            "failed_joins": self._failed_joins,
            "refused_joins_at_capacity": self._refused_joins,
            "skipped_commands_of_gone_callers": self._skipped,
            "sessions_reaped": self._reaped,
            "sessions_given_up": self._given_up,
            "teardown_overruns": self._supervisor.teardown_overruns if self._supervisor is not None else 0,
            **self._hosts.counters(),
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
        elif len(queue) >= self._settings.max_pending_commands_per_user and not isinstance(command, _EndUser):
            # (The bridge's own _EndUser always goes in: dropped, it would leave a dead session registered.)
            command.reply.fail(MailboxFull(
                f"{len(queue)} JoinRoom/LeaveRoom calls of user {command.user_id!r} are already waiting"))
            return
        queue.append(command)

    async def _run_user_commands(self, user_id: str, queue: collections.deque[UserCommand]) -> None:
        # Its log lines, and those of the sessions it starts, carry the user's id as a field.
        with logger.contextualize(user_id=user_id):
            await self._run_commands_of(user_id, queue)

    async def _run_commands_of(self, user_id: str, queue: collections.deque[UserCommand]) -> None:
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
                        self._admit(command)
                        self._joins_in_flight += 1
                        try:
                            command.reply.send(await self._join(command))
                        finally:
                            self._joins_in_flight -= 1
                    elif isinstance(command, Leave):
                        command.reply.send(await self._leave(command))
                    else:
                        command.reply.send(await self._end_user(command))
                except AtCapacity as refusal:
                    command.reply.fail(refusal)
                finally:
                    command.reply.fail(ActorGone("the bridge is shutting down; try again"))  # if unanswered
        finally:
            # No await between the last check of the queue and this: a command
            # enqueued meanwhile would have found the queue and been run above.
            del self._pending[user_id]
            for command in queue:
                command.reply.fail(ActorGone("the bridge is shutting down; try again"))

    def _admit(self, join: Join) -> None:
        """Raise AtCapacity for a user without a session when the sessions,
        with the joins under way, are at max_sessions; a replacement always goes through."""
        limit = self._settings.max_sessions
        if limit is None or join.user_id in self._sessions or len(self._sessions) + self._joins_in_flight < limit:
            return
        self._refused_joins += 1
        JOINS.labels("refused").inc()
        logger.warning("user {}: JoinRoom refused: the bridge holds its maximum of {} sessions", join.user_id, limit)
        raise AtCapacity(f"this bridge holds its maximum of {limit} sessions (BRIDGE_MAX_SESSIONS); "
                         "join the user on another instance")

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
            await self._supervisor.stop(old)
        link, replacement = await self._link_for(join, old)
        if link is None:
            return Joined(False, error=replacement)
        policy = RestartPolicy(restart=Restart.TRANSIENT, max_restarts=self._settings.session_max_restarts,
                               within_seconds=60)
        try:
            child = await self._supervisor.start(lambda: UserSession(join, self._settings, link), policy=policy,
                                                 group="sessions")
        except Exception as error:
            await self._stop_link(join.user_id)
            return self._failed_join(join, error)
        if child.done.is_set():  # it ended between reporting started and now
            await self._stop_link(join.user_id)
            self._count_failed_join()
            return Joined(False, error=f"the session ended at once: {child.last_error or 'no error recorded'}")
        JOINS.labels(replacement).inc()
        # An adopted line may carry the old session's reaping marks: the new session starts its own clock.
        child.actor.line.unattended_since = None
        child.actor.line.reap_queued = False
        self._sessions[join.user_id] = child
        self._ended.pop(join.user_id, None)
        joined = child.start_value
        # The deployment's monitoring looks for this line (the Go bridge's words).
        logger.bind(room=join.room_name, participant_id=joined.participant_id, result=replacement).info(
            "Successfully joined room {} for user {} as {} ({})", join.room_name, join.user_id,
            joined.participant_id, replacement)
        return joined

    async def _link_for(self, join: Join, old: Child | None) -> tuple[Child | None, str]:
        """The user's link for ``join``, which replaces the session ``old``
        (stopped) if any: theirs if it adopts the join, else a new one (the
        old one left first); with how the join is counted (joined, adopted or
        replaced), or None and why the join failed."""
        assert self._supervisor is not None
        user_id = join.user_id
        replaced = old is not None
        link = self._links.get(user_id)
        if link is not None:
            if not self._settings.adopt_links:
                outcome: Joined | str = "adoption is off (BRIDGE_ADOPT_LINKS)"
            elif old is not None and not old.done.is_set():
                outcome = "the old session's teardown overran; the link is not lent twice"
            else:
                outcome = link.actor.adopt(join)
            if isinstance(outcome, Joined):
                self._adoptions += 1
                self._log_replacement(user_id, replaced, "adopted", "the LiveKit connection is kept")
                return link, "adopted"
            self._log_replacement(user_id, replaced, "rejoined", outcome)
            await self._stop_link(user_id)
        elif replaced:
            self._log_replacement(user_id, replaced, "rejoined", "the session had no LiveKit link")
        line = UserLine(mic_buffer_packets=self._settings.mic_buffer_packets,
                        publish_buffer_chunks=self._settings.publish_buffer_chunks)
        # Placed while it joins, so that joins at once spread over the hosts.
        with self._hosts.placing(link.actor for link in self._links.values()) as host:
            try:
                link = await self._supervisor.start(lambda: RoomLink(join, self._settings, line, host), group="links")
            except Exception as error:
                line.close()
                return None, self._failed_join(join, error).error
            self._links[user_id] = link
        return link, "replaced" if replaced else "joined"

    def _log_replacement(self, user_id: str, replaced: bool, how: str, why: str) -> None:
        if not replaced:
            return
        self._replacements += 1
        # The deployment's monitoring counts this line.
        logger.bind(replacement=how, reason=why).info("Replacing existing bridge session for user {} ({}: {})",
                                                      user_id, how, why)

    def _failed_join(self, join: Join, error: Exception) -> Joined:
        self._count_failed_join()
        if isinstance(error, RoomConnectError):
            if error.abandoned is not None:
                self._forget_settled_connects()
                self._abandoned_connects[join.user_id] = error.abandoned
            # (The front door logs the failed JoinRoom; this says where it failed.)
            logger.info("user {}: could not join room {}: {}", join.user_id, join.room_name, error)
            return Joined(False, error=str(error))
        logger.opt(exception=error).error("user {}: JoinRoom failed unexpectedly", join.user_id)
        return Joined(False, error=f"could not join the room: {type(error).__name__}: {error}")

    def _count_failed_join(self) -> None:
        """In the tree and in bridge_joins_total alike."""
        self._failed_joins += 1
        JOINS.labels("failed").inc()

    async def _stop_link(self, user_id: str) -> None:
        """Leave the user's LiveKit room: stop their link, and close its line."""
        assert self._supervisor is not None
        link = self._links.pop(user_id, None)
        if link is not None:
            await self._supervisor.stop(link)

    async def _leave(self, leave: Leave) -> str | None:
        assert self._supervisor is not None
        session = self._sessions.pop(leave.user_id, None)
        if session is None:
            return "session not found"
        logger.info("user {} leaves ({})", leave.user_id, leave.reason or "no reason given")
        await self._supervisor.stop(session)
        await self._stop_link(leave.user_id)
        return None

    async def _end_user(self, end: _EndUser) -> None:
        assert self._supervisor is not None
        user_id = end.user_id
        if end.incarnation not in (self._sessions.get(user_id), self._links.get(user_id)):
            return  # replaced or left meanwhile
        session = self._sessions.pop(user_id, None)
        if end.counted_as is not None:
            SESSIONS_ENDED.labels(end.counted_as).inc()
        if end.counted_as == "reaped":
            self._reaped += 1
            logger.warning("user {}: {}", user_id, end.reason)
        self._remember_end(user_id, end.reason)
        if session is not None:
            await self._supervisor.stop(session)
        await self._stop_link(user_id)

    async def _reap_unattended_sessions(self) -> None:
        """Run until cancelled: queue the end of each session that has had no
        StreamAudio consumer for idle_session_ttl seconds."""
        ttl = self._settings.idle_session_ttl
        while True:
            await trio.sleep(max(0.2, min(ttl / 10, 5.0)))
            self._queue_reaps(ttl)
            self._forget_old_ends()

    def _queue_reaps(self, ttl: float) -> None:
        # A method of its own, so no session stays referenced from the
        # sleeping loop's locals after it is gone.
        now = trio.current_time()
        for user_id, session in list(self._sessions.items()):
            line = session.actor.line
            if line.stream_attached:
                line.unattended_since = None
            elif line.unattended_since is None:
                line.unattended_since = now
            elif now - line.unattended_since >= ttl and not line.reap_queued:
                line.reap_queued = True
                self._enqueue(_EndUser(user_id, session, f"reaped: no StreamAudio consumer for {ttl:g} s "
                                                          f"(the cloud went away without LeaveRoom?)", "reaped"))

    def _on_exit(self, child: Child, crash: BaseException | None) -> None:
        """A session or a link is gone for good: stopped (by us: no longer in
        _sessions or _links), given up on, or ended by itself. What ended by
        itself takes the rest of the user's incarnation with it, in the
        user's command order; GetStatus says why at once."""
        actor = child.actor
        if isinstance(actor, SdkWorker):
            if child.given_up is not None and child.policy.escalate:
                self._lose_every_session(child)
            return  # else restarted by its policy
        user_id = actor.user_id
        if isinstance(actor, RoomLink):
            actor.line.close()
            if self._links.get(user_id) is not child:
                return
            why = (f"the LiveKit link crashed: {child.last_error}" if crash is not None
                   else actor.line.last_disconnect_reason or "the LiveKit link ended; no reason was recorded")
        elif self._sessions.get(user_id) is child and crash is not None:
            self._given_up += 1
            why = f"the session crashed and was given up on after {child.restarts} restarts: {child.last_error}"
            logger.error("user {}: {}", user_id, why)
        else:
            return  # stopped by us, or ended by its link, whose end is queued
        self._remember_end(user_id, why)
        self._enqueue(_EndUser(user_id, child, why, "given_up" if crash is not None else None))

    def _lose_every_session(self, worker: Child) -> None:
        """``worker`` was given up on: its escalation (RestartPolicy.escalate)
        stops this supervisor, every session with it, in the shutdown order.
        Each stream must then end UNAVAILABLE, not OK, so the cloud joins its
        user again. That is what losing a session means to the cloud, not to
        the runtime, which only knows that children stop: so the lines are
        marked here, before the runtime stops the links that end them."""
        for link in self._links.values():
            link.actor.line.mark_lost(f"the bridge lost its sessions ({worker.name} was given up on); "
                                      "call JoinRoom again")

    # -- what GetStatus says of a session that ended ---------------------------

    def _remember_end(self, user_id: str, why: str) -> None:
        self._ended[user_id] = (trio.current_time(), int(time.time() * 1000), why)

    def _forget_old_ends(self) -> None:
        oldest = trio.current_time() - self._settings.ended_session_memory
        self._ended = {user: ended for user, ended in self._ended.items() if ended[0] >= oldest}

    def _ended_status(self, user_id: str) -> SessionStatus | None:
        ended = self._ended.get(user_id)
        if ended is None:
            return None
        return SessionStatus.disconnected(at_ms=ended[1], reason=ended[2])

    # -- questions for one session -------------------------------------------

    async def _count_worker_objects(self, message: CountWorkerObjects) -> None:
        try:
            message.reply.send(await self._hosts.count_worker_objects())
        except (WorkerGone, WorkerError) as error:
            message.reply.fail(error)

    def _serving(self, user_id: str) -> bool:
        session = self._sessions.get(user_id)
        return session is not None and not session.done.is_set()

    def _forward_to_session(self, message: GetStatus | AttachStream | Play | StopPlayback | Fault) -> None:
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


