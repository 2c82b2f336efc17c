"""Reaching a running bridge from this machine, as its own settings describe
it: the Unix socket (LIVEKIT_GRPC_SOCKET), else TCP on PORT (with TLS when
BRIDGE_TLS_CERT is set, trusting that certificate as well as the system's;
the key is not needed), carrying BRIDGE_AUTH_TOKEN when set. The `tree` and
`health` commands call it through ``call_bridge``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

from grpclib.client import Channel
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from .settings import BridgeSettings

T = TypeVar("T")


class BridgeUnavailable(Exception):
    """The bridge could not be reached or refused the call; the message says what to check."""


def call_bridge(settings: BridgeSettings, body: Callable[[Channel, dict[str, str] | None], Awaitable[T]]) -> T:
    """Run ``body(channel, metadata)`` in a fresh asyncio loop on a channel to
    the bridge (``metadata`` carries the token, or is None) and return what
    it returns; the channel is closed after.

    Raises:
        BridgeUnavailable: nothing listens where the settings point, the
            connection closed, or the bridge answered with an error
            (UNAUTHENTICATED without the token).
    """
    async def run() -> T:
        channel = _channel(settings)
        try:
            return await body(channel, {"authorization": f"Bearer {settings.auth_token}"} if settings.auth_token
                              else None)
        finally:
            channel.close()

    where = dial_address(settings) + (" (TLS)" if settings.tls_cert and not settings.unix_socket else "")
    try:
        return asyncio.run(run())
    except (OSError, asyncio.TimeoutError) as error:
        raise BridgeUnavailable(f"cannot reach the bridge at {where} ({error or type(error).__name__}); is it "
                                "running, and do PORT / LIVEKIT_GRPC_SOCKET / BRIDGE_TLS_CERT match its settings?"
                                ) from None
    except (StreamTerminatedError, ProtocolError) as error:
        raise BridgeUnavailable(f"the bridge at {where} closed the connection ({error}); it may be stopping"
                                ) from None
    except GRPCError as error:
        hint = "; set BRIDGE_AUTH_TOKEN to the bridge's" if error.status.name == "UNAUTHENTICATED" else ""
        raise BridgeUnavailable(f"the bridge at {where} answered {error.status.name}: {error.message}{hint}"
                                ) from None


def dial_address(settings: BridgeSettings) -> str:
    """Where a client on this machine reaches the bridge: "unix:/path" or "host:port"."""
    if settings.unix_socket:
        return f"unix:{settings.unix_socket}"
    host = _host(settings)
    return f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"


def _host(settings: BridgeSettings) -> str:
    """Where to dial the TCP listener: its own address, or loopback when it binds every address."""
    host = settings.listen_host
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _channel(settings: BridgeSettings) -> Channel:
    if settings.unix_socket:
        return Channel(path=settings.unix_socket)
    context = None
    if settings.tls_cert:
        context = ssl.create_default_context()
        context.load_verify_locations(settings.tls_cert)  # a self-signed certificate is its own authority
        context.set_alpn_protocols(["h2"])
    return Channel(_host(settings), settings.port, ssl=context)
