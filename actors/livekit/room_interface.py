"""What the bridge's actors use of a joined LiveKit room, wherever the SDK runs.

A room host joins rooms: the SDK in this process (``sdk_room.SdkHost``) or in
an SDK worker process (``actors/sdk_workers``). Sessions and links see only
these interfaces, so where a user's room lives is the session supervisor's
choice (placement) and nobody else's concern.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Protocol

from .event_filter import DataCallback

#: on_event(name, detail), in the Trio thread: "disconnected" (detail: the
#: reason's name), "reconnecting" and "reconnected" (detail: ""), and
#: "participants" when one joined or left (remote_identities has changed).
EventCallback = Callable[[str, str], None]


class AudioOutput(Protocol):
    """One published audio track and the source that feeds it."""

    sid: str
    sample_rate: int
    channels: int

    async def wait_for_subscription(self) -> None:
        """Return once someone in the room has subscribed to the track."""

    async def capture(self, pcm: bytes) -> None:
        """Queue PCM16 frames (``channels`` interleaved), waiting while the
        source's queue is full: the caller is paced in real time.

        Raises:
            Exception: the SDK refused the frame (e.g. the room is reconnecting).
        """

    @property
    def queued_seconds(self) -> float:
        """Audio queued and not yet sent."""

    def clear(self) -> None:
        """Drop what is queued and not yet sent: the sound stops at once."""

    async def unpublish(self) -> None:
        """Take the track out of the room.

        Raises:
            Exception: the SDK could not (e.g. the room was left meanwhile).
        """

    async def close(self) -> None:
        """Release the source; the track carries nothing more."""


class JoinedRoom(Protocol):
    """A connected room, as a session and its link use it."""

    @property
    def identity(self) -> str:
        """The bridge's participant identity in the room."""

    def connected(self) -> bool:
        """Connected now, with no SDK reconnect under way."""

    def remote_identities(self) -> Iterable[str]:
        """The other participants LiveKit has announced."""

    async def publish_audio(self, name: str, sample_rate: int, channels: int, queue_ms: int) -> AudioOutput:
        """Publish an audio track named ``name`` whose source queues at most ``queue_ms``.

        Raises:
            Exception: the SDK could not publish it.
        """

    async def simulate(self, scenario: str) -> None:
        """Start the SDK's fault scenario (chaos testing) and return; it plays out in the background."""


class RoomHost(Protocol):
    """Where rooms are joined: this process's SDK, or a worker process's."""

    name: str

    def open_room(self, url: str, token: str, *, connect_timeout: float, teardown_timeout: float,
                  on_data: DataCallback, on_event: EventCallback
                  ) -> contextlib.AbstractAsyncContextManager[JoinedRoom]:
        """Join the room at ``url`` with ``token``; on exit, for any reason,
        its tracks are unpublished and it is left (see room.joined_room).

        Raises:
            RoomConnectError: the join failed; nothing is left joined.
        """
