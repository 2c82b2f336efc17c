"""The front door's listening socket, opened before the process imports the rest.

A bridge that is restarted must accept the cloud's retry as soon as it can:
the cloud's client retries its audio stream once, two seconds after it fails.
Binding and listening take milliseconds, importing the livekit SDK and the
audio stack most of a second; a socket that listens queues the connections
that arrive meanwhile (the kernel completes them), so the retry waits for an
answer instead of being refused. Only the standard library and the log are
imported here.
"""

from __future__ import annotations

import os
import pathlib
import socket

from loguru import logger

#: The socket's mode: the bridge's user and group may connect, nobody else.
SOCKET_MODE = 0o660
#: Where Linux says the longest listen queue it allows (net.core.somaxconn,
#: per network namespace); a longer request is cut to it.
_SOMAXCONN = pathlib.Path("/proc/sys/net/core/somaxconn")


class SocketPathError(Exception):
    """The Unix socket path cannot be served; the message says why and what to do."""

    @classmethod
    def found_in(cls, error: BaseException) -> SocketPathError | None:
        """The SocketPathError in ``error``, wherever nurseries have grouped it; None if there is none."""
        if isinstance(error, cls):
            return error
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                if (found := cls.found_in(inner)) is not None:
                    return found
        return None


def open_listener(*, host: str, port: int, unix_socket: str | None) -> socket.socket:
    """A socket bound to ``unix_socket`` (mode 0660, its folder made when
    missing, a stale socket file replaced) or else to ``host``:``port`` (0
    picks a free port), listening.

    Raises:
        SocketPathError: the socket path is served by a live process, or is
            something other than a socket.
        OSError: the address cannot be bound (in use, not this machine's).
    """
    if unix_socket:
        _claim_socket_path(pathlib.Path(unix_socket))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(unix_socket)
        os.chmod(unix_socket, SOCKET_MODE)
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: the connections accepted carry the listener's
        # protocol, and asyncio and grpclib turn Nagle's algorithm off only on
        # sockets that say TCP. With it on, each small HTTP/2 write waits for
        # the ACK of the one before, which the client delays: tens of ms a packet.
        listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind((host.strip("[]"), port))
    listener.listen(listen_queue_length())
    listener.setblocking(False)
    return listener


def listen_queue_length() -> int:
    """The longest listen queue the system allows (net.core.somaxconn; 4096,
    Linux's default since 5.4, where it cannot be read).

    The kernel completes connections while the process is busy (starting, or
    taking in a flood) and holds them in this queue; one that arrives to a
    full queue is dropped, and its client waits a second or more for a
    retransmit, or, idle behind a SYN cookie, waits for an answer forever.
    """
    try:
        return max(1, int(_SOMAXCONN.read_text()))
    except (OSError, ValueError):
        return 4096


def listener_address(listener: socket.socket) -> str:
    """"host:port" or "unix:/path", as the bridge reports where it listens."""
    if listener.family == socket.AF_UNIX:
        return f"unix:{listener.getsockname()}"
    host, port = listener.getsockname()[:2]
    return f"{host}:{port}"


def _claim_socket_path(path: pathlib.Path) -> None:
    """Make ``path`` free for a new socket: create its folder when missing,
    remove a stale socket file (nobody accepts on it), refuse a live one or
    anything that is not a socket."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise SocketPathError(f"{path} exists and is not a socket; remove it or choose another LIVEKIT_GRPC_SOCKET")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            logger.info("removing stale socket file {}", path)
            path.unlink(missing_ok=True)
            return
    raise SocketPathError(f"another process is serving on {path}; stop it or choose another LIVEKIT_GRPC_SOCKET")
