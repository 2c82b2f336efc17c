"""How many LiveKit connects run at once, set by whom they would hurt.

While a room connects, the SDK delivers the packets of the rooms already
connected late: all rooms of a process share libwebrtc's signaling thread
and the SDK core's workers, which a connect blocks. Measured with the ladder
(50 users streaming while 50 more join, 2 cores), the streaming users' p99
was 4.6 s with every connect in flight and 252 ms with two. But a deploy,
where every user is new and nobody streams yet, only waits for the slots.

So connects are admitted like a congestion window (additive increase,
multiplicative decrease, slow start), by :func:`next_window`:
- while no user streams, up to the ceiling (BRIDGE_MAX_CONCURRENT_CONNECTS);
- while users stream, the window halves (at least one) when their packets
  came late, grows by one when it was full and they came on time, and goes
  back to ``start`` when it was not full: a storm is let in cautiously, and
  widened only while nobody suffers.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable

import trio


@dataclasses.dataclass(frozen=True)
class AdmissionRule:
    """The window's bounds and what counts as late, as data."""

    #: Connects in flight at most (BRIDGE_MAX_CONCURRENT_CONNECTS).
    ceiling: int
    #: The window a storm meets while users stream (at most the ceiling).
    start: int = 2
    #: Seconds past a streaming link's usual packet spacing that count as late
    #: (0.1 let storms hold the streaming users' p99 near 100 ms; see room_hosts).
    late: float = 0.05
    #: Seconds under which packets count as on time (between the two: hold).
    on_time: float = 0.02
    #: How often the window is set, in seconds.
    interval: float = 0.1


def next_window(window: int, rule: AdmissionRule, *, worst_delay: float | None, was_full: bool) -> int:
    """The window after an interval in which the streaming users' packets
    came at most ``worst_delay`` seconds late (None: nobody streamed), the
    window being full at its end (``was_full``: every slot taken, or a
    connect waiting) or not."""
    if worst_delay is None:
        return rule.ceiling
    if worst_delay > rule.late:
        return max(1, window // 2)
    if not was_full:
        return min(window, rule.start, rule.ceiling)
    if worst_delay < rule.on_time:
        return min(rule.ceiling, window + 1)
    return min(window, rule.ceiling)


class ConnectAdmission:
    """The connect slots (``slots``, what joined_room takes), kept at the
    window by :meth:`run`."""

    def __init__(self, rule: AdmissionRule) -> None:
        self.rule = rule
        self.slots = trio.CapacityLimiter(rule.ceiling)
        self.halvings = 0

    @property
    def window(self) -> int:
        return int(self.slots.total_tokens)

    async def run(self, delays: Callable[[float], Iterable[float | None]]) -> None:
        """Set the window every interval until cancelled. ``delays(now)``
        (``now``: time.monotonic()) gives each link's lateness since it was
        last asked (None for a link that does not stream)."""
        while True:
            await trio.sleep(self.rule.interval)
            late = [delay for delay in delays(time.monotonic()) if delay is not None]
            statistics = self.slots.statistics()
            full = statistics.borrowed_tokens >= statistics.total_tokens or statistics.tasks_waiting > 0
            worst = max(late) if late else None
            if worst is not None and worst > self.rule.late:
                self.halvings += 1
            window = next_window(self.window, self.rule, worst_delay=worst, was_full=full)
            self.slots.total_tokens = window

    def counters(self) -> dict[str, int]:
        statistics = self.slots.statistics()
        return {"connect_window": self.window, "connects_in_flight": statistics.borrowed_tokens,
                "connects_waiting": statistics.tasks_waiting, "connect_window_halvings": self.halvings}
