"""The bridge's settings, read once from the environment at start-up."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from .audio.fetch import FetchLimits
from .playback import PlaybackLimits
from .runtime import Backoff


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
    #: With it, every call over TCP must carry "authorization: Bearer <token>" (env BRIDGE_AUTH_TOKEN);
    #: the Unix socket relies on its file mode. Never logged.
    auth_token: str | None = dataclasses.field(default=None, repr=False)
    #: TLS for the TCP listener: PEM certificate chain and key files (env BRIDGE_TLS_CERT, BRIDGE_TLS_KEY).
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Port of the Prometheus /metrics endpoint (env METRICS_PORT); none when unset.
    metrics_port: int | None = None
    connect_timeout: float = 10.0
    #: LiveKit connects in flight at once (env BRIDGE_MAX_CONCURRENT_CONNECTS): while rooms
    #: connect, the SDK delays every other room's packets, so join storms go through a few at a time.
    max_concurrent_connects: int = 2
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
    #: Waits between attempts to rejoin a room LiveKit dropped: short, so
    #: audio flows again soon after a LiveKit server comes back.
    rejoin_backoff: Backoff = Backoff(initial=0.1, maximum=1.0)
    #: Restarts of a crashed session before it is given up on (within 60 s).
    session_max_restarts: int = 3
    #: A session without a StreamAudio consumer this long is torn down (env BRIDGE_IDLE_SESSION_TTL).
    idle_session_ttl: float = 120.0
    #: How long GetStatus remembers why a user's session ended.
    ended_session_memory: float = 600.0
    #: On SIGTERM, how long HealthCheck answers NOT_SERVING before the listener closes.
    drain_grace: float = 0.5
    #: InjectFault works only when this is set (env BRIDGE_CHAOS=1).
    chaos_enabled: bool = False
    #: A published track that carries no audio this long is unpublished (silence would hiss).
    track_idle_grace: float = 2.0
    #: How long a newly published track waits for a subscriber before its first frame.
    subscribe_wait: float = 1.0
    #: Audio a track's source queues ahead of the network; StopAudio drops it.
    track_queue_ms: int = 500
    #: Playback: download and decoding limits (PlayAudio).
    playback_connect_timeout: float = 5.0
    playback_read_timeout: float = 10.0
    #: Longest wait for playable audio: a server that sends, but too slowly to play, fails after it.
    playback_stall_timeout: float = 10.0
    playback_max_bytes: int = 50_000_000
    playback_max_seconds: float = 600.0
    #: Refuse playback URLs that lead to private, loopback or link-local addresses.
    playback_refuse_private: bool = False

    @property
    def playback_limits(self) -> PlaybackLimits:
        return PlaybackLimits(
            fetch=FetchLimits(connect_timeout=self.playback_connect_timeout,
                              idle_read_timeout=self.playback_read_timeout,
                              max_bytes=self.playback_max_bytes,
                              refuse_private_addresses=self.playback_refuse_private),
            max_seconds=self.playback_max_seconds,
            stall_timeout=self.playback_stall_timeout,
        )

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

        def flag(name: str, default: bool) -> bool:
            raw = environ.get(name, "").strip().lower()
            if raw == "":
                return default
            if raw not in ("1", "true", "yes", "0", "false", "no"):
                raise SettingsError(f"{name}={raw!r} is not a yes/no value; use 1 or 0")
            return raw in ("1", "true", "yes")

        tls_files = {name: environ.get(name) or None for name in ("BRIDGE_TLS_CERT", "BRIDGE_TLS_KEY")}
        if (tls_files["BRIDGE_TLS_CERT"] is None) != (tls_files["BRIDGE_TLS_KEY"] is None):
            raise SettingsError("BRIDGE_TLS_CERT and BRIDGE_TLS_KEY go together: set both (PEM files) or neither")
        for name, path in tls_files.items():
            if path is not None and not os.path.isfile(path):
                raise SettingsError(f"{name}={path!r} is not a readable file")

        return cls(
            port=int(number("PORT", cls.port)),
            host=environ.get("BRIDGE_HOST", cls.host),
            unix_socket=environ.get("LIVEKIT_GRPC_SOCKET") or None,
            default_livekit_url=environ.get("LIVEKIT_URL", ""),
            metrics_port=int(number("METRICS_PORT", 0)) or None,
            auth_token=environ.get("BRIDGE_AUTH_TOKEN") or None,
            tls_cert=tls_files["BRIDGE_TLS_CERT"],
            tls_key=tls_files["BRIDGE_TLS_KEY"],
            connect_timeout=number("BRIDGE_CONNECT_TIMEOUT", cls.connect_timeout, float),
            max_concurrent_connects=int(number("BRIDGE_MAX_CONCURRENT_CONNECTS", cls.max_concurrent_connects)),
            mic_buffer_packets=int(number("BRIDGE_MIC_BUFFER_PACKETS", cls.mic_buffer_packets)),
            track_idle_grace=number("BRIDGE_TRACK_IDLE_GRACE", cls.track_idle_grace, float),
            playback_connect_timeout=number("BRIDGE_PLAYBACK_CONNECT_TIMEOUT", cls.playback_connect_timeout, float),
            playback_read_timeout=number("BRIDGE_PLAYBACK_READ_TIMEOUT", cls.playback_read_timeout, float),
            playback_stall_timeout=number("BRIDGE_PLAYBACK_STALL_TIMEOUT", cls.playback_stall_timeout, float),
            playback_max_bytes=int(number("BRIDGE_PLAYBACK_MAX_BYTES", cls.playback_max_bytes)),
            playback_max_seconds=number("BRIDGE_PLAYBACK_MAX_SECONDS", cls.playback_max_seconds, float),
            playback_refuse_private=flag("BRIDGE_PLAYBACK_REFUSE_PRIVATE", cls.playback_refuse_private),
            idle_session_ttl=number("BRIDGE_IDLE_SESSION_TTL", cls.idle_session_ttl, float),
            chaos_enabled=flag("BRIDGE_CHAOS", cls.chaos_enabled),
        )
