"""A user's LiveKit connection, as an actor that sessions borrow.

The link joins the user's room, keeps it joined (rejoining when LiveKit drops
it, while its token is valid) and takes the phone's microphone packets into
the user's UserLine. Sessions do not own the room: the session supervisor
lends the link to one session at a time, and a JoinRoom that replaces a
session whose link is healthy and names the same room hands the same link to
the new session (adoption) instead of leaving and rejoining the room. A cloud
restart then costs no WebRTC connect, and what the phone said while the cloud
was away waits in the line for the new StreamAudio.

It guarantees:
- one borrower at a time: :meth:`RoomLink.borrow` refuses a second one, and
  the supervisor lends the link to a new session only after the old one's
  whole teardown (its stream ended, its tracks unpublished);
- a borrower's block is cancelled as soon as the room it holds is lost, and
  the next borrow waits for the rejoined room;
- cancelled, the link leaves the room (tracks unpublished, disconnected)
  before it returns;
- it returns by itself once it will not rejoin (LiveKit ended the
  participant, or the token expired): the user's session ends with it.

When it adopts, and when it rejoins instead, is :meth:`RoomLink.adoption_refusal`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import trio
from loguru import logger

from ..livekit.room_interface import JoinedRoom, RoomHost
from ..livekit.token import UnreadableToken, read_claims, token_expiry
from ..operations.metrics import MIC_DROPPED, MIC_FFI_TO_TRIO, MIC_LOST, MIC_RECEIVED, MIC_WORKER_HOP
from ..operations.settings import BridgeSettings
from ..runtime import Actor
from .messages import Join, Joined, SessionStatus
from .mic_audio import pcm_from_packet
from .stream_lease import MicChunk
from .user_line import UserLine

#: Disconnect reasons after which the link does not rejoin: LiveKit or an
#: operator wants this participant gone, or another connection took over its
#: identity.
FINAL_DISCONNECTS = frozenset({"DUPLICATE_IDENTITY", "PARTICIPANT_REMOVED", "ROOM_DELETED", "ROOM_CLOSED"})
#: A link whose last packet came longer ago than this (s) does not stream.
STREAMING_WITHIN = 2.0


def now_ms() -> int:
    return int(time.time() * 1000)


class LinkEnded(Exception):
    """The link will not rejoin; the message says why."""


class LinkBusy(RuntimeError):
    """A second session tried to borrow a link that is lent (a bug: the
    supervisor lends a link only after the last borrower's teardown)."""


@dataclasses.dataclass(frozen=True)
class LentRoom:
    """A connected room, lent to a session until ``lost`` is set."""

    room: JoinedRoom
    lost: trio.Event


class RoomLink(Actor):
    """One user's LiveKit connection (see the module's docstring)."""

    #: It takes no messages: its owner, the session supervisor, calls adopt().
    mailbox_capacity = 1

    def __init__(self, join: Join, settings: BridgeSettings, line: UserLine, host: RoomHost) -> None:
        """``host`` joins the rooms: this process's SDK or an SDK worker's
        (it bounds the connects in flight: see connect_admission.py;
        ``take_delay`` tells how late this link's packets come, which sets them)."""
        super().__init__(f"link:{join.user_id}")
        self.user_id = join.user_id
        self.line = line
        self.host = host
        self._join = join
        self._settings = settings
        self._room: JoinedRoom | None = None
        #: The lent room's loss; replaced for each room.
        self._room_lost = trio.Event()
        #: Set (and replaced) whenever a room connects, and when the link ends.
        self._room_changed = trio.Event()
        self._ended: str | None = None
        #: Whether the first join succeeded (a failure before is the JoinRoom's, after is a rejoin's).
        self._has_joined = False
        self._borrowed = False
        #: The tasks that live as long as the current room (None between rooms).
        self._room_tasks: trio.Nursery | None = None
        #: Connection interruptions the SDK reported, numbered so a grace knows its own.
        self._interruptions = 0
        #: connecting, connected, reconnecting (the SDK), disconnected, leaving, rejoining
        self.state = "connecting"
        #: Rooms joined again after a loss.
        self.rejoins = 0
        #: Joins begun, numbering the rooms so that a room's late events are told apart.
        self._rooms_joined = 0
        self._adoptions = 0
        #: trio.current_time() of the last adoption (None before any).
        self._adopted_at: float | None = None
        self._token_expires_at = token_expiry(join.token)
        #: time.monotonic() of the last microphone packet, the usual spacing
        #: of packets (a moving average), and the worst wait from the SDK's
        #: thread to Trio since take_delay last asked.
        self._last_packet_at = -math.inf
        self._spacing = 0.1
        self._worst_lag = 0.0

    # -- lifecycle ---------------------------------------------------------

    def log_fields(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "room": self._join.room_name}

    async def run(self, task_status: trio.TaskStatus[Joined] = trio.TASK_STATUS_IGNORED) -> None:
        """Report the first join's Joined once connected (raising RoomConnectError
        if that join fails), then keep the room until cancelled or until it
        will not rejoin."""
        try:
            await self._stay_in_room(task_status)
        finally:
            if self._ended is None:
                self._ended = "the LiveKit link was stopped"
            self._room_changed.set()  # a borrower waiting for a room learns that none comes

    async def _stay_in_room(self, task_status: trio.TaskStatus[Joined]) -> None:
        rejoin_backoff = self._settings.rejoin_backoff
        failures = 0
        while True:
            try:
                await self._hold_room(task_status if not self._has_joined else trio.TASK_STATUS_IGNORED)
                failures = 0
            except Exception as error:
                if not self._has_joined:
                    raise  # the JoinRoom itself failed
                failures += 1
                self.line.record_disconnect(now_ms(), f"rejoining failed: {error}")
            reason = self.line.last_disconnect_reason
            if reason in FINAL_DISCONNECTS:
                self._end(f"LiveKit ended the session ({reason}); not rejoining")
                return
            if self._token_expires_at is not None and time.time() >= self._token_expires_at:
                self.line.record_disconnect(now_ms(), f"{reason}; the token has expired, so the session ends")
                self._end("the token expired; not rejoining")
                return
            self.state = "rejoining"
            delay = rejoin_backoff.delay(failures + 1)
            logger.info("user {}: rejoining LiveKit in {:.2f} s ({})", self.user_id, delay, reason)
            await trio.sleep(delay)
            self.rejoins += 1

    def _end(self, why: str) -> None:
        logger.warning("user {}: {}", self.user_id, why)
        self._ended = why

    async def _hold_room(self, task_status: trio.TaskStatus[Joined]) -> None:
        """Join the room, lend it out until it is lost, then leave it."""
        join = self._join
        self._room_lost = trio.Event()
        self.state = "connecting"
        # A room left in the background may report its end later, while the
        # next room connects: only the current room's events count.
        self._rooms_joined += 1
        this_room = self._rooms_joined

        def on_event(name: str, detail: str) -> None:
            if this_room == self._rooms_joined:
                # (A worker process's events arrive in its connection's task, not ours.)
                with logger.contextualize(**self.log_fields()):
                    self._on_room_event(name, detail)

        async with self._saying_when_left(), self.host.open_room(
            join.livekit_url,
            join.token,
            connect_timeout=self._settings.connect_timeout,
            teardown_timeout=self._settings.teardown_timeout,
            on_data=self._on_data,
            on_event=on_event,
        ) as room:
            self.state = "connected"
            logger.info("user {} joined room {} as {} (SDK: {})", join.user_id, join.room_name, room.identity,
                        self.host.name)
            try:
                async with trio.open_nursery() as nursery:
                    self._room_tasks, self._room = nursery, room
                    self._announce_room()
                    self._has_joined = True
                    task_status.started(self.joined())
                    await self._room_lost.wait()
                    nursery.cancel_scope.cancel()
            finally:
                self._room_tasks = self._room = None
                self._room_lost.set()  # a borrower still holding it lets go
                self.state = "leaving"  # our own leave follows: its 'disconnected' is no loss

    @contextlib.asynccontextmanager
    async def _saying_when_left(self) -> AsyncIterator[None]:
        """Logs that the room was left, once the leave of a room held is over
        (or goes on in the background: see joined_room)."""
        try:
            yield
        finally:
            if self.state == "leaving":  # (set once a joined room is let go)
                logger.info("user {} left room {} (SDK: {})", self.user_id, self._join.room_name, self.host.name)

    def _announce_room(self) -> None:
        changed, self._room_changed = self._room_changed, trio.Event()
        changed.set()

    # -- lending the room ------------------------------------------------------

    @contextlib.asynccontextmanager
    async def borrow(self) -> AsyncIterator[None]:
        """Hold the link for one session; see ``next_room``.

        Raises:
            LinkBusy: another session holds it.
        """
        if self._borrowed:
            raise LinkBusy(f"{self.name} is already lent to a session")
        self._borrowed = True
        try:
            yield
        finally:
            self._borrowed = False

    async def next_room(self) -> LentRoom:
        """The connected room, waiting while the link (re)joins; its ``lost``
        is set when LiveKit drops it or the link leaves it.

        Raises:
            LinkEnded: the link will not rejoin (or was stopped).
        """
        while True:
            if self._ended is not None:
                raise LinkEnded(self._ended)
            if self._room is not None and not self._room_lost.is_set():
                return LentRoom(self._room, self._room_lost)
            await self._room_changed.wait()

    # -- adoption ----------------------------------------------------------------

    def adoption_refusal(self, join: Join) -> str | None:
        """Why the link cannot take over ``join``, which replaces its session
        (None: it can). It adopts only a healthy link for the same target:
        its room connected with no SDK interruption pending, the same LiveKit
        URL and room, a token for the same participant identity, neither
        token expired, and no adoption within adoption_window seconds (a
        cloud that calls JoinRoom again so soon saw something wrong)."""
        room = self._room
        if room is None or self.state != "connected" or not room.connected():
            return f"the LiveKit link is {self.state}"
        if join.livekit_url != self._join.livekit_url:
            return f"another LiveKit URL ({join.livekit_url!r}, the link's is {self._join.livekit_url!r})"
        if join.room_name != self._join.room_name:
            return f"another room ({join.room_name!r}, the link's is {self._join.room_name!r})"
        try:
            claims = read_claims(join.token)
        except UnreadableToken as error:
            return f"the token cannot be read ({error})"
        identity = room.identity
        if claims.identity != identity:
            return f"another identity ({claims.identity!r}, the link's is {identity!r})"
        now = time.time()
        if claims.expires_at is not None and now >= claims.expires_at:
            return "the new token has expired"
        if self._token_expires_at is not None and now >= self._token_expires_at:
            return "the link's token has expired"
        window = self._settings.adoption_rejoin_window
        if self._adopted_at is not None and trio.current_time() - self._adopted_at < window:
            return f"another JoinRoom within {window:g} s of the last adoption"
        return None

    def adopt(self, join: Join) -> Joined | str:
        """Take over ``join`` if ``adoption_refusal`` allows (its token and
        target identity from now on, for rejoins too); the Joined to answer
        it with, or why not."""
        refusal = self.adoption_refusal(join)
        if refusal is not None:
            return refusal
        self._join = join
        self._token_expires_at = token_expiry(join.token)
        self._adoptions += 1
        self._adopted_at = trio.current_time()
        assert self._room_tasks is not None  # connected
        self._room_tasks.start_soon(self._rejoin_if_silent, self.line.packets_received)
        return self.joined()

    async def _rejoin_if_silent(self, packets_before: int) -> None:
        """After an adoption: if the phone is in the room but not one of its
        packets arrives within adoption_silence seconds, the link only looked
        healthy; rejoin as after a drop."""
        silence = self._settings.adoption_silence
        await trio.sleep(silence)
        if self.line.packets_received == packets_before and self._target_present():
            self._room_gone(f"ADOPTED_LINK_SILENT (the phone is in the room, but no packet arrived within "
                            f"{silence:g} s of the adoption; rejoining)")

    def _target_present(self) -> bool:
        target = self._join.target_identity
        room = self._room
        return room is not None and target in room.remote_identities()

    # -- what the session and GetStatus read ------------------------------------

    def joined(self) -> Joined:
        room = self._room
        return Joined(True, participant_id=room.identity if room is not None else "",
                      participant_count=self.participant_count())

    def take_delay(self, now: float) -> float | None:
        """How late this link's packets came since the last call, in seconds
        (the longer of: past their usual spacing, the oldest now; and the
        SDK-to-Trio wait); None when none came within STREAMING_WITHIN."""
        since = now - self._last_packet_at
        if since > STREAMING_WITHIN:
            return None
        delay, self._worst_lag = max(self._worst_lag, since - self._spacing), 0.0
        return delay

    def connected(self) -> bool:
        return self._room is not None and self._room.connected()

    def participant_count(self) -> int:
        # The room keeps this current itself (the SDK updates it before emitting events).
        return len(list(self._room.remote_identities())) + 1 if self._room is not None else 0

    def status(self) -> SessionStatus:
        room = self._room
        if room is None:
            return self.line.disconnected_status()
        return SessionStatus(
            connected=self.connected(),
            participant_id=room.identity,
            participant_count=self.participant_count(),
            last_disconnect_at_ms=self.line.last_disconnect_at_ms,
            last_disconnect_reason=self.line.last_disconnect_reason,
        )

    # -- LiveKit's events (run in the Trio thread) -----------------------------

    def _on_room_event(self, name: str, detail: str) -> None:
        if name == "disconnected":
            self._on_disconnected(detail)
        elif name == "reconnecting":
            self._on_reconnecting()
        elif name == "reconnected":
            self._on_reconnected()

    def _on_disconnected(self, reason: str) -> None:
        if self.state != "leaving":
            self._room_gone(reason)

    def _room_gone(self, name: str) -> None:
        self.line.record_disconnect(now_ms(), name)
        self.state = "disconnected"
        logger.warning("user {}: LiveKit room disconnected ({})", self.user_id, name)
        self._room_lost.set()

    def _on_reconnecting(self) -> None:
        self.state = "reconnecting"
        self.line.record_disconnect(now_ms(), "RECONNECTING (the SDK is restoring the connection)")
        logger.info("user {}: LiveKit connection interrupted; the SDK is reconnecting", self.user_id)
        self._interruptions += 1
        if self._room_tasks is not None:
            self._room_tasks.start_soon(self._rejoin_unless_back, self._interruptions)

    def _on_reconnected(self) -> None:
        if self.state == "leaving":  # our own leave is under way: it stays a leave
            return
        self.state = "connected"
        logger.info("user {}: LiveKit connection back", self.user_id)

    async def _rejoin_unless_back(self, interruption: int) -> None:
        """Give the SDK sdk_reconnect_grace to restore the connection after
        ``interruption``; if it is still reconnecting from that same
        interruption then, give up on it and rejoin as after a drop.

        The SDK resumes a brief interruption quickly, but between attempts
        at a full reconnect it waits up to 7 s (growing with each), so after
        a LiveKit server comes back its rooms return up to 7 s late; ours
        rejoin within rejoin_backoff_max."""
        grace = self._settings.sdk_reconnect_grace
        await trio.sleep(grace)
        if self.state == "reconnecting" and self._interruptions == interruption:
            self._room_gone(f"SDK_RECONNECT_SLOW (not back within {grace:g} s; rejoining)")

    # -- faults (chaos testing) ---------------------------------------------------

    def drop_room(self) -> None:
        """As when LiveKit's 'disconnected' arrives: the link leaves the room
        and rejoins. (The SDK's own losses are tested by killing
        livekit-server; a local disconnect does not always report one.)"""
        if self._room is not None:
            self._room_gone("DROPPED_BY_FAULT_INJECTION")

    async def simulate(self, scenario_name: str) -> None:
        """Run the SDK's own fault scenario on the room, in the background."""
        if self._room is not None:
            await self._room.simulate(scenario_name)

    # -- microphone: LiveKit -> the user's line -----------------------------------

    def _on_data(self, sender: str, payload: bytes, received_at: float, forwarded_at: float | None = None) -> None:
        """Runs for every data packet of this room: keep it cheap.

        Packets of a named participant other than the target phone are
        ignored. Packets whose sender the SDK cannot name ("") are kept and
        counted: the SDK names only participants LiveKit has announced, and
        LiveKit announces a participant that publishes no tracks (the phone,
        which sends its audio as data) in batches every 3 s, so a reconnected
        phone's first seconds of audio arrive unnamed.
        """
        line = self.line
        target = self._join.target_identity
        if sender and target and sender != target:
            line.packets_ignored += 1
            return
        if not sender:
            line.packets_unnamed += 1
        line.packets_received += 1
        MIC_RECEIVED.inc()
        sequence, pcm = pcm_from_packet(payload)
        if sequence is not None and (lost := line.sequence.observe(sequence)):
            MIC_LOST.inc(lost)
        queued_at = time.monotonic()
        self._spacing += (min(queued_at - self._last_packet_at, STREAMING_WITHIN) - self._spacing) * 0.1
        self._last_packet_at = queued_at
        lag = queued_at - received_at
        if lag > self._worst_lag:
            self._worst_lag = lag
        if not pcm:
            line.packets_empty += 1
            return
        if forwarded_at is None:
            MIC_FFI_TO_TRIO.observe(lag)
        else:  # the SDK's thread to the worker's Trio, then the worker's Trio to this one
            MIC_FFI_TO_TRIO.observe(forwarded_at - received_at)
            MIC_WORKER_HOP.observe(queued_at - forwarded_at)
        if line.mic.push(MicChunk(pcm, now_ms(), queued_at)):
            MIC_DROPPED.inc()

    # -- observability -----------------------------------------------------

    def details(self) -> dict[str, Any]:
        return {"link": self.state, "room": self._join.room_name, "sdk": self.host.name,
                "last_disconnect_reason": self.line.last_disconnect_reason}

    def counters(self) -> dict[str, int]:
        return {"connected": int(self.connected()), "participant_count": self.participant_count(),
                "rejoins": self.rejoins, "adoptions": self._adoptions, "lent": int(self._borrowed)}

