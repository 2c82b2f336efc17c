"""`bridge_main.py tree`: a running bridge's live actor tree, printed.

It reaches the bridge as its settings describe it: the Unix socket, else
TCP on PORT (with TLS when BRIDGE_TLS_CERT is set, trusting that certificate
as well as the system's; the key is not needed), with BRIDGE_AUTH_TOKEN when set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import sys

from grpclib.client import Channel
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from proto.mentra.livekit.bridge.debug import BridgeDebugStub, DescribeActorsRequest, WatchActorsRequest

from .settings import BridgeSettings
from .tree_view import render, user_nodes


class TreeUnavailable(Exception):
    """The bridge could not be reached or refused the call; the message says what to check."""


def print_tree(settings: BridgeSettings, *, as_json: bool = False, watch: float | None = None,
               user: str | None = None) -> None:
    """Print the tree once or, with ``watch``, every ``watch`` seconds until Ctrl-C.

    Raises:
        TreeUnavailable: nothing listens where the settings point, or the
            bridge answered with an error (UNAUTHENTICATED without the token).
    """
    def show(tree_json: str) -> None:
        snapshot = json.loads(tree_json)
        if as_json:
            if user is not None:
                snapshot = {"user": user, "children": user_nodes(snapshot, user)}
            text = json.dumps(snapshot, indent=2) + "\n"
        else:
            text = render(snapshot, user=user, colour=sys.stdout.isatty())
        if watch is not None and sys.stdout.isatty():
            text = "\x1b[H\x1b[J" + text  # redraw in place
        sys.stdout.write(text)
        sys.stdout.flush()

    async def run() -> None:
        channel = _channel(settings)
        metadata = {"authorization": f"Bearer {settings.auth_token}"} if settings.auth_token else None
        stub = BridgeDebugStub(channel, metadata=metadata)
        try:
            if watch is None:
                show((await stub.describe_actors(DescribeActorsRequest(), timeout=5)).tree_json)
            else:
                async for reply in stub.watch_actors(WatchActorsRequest(interval_seconds=watch)):
                    show(reply.tree_json)
        finally:
            channel.close()

    where = dial_address(settings) + (" (TLS)" if settings.tls_cert and not settings.unix_socket else "")
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run())
    except (OSError, asyncio.TimeoutError) as error:
        raise TreeUnavailable(f"cannot reach the bridge at {where} ({error or type(error).__name__}); is it "
                              "running, and do PORT / LIVEKIT_GRPC_SOCKET / BRIDGE_TLS_CERT match its settings?"
                              ) from None
    except (StreamTerminatedError, ProtocolError) as error:
        raise TreeUnavailable(f"the bridge at {where} closed the connection ({error}); it may be stopping") from None
    except GRPCError as error:
        hint = "; set BRIDGE_AUTH_TOKEN to the bridge's" if error.status.name == "UNAUTHENTICATED" else ""
        raise TreeUnavailable(f"the bridge at {where} answered {error.status.name}: {error.message}{hint}") from None


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
