"""The hold a StreamAudio call has on a user session while it is its consumer."""

from __future__ import annotations

import dataclasses

import trio

from .mic_audio import DropOldestBuffer


@dataclasses.dataclass(frozen=True)
class MicChunk:
    pcm: bytes
    timestamp_ms: int


@dataclasses.dataclass(frozen=True)
class CloudChunk:
    """Audio the cloud sent for publishing into the room."""

    pcm: bytes
    sample_rate: int
    channels: int
    track_id: int


class StreamRefused(Exception):
    """The session ended the stream because of what the client sent."""


class StreamLease:
    """One StreamAudio call's right to a session's audio, until the session ends it.

    The call runs inside ``scope``; the session cancels that scope when a newer
    stream replaces this one, or when the session itself ends, so the call
    returns cleanly. ``refusal`` says why, when the session ended the stream
    because of bad input. The call sets ``released`` once it has stopped
    touching the session, which lets the session's teardown wait for it.
    """

    def __init__(self, mic: DropOldestBuffer[MicChunk], publish: trio.MemorySendChannel[CloudChunk]) -> None:
        self.mic = mic
        self.publish = publish
        self.scope = trio.CancelScope()
        self.released = trio.Event()
        self.refusal: str | None = None

    @property
    def active(self) -> bool:
        return not self.released.is_set()

    def end(self) -> None:
        self.scope.cancel()

    def refuse(self, why: str) -> None:
        if self.refusal is None:
            self.refusal = why
        self.scope.cancel()
