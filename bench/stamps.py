"""The stamp a bench phone puts at the start of each packet's PCM, and the
record a receiver keeps of the stamped packets it got."""

from __future__ import annotations

import collections
import struct
import time

#: monotonic_ns of the send, the user's index in its phone process, a 16-bit packet counter.
STAMP = struct.Struct("<qHH")


class Arrivals:
    """Per user: (sent_ns, received_ns, counter) of every stamped packet received."""

    def __init__(self) -> None:
        self.by_user: dict[str, list[tuple[int, int, int]]] = collections.defaultdict(list)

    def record(self, user: str, pcm: bytes) -> None:
        received = time.monotonic_ns()
        if len(pcm) >= STAMP.size:
            sent, _index, counter = STAMP.unpack_from(pcm)
            self.by_user[user].append((sent, received, counter))

    def take(self) -> dict[str, list[tuple[int, int, int]]]:
        taken, self.by_user = dict(self.by_user), collections.defaultdict(list)
        return taken
