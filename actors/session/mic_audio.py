"""The phone's microphone audio as it arrives in LiveKit data packets.

The phone sends lossy data packets: one sequence byte, then PCM16LE at
16 kHz mono. This module turns packets into PCM, counts what was lost on the
way; the session holds the PCM in a bounded actors.runtime.DropOldestBuffer.
"""

from __future__ import annotations

import dataclasses

MIC_SAMPLE_RATE = 16_000
MIC_CHANNELS = 1


def pcm_from_packet(payload: bytes) -> tuple[int | None, bytes]:
    """Split a phone packet into (sequence number or None, PCM16 bytes).

    A packet of odd length starts with the sequence byte. PCM16 samples are two
    bytes each, so what remains is even; an even packet carries no sequence
    byte and is all PCM. The PCM may be empty (a packet of 0 or 1 bytes).
    """
    if len(payload) % 2 == 1:
        return payload[0], payload[1:]
    return None, payload


@dataclasses.dataclass
class SequenceTracker:
    """Counts packets lost between consecutive sequence bytes (mod 256).

    A packet whose sequence number lies behind the last one (a late or
    duplicated packet on the lossy channel) is counted as out of order, not as
    a loss of most of the sequence space.
    """

    lost: int = 0
    out_of_order: int = 0
    _last: int | None = None

    def observe(self, sequence: int) -> int:
        """Take the next packet's sequence number; the packets found lost before it."""
        gap = 0
        if self._last is not None:
            gap = (sequence - self._last - 1) % 256
            if gap >= 128:
                self.out_of_order += 1
                return 0
            self.lost += gap
        self._last = sequence
        return gap
