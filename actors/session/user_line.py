"""A user's audio line to the cloud: what outlives a crashed session.

The session supervisor makes one line per JoinRoom and hands it to every
incarnation of that user's session. A session that crashes leaves the line as
it is, so the session restarted from the same JoinRoom feeds the same
StreamAudio call; a session that is stopped (LeaveRoom, a replacing JoinRoom,
shutdown) ends the stream; the supervisor closes the line when the session is
gone for good.
"""

from __future__ import annotations

import trio

from ..runtime import DropOldestBuffer
from .messages import SessionStatus
from .mic_audio import SequenceTracker
from .stream_lease import CloudChunk, MicChunk, StreamLease


class UserLine:
    def __init__(self, *, mic_buffer_packets: int, publish_buffer_chunks: int) -> None:
        #: The phone's microphone audio, waiting for the cloud's stream (drops the oldest).
        self.mic = DropOldestBuffer[MicChunk](mic_buffer_packets)
        self.sequence = SequenceTracker()
        #: Audio the cloud's stream sends, waiting to be published.
        self.publish_send, self.publish_receive = trio.open_memory_channel[CloudChunk](publish_buffer_chunks)
        self.lease: StreamLease | None = None
        #: Since when (trio time) no StreamAudio consumer has been attached;
        #: kept by the session supervisor's reaper.
        self.unattended_since: float | None = None
        self.reap_queued = False
        self.last_disconnect_at_ms = 0
        self.last_disconnect_reason = ""
        # Counts, kept across incarnations of the session.
        self.packets_received = 0
        self.packets_ignored = 0
        self.packets_unnamed = 0
        self.packets_empty = 0
        self.chunks_published = 0
        self.chunks_failed = 0

    def record_disconnect(self, at_ms: int, reason: str) -> None:
        self.last_disconnect_at_ms = at_ms
        self.last_disconnect_reason = reason

    def disconnected_status(self) -> SessionStatus:
        """What GetStatus says while no room is connected."""
        return SessionStatus.disconnected(self.last_disconnect_at_ms, self.last_disconnect_reason)

    def attach_stream(self) -> StreamLease:
        """A lease for a new StreamAudio call; the one it replaces ends."""
        if self.lease is not None:
            self.lease.end()
        self.lease = StreamLease(self.mic, self.publish_send)
        return self.lease

    @property
    def stream_attached(self) -> bool:
        return self.lease is not None and self.lease.active

    async def end_stream(self, timeout: float) -> None:
        """End the current StreamAudio call, drop the cloud audio it sent that
        is not published yet (a session that adopts the line plays only its
        own stream's), and wait (at most ``timeout`` s, shielded) until the
        call no longer touches the line."""
        lease, self.lease = self.lease, None
        if lease is None:
            return
        lease.end()
        while True:
            try:
                self.publish_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        if not lease.claimed:
            return
        with trio.move_on_after(timeout) as waited:
            waited.shield = True
            await lease.released.wait()

    def mark_lost(self, why: str) -> None:
        """The bridge is losing this session (``why``): its stream, when it
        ends, ends UNAVAILABLE, so the cloud joins the user again."""
        if self.lease is not None:
            self.lease.lost = why

    def close(self) -> None:
        """The session is gone for good: end the stream and refuse more audio."""
        if self.lease is not None:
            self.lease.end()
        self.mic.close()
        self.publish_send.close()
        self.publish_receive.close()
