"""The whole bridge: the session supervisor and the gRPC front door, in one nursery."""

from __future__ import annotations

import dataclasses
import socket

import trio
import trio_asyncio

from . import asyncio_compat
from .grpc.front_door import FrontDoor, serve_front_door
from .livekit.sdk_core import configure_sdk_core
from .operations.log_shipping import ship_logs
from .operations.metrics import count_restart, serve_metrics
from .operations.settings import BridgeSettings
from .runtime import Child, RestartPolicy, open_supervisor
from .session.supervisor import SessionSupervisor


@dataclasses.dataclass(frozen=True)
class RunningBridge:
    #: "host:port" or "unix:/path" the front door listens on.
    address: str
    sessions: Child
    front_door: FrontDoor


async def run_bridge(
    settings: BridgeSettings, *, listener: socket.socket | None = None,
    task_status: trio.TaskStatus[RunningBridge] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the bridge until cancelled; reports a RunningBridge once it serves.

    The front door serves on ``listener`` when given (actors/grpc/listener.py:
    bound before the process imported the rest), else where the settings say.

    Opens the process's one asyncio loop (trio-asyncio) unless the caller
    already runs inside one. On cancellation every user's room is left and
    then their sessions end (streams ended), and then the front door stops
    listening; the log lines still buffered for Better Stack go last (within
    2 s: log_shipping.py), before it returns. For a graceful stop, ``drain``
    the front door first (see bridge_main).
    """
    asyncio_compat.match_asyncio()
    if not settings.sdk_worker_processes:  # (else the SDK runs in the worker processes only)
        configure_sdk_core()
    if trio_asyncio.current_loop.get() is None:
        async with trio_asyncio.open_loop():
            await _run(settings, listener, task_status)
    else:
        await _run(settings, listener, task_status)


async def _run(settings: BridgeSettings, listener: socket.socket | None,
               task_status: trio.TaskStatus[RunningBridge]) -> None:
    with serve_metrics(settings.metrics_port, settings.listen_host):
        async with ship_logs(settings):  # outlives the actors: their last lines go out too
            await _run_actors(settings, listener, task_status)


async def _run_actors(settings: BridgeSettings, listener: socket.socket | None,
                      task_status: trio.TaskStatus[RunningBridge]) -> None:
    async with trio.open_nursery() as nursery:
        # The front door closes last: when the bridge stops, the sessions stop
        # first (rooms left, then their audio streams end) while it still
        # carries the streams' last words (UNAVAILABLE when draining).
        door = trio.CancelScope(shield=True)
        try:
            # Stopping the session supervisor waits as long as its own
            # shutdown order needs (SessionSupervisor.teardown_bound).
            async with open_supervisor(on_restart=count_restart) as root:
                # A crashed session supervisor loses its sessions (they live in its
                # nursery) but comes back clean; the cloud's next JoinRoom recreates them.
                sessions = await root.start(
                    lambda: SessionSupervisor(settings), policy=RestartPolicy(max_restarts=3, within_seconds=60)
                )
                front_door = FrontDoor(sessions, settings, root.describe)
                address = await nursery.start(_serve_front_door_in, door, front_door, settings, listener)
                task_status.started(RunningBridge(address, sessions, front_door))
                await trio.sleep_forever()
        finally:
            door.cancel()


async def _serve_front_door_in(door: trio.CancelScope, front_door: FrontDoor, settings: BridgeSettings,
                               listener: socket.socket | None, task_status: trio.TaskStatus[str]) -> None:
    with door:
        await serve_front_door(front_door, settings, listener=listener, task_status=task_status)
