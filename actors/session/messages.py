"""The messages the front door sends to the bridge's actors, and their answers.

Requests carry their own reply slot (see actors.runtime.Request). Answers are
plain data: an RPC handler turns them into protobuf, and no actor state
escapes through them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..runtime import Request


@dataclasses.dataclass(repr=False)
class Join(Request["Joined"]):
    user_id: str
    room_name: str
    token: str
    livekit_url: str
    target_identity: str

    def __repr__(self) -> str:  # the token is a secret: never in logs
        return f"Join(user_id={self.user_id!r}, room_name={self.room_name!r}, livekit_url={self.livekit_url!r})"


@dataclasses.dataclass(frozen=True)
class Joined:
    success: bool
    error: str = ""
    participant_id: str = ""
    participant_count: int = 0


@dataclasses.dataclass
class Leave(Request[str | None]):
    """Answered with None when left, or with why not."""

    user_id: str
    reason: str = ""


@dataclasses.dataclass
class GetStatus(Request["SessionStatus | None"]):
    """Answered with None when the user has no session."""

    user_id: str


@dataclasses.dataclass(frozen=True)
class SessionStatus:
    connected: bool
    participant_id: str
    participant_count: int
    last_disconnect_at_ms: int
    last_disconnect_reason: str

    @classmethod
    def disconnected(cls, at_ms: int, reason: str) -> SessionStatus:
        """A user with no room connected, and when and why it was lost."""
        return cls(connected=False, participant_id="", participant_count=0,
                   last_disconnect_at_ms=at_ms, last_disconnect_reason=reason)


@dataclasses.dataclass
class AttachStream(Request[Any]):
    """Answered with a StreamLease, or None when the user has no session."""

    user_id: str


@dataclasses.dataclass
class GetHealth(Request["Health"]):
    pass


class CountWorkerObjects(Request["dict[str, dict[str, Any]]"]):
    """The leak check of each running SDK worker process, by its name
    (live_objects.py's answer, counted in that process); empty without
    worker processes."""


@dataclasses.dataclass(frozen=True)
class Health:
    active_sessions: int


@dataclasses.dataclass
class Play(Request[Any]):
    """Answered with the playback's PlaybackEvents, with NotPlayable, or with
    None when the user has no session."""

    user_id: str
    request: Any  # PlaybackRequest
    stop_other: bool


class AtCapacity(Exception):
    """A JoinRoom for one more user, refused: the bridge holds its maximum
    of sessions (BRIDGE_MAX_SESSIONS); the message says so."""


@dataclasses.dataclass(frozen=True)
class NotPlayable:
    """The session cannot play now (its room is not connected)."""

    reason: str


@dataclasses.dataclass
class StopPlayback(Request["list[str] | None"]):
    """Answered, once they have stopped, with the request ids of the playbacks
    that matched, or with None when the user has no session.

    ``track_id`` -1 matches every track; a non-empty ``request_id`` matches
    only that playback.
    """

    user_id: str
    request_id: str
    reason: str
    track_id: int


#: What InjectFault can do to an actor (chaos testing).
FAULT_KINDS = ("crash", "hang", "drop-room", "slow-consumer", "leak-check")
#: InjectFault "simulate:<NAME>" runs the livekit SDK's own fault scenario on the session's room.
SIMULATED_SCENARIOS = ("SIGNAL_RECONNECT", "NODE_FAILURE", "SERVER_LEAVE", "MIGRATION", "FULL_RECONNECT",
                       "DISCONNECT_SIGNAL_ON_RESUME")


def is_fault_kind(kind: str) -> bool:
    scenario = kind.removeprefix("simulate:")
    return kind in FAULT_KINDS or (scenario != kind and scenario in SIMULATED_SCENARIOS)


@dataclasses.dataclass
class Fault(Request[str]):
    """Answered with what was done. ``user_id`` names the session; ``seconds``
    is how long a slow consumer stalls."""

    user_id: str
    kind: str
    seconds: float = 5.0
