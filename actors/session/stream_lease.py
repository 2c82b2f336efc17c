"""The hold a StreamAudio call has on a user session while it is its consumer."""

from __future__ import annotations

import dataclasses

import trio

from ..runtime import DropOldestBuffer


@dataclasses.dataclass(frozen=True)
class MicChunk:
    pcm: bytes
    timestamp_ms: int
    #: time.monotonic() when the session queued it for the cloud (for the stage metrics).
    queued_at: float


@dataclasses.dataclass(frozen=True)
class CloudChunk:
    """Audio the cloud sent for publishing into the room, and the stream it came on."""

    pcm: bytes
    sample_rate: int
    channels: int
    track_id: int
    stream: StreamLease = dataclasses.field(repr=False, compare=False)


class StreamLease:
    """One StreamAudio call's right to a session's audio, until the session ends it.

    The call claims the lease, runs inside ``scope`` and sets ``released``
    once it no longer touches the session; the session cancels the scope when
    a newer stream replaces this one or when the session itself ends, so the
    call returns cleanly, and its teardown waits for ``released`` only if the
    lease was claimed (an asker that gave up never claims it). ``refusal``
    says why, when the session ended the stream because of bad input;
    ``lost``, when the bridge lost the session through no wish of the cloud's.
    """

    def __init__(self, mic: DropOldestBuffer[MicChunk], publish: trio.MemorySendChannel[CloudChunk]) -> None:
        self.mic = mic
        self.publish = publish
        self.scope = trio.CancelScope()
        self.claimed = False
        self.released = trio.Event()
        self.refusal: str | None = None
        #: Why the stream is to end UNAVAILABLE (the cloud then joins again), when the bridge lost the session.
        self.lost: str | None = None
        #: Until when (trio.current_time()) the stream's sender holds back: an injected slow consumer.
        self.stalled_until = 0.0

    @property
    def active(self) -> bool:
        return self.claimed and not self.released.is_set()

    def end(self) -> None:
        self.scope.cancel()

    def stall(self, seconds: float) -> None:
        self.stalled_until = trio.current_time() + seconds

    def refuse(self, why: str) -> None:
        if self.refusal is None:
            self.refusal = why
        self.scope.cancel()
