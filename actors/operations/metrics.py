"""The bridge's Prometheus metrics, served on METRICS_PORT when it is set.

Per-packet metrics are pre-labelled children, so the audio path pays one
observe (about a microsecond) per stage and packet, never a label lookup.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import socket
import socketserver
import threading
import wsgiref.simple_server
from collections.abc import Iterator
from typing import Any

import prometheus_client
from loguru import logger

#: Seconds; fine at the low end, where the audio path lives (a stage of a packet is tens of
#: microseconds to a few milliseconds), up to the join-storm stalls.
_STAGE_BUCKETS = (0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
                  0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

MIC_STAGE_SECONDS = prometheus_client.Histogram(
    "bridge_mic_stage_seconds",
    "Time a microphone packet spends in each stage from the SDK's callback to the kernel's socket: ffi_to_trio "
    "(the SDK's callback thread to the Trio thread of the process that holds the room), worker_hop (with SDK "
    "worker processes: from the worker's Trio thread to the bridge's, over their socket), queued (waiting for "
    "the user's StreamAudio sender), grpc_write (through gRPC's write; into asyncio only when it must wait for "
    "the client's flow-control window), to_kernel (until the connection's send buffer has handed it to the "
    "kernel: zero unless the socket was full).",
    ["stage"], buckets=_STAGE_BUCKETS,
)
MIC_FFI_TO_TRIO = MIC_STAGE_SECONDS.labels("ffi_to_trio")
MIC_WORKER_HOP = MIC_STAGE_SECONDS.labels("worker_hop")
MIC_QUEUED = MIC_STAGE_SECONDS.labels("queued")
MIC_GRPC_WRITE = MIC_STAGE_SECONDS.labels("grpc_write")
MIC_TO_KERNEL = MIC_STAGE_SECONDS.labels("to_kernel")

ROOM_CONNECT_SECONDS = prometheus_client.Histogram(
    "bridge_room_connect_seconds",
    "LiveKit room connects: waiting for a connect slot (wait) and the connect itself (connect).",
    ["phase"], buckets=(0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
ROOM_CONNECT_WAIT = ROOM_CONNECT_SECONDS.labels("wait")
ROOM_CONNECT = ROOM_CONNECT_SECONDS.labels("connect")


MIC_PACKETS = prometheus_client.Counter(
    "bridge_mic_packets",
    "Phone microphone packets: received (from LiveKit, the user's phone), forwarded (written to the cloud's "
    "StreamAudio), dropped (the user's buffer was full: the oldest went), lost (sequence gaps: lost before the "
    "bridge, in LiveKit or the network).",
    ["outcome"],
)
MIC_RECEIVED = MIC_PACKETS.labels("received")
MIC_FORWARDED = MIC_PACKETS.labels("forwarded")
MIC_DROPPED = MIC_PACKETS.labels("dropped")
MIC_LOST = MIC_PACKETS.labels("lost")

BUILD = prometheus_client.Info(
    "bridge_build", "What this bridge runs: its version and those of the livekit SDK, grpclib and Python.")
SESSIONS = prometheus_client.Gauge("bridge_sessions", "User sessions (one per user with a JoinRoom in force).")
STREAMS = prometheus_client.Gauge("bridge_streams", "Open StreamAudio calls.")
JOINS = prometheus_client.Counter(
    "bridge_joins", "JoinRoom calls handled, by result: joined, adopted (a session was replaced and its LiveKit "
    "connection kept), replaced (a session and its LiveKit connection were torn down first), failed, refused (at "
    "BRIDGE_MAX_SESSIONS).",
    ["result"])
JOIN_TOKEN_IDENTITY_UNEXPECTED = prometheus_client.Counter(
    "bridge_join_token_identity_unexpected", "JoinRoom tokens admitted whose identity is not cloud-agent:<user_id> "
    "(the cloud mints identities; the bridge joins with any non-empty one, see README).")
SESSIONS_ENDED = prometheus_client.Counter(
    "bridge_sessions_ended", "Sessions that ended by themselves: reaped (no StreamAudio consumer for "
    "BRIDGE_IDLE_SESSION_TTL), given_up (crashed more often than its restart policy allows).", ["reason"])
PLAYBACKS = prometheus_client.Counter(
    "bridge_playbacks", "PlayAudio calls by outcome: completed, failed, stopped.", ["outcome"])
ACTOR_RESTARTS = prometheus_client.Counter(
    "bridge_actor_restarts", "Actors restarted by their supervisor, by kind of actor.", ["kind"])
RPC_SECONDS = prometheus_client.Histogram(
    "bridge_rpc_seconds", "gRPC calls of the bridge's services: duration by method and status code "
    "(StreamAudio and PlayAudio last as long as their streams).", ["method", "code"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0))

LOG_LINES_SHIPPED = prometheus_client.Counter(
    "bridge_log_lines_shipped", "Log lines Better Stack accepted (BETTERSTACK_INGESTING_HOST).")
LOG_LINES_DROPPED = prometheus_client.Counter(
    "bridge_log_lines_dropped", "Log lines never shipped, by reason: buffer_full (the oldest, while the ingest "
    "host was slow or away), worker_buffer_full (in an SDK worker process), rejected (a 4xx answer), too_large (a "
    "line refused alone with 413), exit (not sent within the bound at exit).", ["reason"])
LOG_BATCHES_FAILED = prometheus_client.Counter(
    "bridge_log_batches_failed", "Better Stack requests that failed, by reason: unreachable (network, TLS, "
    "timeout), server_error (5xx), rate_limited (429), too_large (413: the batch is split), rejected (other 4xx).",
    ["reason"])


def count_restart(child: Any) -> None:
    """A supervisor's on_restart hook: counts the restart by kind of actor."""
    ACTOR_RESTARTS.labels(type(child.actor).__name__).inc()


@contextlib.contextmanager
def serve_metrics(port: int | None, host: str) -> Iterator[None]:
    """Serve /metrics on ``host:port`` (nothing when ``port`` is None) from a
    daemon thread, which works only while scraped, until the block exits."""
    if port is None:
        yield
        return
    server = wsgiref.simple_server.make_server(host, port, prometheus_client.make_wsgi_app(),
                                               _metrics_server_class(host), handler_class=_MetricsRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    logger.info("Prometheus metrics on http://{}:{}/metrics", host, port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _MetricsRequestHandler(wsgiref.simple_server.WSGIRequestHandler):
    """prometheus_client's request handler, with Nagle's algorithm off: a
    response is written as headers, then body, and the body would wait for
    the ACK of the headers, which the scraper delays."""

    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


def _metrics_server_class(host: str) -> type[wsgiref.simple_server.WSGIServer]:
    class MetricsServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True  # a scrape in progress never holds up the exit

    return MetricsServer


def versions() -> dict[str, str]:
    """The bridge's version and those of what it is built on, as bridge_build shows them."""
    def version_of(distribution: str) -> str:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    return {"version": version_of("livekit-bridge"), "livekit": version_of("livekit"),
            "grpclib": version_of("grpclib"), "python": platform.python_version()}


BUILD.info(versions())
