"""gRPC transport plumbing for grpclib hosted in Trio: reading messages
safely, many streams per connection, and serving a handler object on TCP or a
Unix socket. Nothing here knows the bridge's services."""

from __future__ import annotations

import asyncio
import hmac
import socket
import ssl
import struct
import time
import weakref
from typing import Any

import grpclib.server
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from h2.settings import SettingCodes
from loguru import logger
from trio_asyncio import aio_as_trio

from .listener import listen_queue_length, listener_address, open_listener

#: Connections taken from the listen queue at each wake-up. asyncio accepts
#: ``backlog`` connections per wake-up and queues their set-up before anything
#: else waiting; a flood taken in by the thousand stalls every stream for a
#: second, by sixteens for a few milliseconds at a time.
ACCEPT_BATCH = 16


async def read_message(stream: grpclib.server.Stream, limit: int) -> Any:
    """Receive the next message, or None once the client has finished sending.

    Unlike grpclib's own recv_message, the length prefix is checked before the
    body is read, so an oversized message is refused without being buffered.

    Raises:
        GRPCError(RESOURCE_EXHAUSTED): the message is larger than ``limit`` bytes.
    """
    h2_stream = stream._stream
    try:
        prefix = await h2_stream.recv_data(5)
        if not prefix:
            return None
        compressed, length = struct.unpack(">?I", prefix)
        if compressed:
            raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported; send them uncompressed")
        if length > limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"message of {length} bytes exceeds the bridge's limit of {limit} bytes",
            )
        body = await h2_stream.recv_data(length)
    except AssertionError:  # grpclib's check that as many bytes arrived as asked for
        raise GRPCError(Status.INVALID_ARGUMENT, "the client ended the stream inside a message") from None
    if len(body) != length:
        raise GRPCError(Status.INVALID_ARGUMENT, "the client ended the stream inside a message")
    try:
        return stream._codec.decode(body, stream._recv_type)
    except Exception as error:
        raise GRPCError(Status.INVALID_ARGUMENT, f"malformed {stream._recv_type.__name__}: {error}") from None


_grpclib_abort = grpclib.server._abort


async def _abort_as_grpc(h2_stream: Any, h2_status: int, grpc_status: Status | None = None,
                         grpc_message: str | None = None) -> None:
    """grpclib's answer to a call it cannot serve, well-formed for gRPC clients.

    grpclib answers an unknown service or method with HTTP 200 and
    grpc-status UNIMPLEMENTED but no content-type, which grpc-go clients
    (grpcurl among them) report as "malformed header: missing HTTP
    content-type" instead of UNIMPLEMENTED. An HTTP 200 answer gets the gRPC
    content-type here; the other answers (405, 415, 400) are not gRPC
    responses and stay as they are.
    """
    if h2_status != 200:
        await _grpclib_abort(h2_stream, h2_status, grpc_status, grpc_message)
        return
    headers = [(":status", "200"), ("content-type", "application/grpc")]
    if grpc_status is not None:
        headers.append(("grpc-status", str(grpc_status.value)))
    if grpc_message is not None:
        headers.append(("grpc-message", grpc_message))
    await h2_stream.send_headers(headers, end_stream=True)
    if h2_stream.closable:
        h2_stream.reset_nowait()


# request_handler looks _abort up at call time; grpclib is pinned (pyproject.toml)
# and tests/test_standard_services.py checks the answer with grpcurl.
grpclib.server._abort = _abort_as_grpc


class _Timed:
    """A handler object whose every call's duration is observed in a
    histogram, labelled with the method's name and the status code the call
    ends with, refusals by the wrappers inside it (UNAUTHENTICATED) included."""

    def __init__(self, handlers: Any, histogram: Any) -> None:
        self._handlers = handlers
        self._histogram = histogram

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {path: handler._replace(func=self._timed(path.rsplit("/", 1)[-1], handler.func))
                for path, handler in self._handlers.__mapping__().items()}

    def _timed(self, method: str, func: Any) -> Any:
        async def timed(stream: grpclib.server.Stream) -> None:
            started = time.monotonic()
            code = "OK"
            try:
                await func(stream)
            except GRPCError as error:
                code = error.status.name
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception:
                code = "UNKNOWN"
                raise
            finally:
                self._histogram.labels(method, code).observe(time.monotonic() - started)

        return timed


class _BearerTokenRequired:
    """A handler object whose every method first checks the call's
    ``authorization: Bearer <token>`` metadata, in constant time."""

    def __init__(self, handlers: Any, token: str) -> None:
        self._handlers = handlers
        self._expected = f"Bearer {token}".encode()

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {path: handler._replace(func=self._checked(handler.func))
                for path, handler in self._handlers.__mapping__().items()}

    def _checked(self, func: Any) -> Any:
        async def checked(stream: grpclib.server.Stream) -> None:
            presented = stream.metadata.get("authorization", "") if stream.metadata else ""
            if not hmac.compare_digest(str(presented).encode(), self._expected):
                raise GRPCError(Status.UNAUTHENTICATED,
                                "this bridge requires the metadata 'authorization: Bearer <BRIDGE_AUTH_TOKEN>'")
            await func(stream)

        return checked


#: How often a sender whose bytes wait in a full connection's send buffer looks again.
_KERNEL_POLL_SECONDS = 0.001


class _CountedTransport:
    """A connection's transport as grpclib writes to it, counting the bytes
    written, so that a sender can tell when its own have left asyncio's send
    buffer for the kernel (at once, unless the socket was full)."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self._transport.write(data)

    def handed_to_kernel(self) -> int:
        return self.written - self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def until_in_kernel(stream: grpclib.server.Stream) -> None:
    """Return once every byte written so far on ``stream``'s connection has
    been handed to the kernel, or the connection is closing. (Over TLS: once
    encrypted and handed to the socket's transport.)"""
    transport = stream._stream.connection._transport
    if not isinstance(transport, _CountedTransport):
        return
    written = transport.written
    while transport.handed_to_kernel() < written and not transport.is_closing():
        await asyncio.sleep(_KERNEL_POLL_SECONDS)


class _ManyStreamsProtocol(H2Protocol):
    """grpclib's protocol with h2's limit of 100 concurrent streams lifted,
    writing through a _CountedTransport.

    The cloud multiplexes every user's StreamAudio on one HTTP/2 connection;
    past the limit its calls would wait forever for a free stream.
    """

    max_concurrent_streams = 100

    def connection_made(self, transport: Any) -> None:
        super().connection_made(_CountedTransport(transport))
        self.connection._connection.update_settings(
            {SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams}
        )
        self.connection.flush()


class FrontDoorServer(grpclib.server.Server):
    def __init__(self, handlers: list[Any], *, max_concurrent_streams: int) -> None:
        super().__init__(handlers)
        self._protocol_class = type(
            "_Protocol", (_ManyStreamsProtocol,), {"max_concurrent_streams": max_concurrent_streams}
        )
        self._connections: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        protocol = self._protocol_class(protocol.handler, protocol.config, protocol.h2_config)
        self._connections.add(protocol)
        return protocol

    async def wait_for_calls(self) -> None:
        """Wait until the calls close() cancelled have finished."""
        if self._handlers:
            await asyncio.wait([asyncio.ensure_future(handler.wait_closed()) for handler in self._handlers])

    def close_connections(self) -> None:
        """Send GOAWAY on every client connection and close it.

        grpclib's close() cancels the calls still running (a health Watch)
        without a word to their clients, which would wait on the open
        connection; closed, they end at once, as when the process exits.
        (From Python 3.12, asyncio's wait_closed also waits for them.)"""
        for protocol in list(self._connections):
            connection = getattr(protocol, "connection", None)
            if connection is None or connection.is_closing():
                continue
            try:
                connection._connection.close_connection()
                connection.flush()
            except Exception as error:  # a connection already broken: closing it is all that is left
                logger.debug("GOAWAY not sent on a closing connection: {}", error)
            connection.close()


def _tls_context(tls: tuple[str, str]) -> ssl.SSLContext:
    certificate, key = tls
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    context.set_alpn_protocols(["h2"])
    return context


async def serve_grpc(
    handlers: list[Any], *, host: str, port: int, unix_socket: str | None, max_concurrent_streams: int,
    close_timeout: float, auth_token: str | None = None, tls: tuple[str, str] | None = None,
    rpc_histogram: Any = None, listener: socket.socket | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handlers`` until cancelled; reports "host:port" or "unix:/path" once listening.

    It serves on ``listener`` when given (open_listener's, bound before the
    process imported the rest), else on a listener it opens for ``host``,
    ``port`` or ``unix_socket`` (see open_listener). With
    ``auth_token``, every call over TCP must carry
    ``authorization: Bearer <auth_token>`` or ends UNAUTHENTICATED; over the
    Unix socket the file mode decides who may call. With ``tls`` (PEM
    certificate chain and key files), TCP is served over TLS (HTTP/2 by ALPN).
    With ``rpc_histogram`` (a prometheus_client Histogram labelled method and
    code), every call's duration is observed in it.

    Raises:
        SocketPathError: as open_listener.

    On cancellation it stops listening and waits up to ``close_timeout`` s for
    open calls to close.
    """
    if auth_token and not unix_socket:
        handlers = [_BearerTokenRequired(handler, auth_token) for handler in handlers]
    if rpc_histogram is not None:
        handlers = [_Timed(handler, rpc_histogram) for handler in handlers]
    server = FrontDoorServer(handlers, max_concurrent_streams=max_concurrent_streams)
    if listener is None:
        listener = open_listener(host=host, port=port, unix_socket=unix_socket)
    address = listener_address(listener)
    over_tls = tls is not None and listener.family != socket.AF_UNIX
    await aio_as_trio(server.start)(sock=listener, backlog=ACCEPT_BATCH, ssl=_tls_context(tls) if over_tls else None)
    # asyncio's backlog is both its batch and, through listen(), the kernel's
    # queue: the queue is set back to the longest the system allows.
    listener.listen(listen_queue_length())
    logger.info("gRPC front door listening on {}", address)
    try:
        task_status.started(address)
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            server.close()
            with trio.move_on_after(close_timeout):
                await aio_as_trio(server.wait_for_calls)()
            server.close_connections()
            with trio.move_on_after(close_timeout):
                await aio_as_trio(server.wait_closed)()
