"""The bridge's settings, read once from the environment at start-up."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping


class SettingsError(ValueError):
    """An environment variable holds a value the bridge cannot use."""


@dataclasses.dataclass(frozen=True)
class BridgeSettings:
    #: TCP port of the gRPC front door (env PORT); ignored when unix_socket is set.
    port: int = 9090
    host: str = "0.0.0.0"
    #: Unix socket path for the front door (env LIVEKIT_GRPC_SOCKET).
    unix_socket: str | None = None
    #: LiveKit URL used when a JoinRoom names none (env LIVEKIT_URL).
    default_livekit_url: str = ""
    connect_timeout: float = 10.0
    teardown_timeout: float = 5.0
    #: How long an RPC waits for an actor's answer (JoinRoom waits for its connect).
    ask_timeout: float = 5.0
    join_timeout: float = 120.0
    #: Microphone packets held for the cloud's stream before the oldest is dropped.
    mic_buffer_packets: int = 200
    #: Cloud audio chunks waiting to be published before the stream is slowed down.
    publish_buffer_chunks: int = 64
    #: JoinRoom/LeaveRoom calls of one user that may wait behind the one running.
    max_pending_commands_per_user: int = 64
    max_message_bytes: int = 10 * 1024 * 1024
    max_concurrent_streams: int = 10_000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> BridgeSettings:
        def number(name: str, default: float, kind: type = int) -> float:
            raw = environ.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a {kind.__name__}; unset it or give a number") from None
            if value <= 0:
                raise SettingsError(f"{name}={raw!r} must be positive")
            return value

        return cls(
            port=int(number("PORT", cls.port)),
            host=environ.get("BRIDGE_HOST", cls.host),
            unix_socket=environ.get("LIVEKIT_GRPC_SOCKET") or None,
            default_livekit_url=environ.get("LIVEKIT_URL", ""),
            connect_timeout=number("BRIDGE_CONNECT_TIMEOUT", cls.connect_timeout, float),
            mic_buffer_packets=int(number("BRIDGE_MIC_BUFFER_PACKETS", cls.mic_buffer_packets)),
        )
