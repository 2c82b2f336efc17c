"""Where the users' rooms are joined, and which host a new link goes to.

A host is this process's SDK, or (BRIDGE_SDK_WORKERS, by default one per
core) one of the SDK worker processes. The hosts share one connect admission
(connect_admission.py), set by the lateness of every streaming link's
packets: the worker processes run on the same cores, so a storm's connects
in one of them delay the packets of the others too. Measured with the ladder
(20 users streaming while 20 join, 2 cores, 2 workers; four runs each on the
Unix socket, alternating), the streaming users' p99 was 65-197 ms with a
window of each worker's own and 38-90 ms with one shared window and what
counts as late tightened to 50 ms; the storm's 20 joins took 1.1-2.2 s and
1.3-2.4 s (bench/reports/storm-window-2026-12-06.md).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import trio

from ..livekit.room_interface import RoomHost
from ..livekit.sdk_room import SdkHost
from ..operations.settings import BridgeSettings
from ..runtime import Backoff, Restart, RestartPolicy, Supervisor
from ..sdk_workers.worker import SdkWorker, WorkerSlot
from .connect_admission import AdmissionRule, ConnectAdmission
from .room_link import RoomLink

#: A worker process that dies, even before it was first ready, is started
#: again at once, then after up to 5 s; one that dies more than 10 times a
#: minute is given up on, and that takes the session supervisor down (its own
#: supervisor starts it anew, every worker with it).
WORKER_POLICY = RestartPolicy(restart=Restart.PERMANENT, max_restarts=10, within_seconds=60,
                              backoff=Backoff(initial=0.2, maximum=5.0), escalate=True,
                              restarts_failed_start=True)


class RoomHosts:
    """The hosts of one session supervisor, and the connect admission they share."""

    def __init__(self, settings: BridgeSettings) -> None:
        self._settings = settings
        self._admission = ConnectAdmission(AdmissionRule(ceiling=settings.max_concurrent_connects))
        slots = self._admission.slots
        self._hosts: list[RoomHost] = (
            [WorkerSlot(index, slots) for index in range(1, settings.sdk_worker_processes + 1)]
            if settings.sdk_worker_processes else [SdkHost(connect_slots=slots)])
        #: Links placed on each host that are still joining (not among the links yet).
        self._joining: collections.Counter[RoomHost] = collections.Counter()

    def start(self, supervisor: Supervisor, nursery: trio.Nursery, links: Callable[[], Iterable[RoomLink]]) -> None:
        """Run the connect admission in ``nursery`` (``links()``: the links
        now, whose packets set it), and start the worker processes under
        ``supervisor``, side by side and in the background: a join placed on
        a worker that is not ready yet waits for it (WorkerSlot.open_room),
        so the front door can serve at once. A worker given up on before it
        ever started fails ``nursery`` (ChildGivenUp)."""
        nursery.start_soon(self._admission.run, lambda now: [link.take_delay(now) for link in links()])
        for host in self._hosts:
            if isinstance(host, WorkerSlot):
                nursery.start_soon(self._start_worker, supervisor, host)

    async def _start_worker(self, supervisor: Supervisor, slot: WorkerSlot) -> None:
        await supervisor.start(lambda: SdkWorker(slot, self._settings), policy=WORKER_POLICY, group="workers")

    @contextlib.contextmanager
    def placing(self, links: Iterable[RoomLink]) -> Iterator[RoomHost]:
        """The host for a new link, counted as holding it while the block
        runs (the link joins there, then is among ``links``): the one that
        holds the fewest, among those whose SDK runs (a worker being
        restarted is passed over while another runs)."""
        held = collections.Counter(link.host for link in links) + self._joining
        running = [host for host in self._hosts if not isinstance(host, WorkerSlot) or host.connection is not None]
        host = min(running or self._hosts, key=lambda host: held[host])
        self._joining[host] += 1
        try:
            yield host
        finally:
            self._joining[host] -= 1

    def counters(self) -> dict[str, int]:
        """The connect admission's counters."""
        return self._admission.counters()

    async def count_worker_objects(self) -> dict[str, dict[str, Any]]:
        """The leak check of each running worker process, by its name (one
        being restarted is left out).

        Raises:
            WorkerGone, WorkerError: a worker did not answer.
        """
        counts = {}
        for host in self._hosts:
            connection = host.connection if isinstance(host, WorkerSlot) else None
            if connection is not None:
                counts[host.name] = await connection.request("live_objects")
        return counts

