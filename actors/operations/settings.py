"""The bridge's settings: every one declared here, with its environment
variable (the deployment's names), its flag, its default and its check.

``python bridge_main.py --help`` lists them all. Read them with
``BridgeSettings.load(os.environ, parsed_flags)``; a bad value raises
``SettingsError`` naming the variable or flag.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..runtime import Backoff
from .configuration import SettingsError, declared, load, setting
from .cpu_quota import usable_cpus

if TYPE_CHECKING:
    from ..session.playback import PlaybackLimits

__all__ = ["BridgeSettings", "SettingsError"]

FRONT_DOOR, LIVEKIT, SESSIONS, AUDIO, PLAYBACK, OPERATIONS = (
    "front door (gRPC)", "LiveKit", "sessions", "microphone and cloud audio", "playback (PlayAudio)",
    "logs, metrics, shutdown")
#: What an unset BRIDGE_HOST binds: every address for ``serve``, loopback for ``dev``.
ALL_ADDRESSES, LOOPBACK_HOST = "0.0.0.0", "127.0.0.1"
LOG_LEVELS = ("trace", "debug", "info", "success", "warning", "error", "critical")


@dataclasses.dataclass(frozen=True)
class BridgeSettings:
    # -- front door
    port: int = setting(9090, "PORT", "TCP port of the gRPC front door; 0 picks a free one", group=FRONT_DOOR,
                        minimum=0, maximum=65535)
    host: str | None = setting(None, "BRIDGE_HOST", "address the TCP listener binds (unset: every address, "
                               "0.0.0.0, for serve; 127.0.0.1, this machine only, for dev)", group=FRONT_DOOR)
    unix_socket: str | None = setting(
        None, "LIVEKIT_GRPC_SOCKET", "listen on this Unix socket (mode 0660) instead of TCP", group=FRONT_DOOR,
        metavar="PATH")
    auth_token: str | None = setting(
        None, "BRIDGE_AUTH_TOKEN", "every call over TCP must carry 'authorization: Bearer <token>'; the Unix "
        "socket relies on its file mode", group=FRONT_DOOR, secret=True)
    insecure: bool = setting(False, "BRIDGE_INSECURE", "allow TCP on a non-loopback address without "
                             "BRIDGE_AUTH_TOKEN: anyone who reaches the port may call (only on a network you "
                             "trust)", group=FRONT_DOOR)
    tls_cert: str | None = setting(None, "BRIDGE_TLS_CERT", "serve TCP over TLS: PEM certificate chain (with "
                                   "--tls-key)", group=FRONT_DOOR, metavar="PEM")
    tls_key: str | None = setting(None, "BRIDGE_TLS_KEY", "PEM private key of --tls-cert", group=FRONT_DOOR,
                                  metavar="PEM")
    ask_timeout: float = setting(5.0, "BRIDGE_ASK_TIMEOUT", "how long an RPC waits for an actor's answer",
                                 group=FRONT_DOOR, minimum=0.1)
    max_message_bytes: int = setting(10 * 1024 * 1024, "BRIDGE_MAX_MESSAGE_BYTES", "largest gRPC message accepted",
                                     group=FRONT_DOOR, minimum=1024)
    max_concurrent_streams: int = setting(10_000, "BRIDGE_MAX_CONCURRENT_STREAMS",
                                          "HTTP/2 streams one client connection may hold open", group=FRONT_DOOR,
                                          minimum=1)

    # -- LiveKit
    default_livekit_url: str = setting("", "LIVEKIT_URL", "LiveKit URL for a JoinRoom that names none; with the "
                                       "key and secret, `dev` uses this server and starts none", group=LIVEKIT,
                                       metavar="URL")
    livekit_api_key: str | None = setting(None, "LIVEKIT_API_KEY", "API key of LIVEKIT_URL's server, for `dev` "
                                          "(the bridge joins rooms with JoinRoom's token)", group=LIVEKIT)
    livekit_api_secret: str | None = setting(None, "LIVEKIT_API_SECRET", "API secret of LIVEKIT_URL's server, "
                                             "for `dev`", group=LIVEKIT, secret=True)
    connect_timeout: float = setting(10.0, "BRIDGE_CONNECT_TIMEOUT", "how long a JoinRoom waits for LiveKit",
                                     group=LIVEKIT, minimum=0.1)
    max_concurrent_connects: int = setting(
        2, "BRIDGE_MAX_CONCURRENT_CONNECTS", "most LiveKit connects in flight at once (fewer while streaming users' "
        "packets come late): while rooms connect the SDK "
        "delays every other room's packets, so join storms go through a few at a time", group=LIVEKIT, minimum=1)
    sdk_workers: int | None = setting(
        None, "BRIDGE_SDK_WORKERS", "SDK worker processes the users' rooms are spread over (unset: one per CPU "
        "the bridge may use, its cgroup's CPU quota counted (a container's --cpus), none on a single one; 0: the "
        "rooms are joined in the bridge's own process); one "
        "process uses about one core of the SDK's native threads, and a join storm in one stalls only its own "
        "rooms", group=LIVEKIT, minimum=0, maximum=64)
    join_timeout: float = setting(120.0, "BRIDGE_JOIN_TIMEOUT", "longest a JoinRoom may wait, queued behind "
                                  "other joins included", group=LIVEKIT, minimum=1)
    sdk_reconnect_grace: float = setting(3.0, "BRIDGE_SDK_RECONNECT_GRACE", "how long the SDK may try to restore "
                                         "an interrupted connection before the bridge rejoins the room itself",
                                         group=LIVEKIT, minimum=0.1)
    rejoin_backoff_initial: float = setting(0.1, "BRIDGE_REJOIN_BACKOFF_INITIAL", "first wait before rejoining a "
                                            "room LiveKit dropped (doubling per failure)", group=LIVEKIT,
                                            minimum=0)
    rejoin_backoff_max: float = setting(1.0, "BRIDGE_REJOIN_BACKOFF_MAX", "longest wait between rejoin attempts: "
                                        "short, so audio flows soon after a LiveKit server comes back",
                                        group=LIVEKIT, minimum=0)

    # -- sessions
    max_sessions: int | None = setting(None, "BRIDGE_MAX_SESSIONS", "sessions this bridge holds at most: a "
                                       "JoinRoom for one more user is refused RESOURCE_EXHAUSTED, so the cloud "
                                       "joins the user elsewhere; replacements always go through", group=SESSIONS,
                                       minimum=1)
    session_max_restarts: int = setting(3, "BRIDGE_SESSION_MAX_RESTARTS", "restarts of a crashed session within "
                                        "60 seconds before it is given up on", group=SESSIONS, minimum=0)
    idle_session_ttl: float = setting(120.0, "BRIDGE_IDLE_SESSION_TTL", "a session without a StreamAudio "
                                      "consumer this long is torn down", group=SESSIONS, minimum=0.1)
    ended_session_memory: float = setting(600.0, "BRIDGE_ENDED_SESSION_MEMORY", "how long GetStatus remembers "
                                          "why a user's session ended", group=SESSIONS, minimum=0)
    max_pending_commands_per_user: int = setting(
        64, "BRIDGE_MAX_PENDING_COMMANDS_PER_USER", "JoinRoom/LeaveRoom calls of one user that may wait behind "
        "the one running; more are refused RESOURCE_EXHAUSTED", group=SESSIONS, minimum=1)
    teardown_timeout: float = setting(5.0, "BRIDGE_TEARDOWN_TIMEOUT", "longest a session's teardown (leave the "
                                      "room, unpublish, end the stream) may take", group=SESSIONS, minimum=0.1)
    adopt_links: bool = setting(True, "BRIDGE_ADOPT_LINKS", "a JoinRoom that replaces a session whose LiveKit "
                                "connection is healthy, for the same room and identity, keeps that connection "
                                "(no reconnect after a cloud restart)", group=SESSIONS)
    adoption_silence: float = setting(5.0, "BRIDGE_ADOPTION_SILENCE", "after an adoption, rejoin the room if the "
                                      "phone is in it but none of its packets arrives within this many seconds",
                                      group=SESSIONS, minimum=0.1)
    adoption_rejoin_window: float = setting(30.0, "BRIDGE_ADOPTION_REJOIN_WINDOW", "a JoinRoom within this many "
                                            "seconds of an adoption of the same user rejoins in full",
                                            group=SESSIONS, minimum=0)
    chaos_enabled: bool = setting(False, "BRIDGE_CHAOS", "allow BridgeDebug/InjectFault (tests and chaos runs "
                                  "only)", group=SESSIONS)

    # -- audio
    mic_buffer_packets: int = setting(200, "BRIDGE_MIC_BUFFER_PACKETS", "microphone packets held for the cloud's "
                                      "stream before the oldest is dropped", group=AUDIO, minimum=1)
    publish_buffer_chunks: int = setting(64, "BRIDGE_PUBLISH_BUFFER_CHUNKS", "cloud audio chunks waiting to be "
                                         "published before StreamAudio is slowed down", group=AUDIO, minimum=1)
    track_idle_grace: float = setting(2.0, "BRIDGE_TRACK_IDLE_GRACE", "a published track silent this long is "
                                      "unpublished (silence would hiss)", group=AUDIO, minimum=0.1)
    subscribe_wait: float = setting(1.0, "BRIDGE_SUBSCRIBE_WAIT", "how long a new track waits for a subscriber "
                                    "before its first frame", group=AUDIO, minimum=0)
    track_queue_ms: int = setting(500, "BRIDGE_TRACK_QUEUE_MS", "audio a track queues ahead of the network, in "
                                  "milliseconds; StopAudio drops it", group=AUDIO, minimum=20)

    # -- playback
    playback_connect_timeout: float = setting(5.0, "BRIDGE_PLAYBACK_CONNECT_TIMEOUT", "connect timeout of an "
                                              "audio URL", group=PLAYBACK, minimum=0.1)
    playback_read_timeout: float = setting(10.0, "BRIDGE_PLAYBACK_READ_TIMEOUT", "longest silence from an audio "
                                           "server", group=PLAYBACK, minimum=0.1)
    playback_stall_timeout: float = setting(10.0, "BRIDGE_PLAYBACK_STALL_TIMEOUT", "longest wait for playable "
                                            "audio: a server that sends too slowly to play fails after it",
                                            group=PLAYBACK, minimum=0.1)
    playback_max_bytes: int = setting(50_000_000, "BRIDGE_PLAYBACK_MAX_BYTES", "largest audio file fetched",
                                      group=PLAYBACK, minimum=1)
    playback_max_seconds: float = setting(600.0, "BRIDGE_PLAYBACK_MAX_SECONDS", "longest audio played",
                                          group=PLAYBACK, minimum=0.1)
    playback_refuse_private: bool = setting(False, "BRIDGE_PLAYBACK_REFUSE_PRIVATE", "refuse audio URLs that "
                                            "lead to private, loopback or link-local addresses", group=PLAYBACK)

    # -- operations
    log_level: str = setting("info", "LOG_LEVEL", "least severe log level written", group=OPERATIONS,
                             aliases=("BRIDGE_LOG_LEVEL",), choices=LOG_LEVELS)
    log_format: str | None = setting(None, "LOG_FORMAT", "json lines, or text for people (unset: text on a "
                                     "terminal, json otherwise)", group=OPERATIONS, choices=("json", "text"))
    metrics_port: int | None = setting(None, "METRICS_PORT", "serve Prometheus metrics on this port at /metrics",
                                       group=OPERATIONS, minimum=1, maximum=65535)
    log_env: str | None = setting(None, "BRIDGE_LOG_ENV", "the env field of JSON and shipped log lines (e.g. "
                                  "staging)", group=OPERATIONS, aliases=("NODE_ENV",))
    betterstack_source_token: str | None = setting(
        None, "BETTERSTACK_SOURCE_TOKEN", "ship log lines to Better Stack with this source token (with "
        "BETTERSTACK_INGESTING_HOST; off unless both are set)", group=OPERATIONS, secret=True)
    betterstack_ingesting_host: str | None = setting(
        None, "BETTERSTACK_INGESTING_HOST", "Better Stack's ingesting host (sNNN.region.betterstackdata.com), "
        "reached over HTTPS; log lines are shipped there when BETTERSTACK_SOURCE_TOKEN is set too",
        group=OPERATIONS, metavar="HOST")
    log_ship_batch: int = setting(10, "BRIDGE_LOG_SHIP_BATCH", "ship log lines as soon as this many wait",
                                  group=OPERATIONS, minimum=1, maximum=10_000)
    log_ship_interval: float = setting(1.0, "BRIDGE_LOG_SHIP_INTERVAL", "ship waiting log lines at least this "
                                       "often", group=OPERATIONS, minimum=0.01, maximum=3600)
    log_ship_buffer_bytes: int = setting(8 * 1024 * 1024, "BRIDGE_LOG_SHIP_BUFFER_BYTES", "log lines held for "
                                         "Better Stack at most (JSON bytes); past it the oldest is dropped",
                                         group=OPERATIONS, minimum=64 * 1024)
    drain_grace: float = setting(0.5, "BRIDGE_DRAIN_GRACE", "on SIGTERM, how long health answers NOT_SERVING "
                                 "before the listener closes", group=OPERATIONS, minimum=0)

    def __post_init__(self) -> None:
        for name, path in (("BRIDGE_TLS_CERT", self.tls_cert), ("BRIDGE_TLS_KEY", self.tls_key)):
            if path is not None and not os.path.isfile(path):
                raise SettingsError(f"{name}={path!r} is not a readable file")
        if self.rejoin_backoff_initial > self.rejoin_backoff_max:
            raise SettingsError("BRIDGE_REJOIN_BACKOFF_INITIAL is above BRIDGE_REJOIN_BACKOFF_MAX")
        if (self.betterstack_ingesting_host or "").lower().startswith("http://"):
            raise SettingsError(f"BETTERSTACK_INGESTING_HOST={self.betterstack_ingesting_host!r}: the source token "
                                f"is sent only over HTTPS; give the host alone (sNNN.region.betterstackdata.com)")

    def for_command(self, command: str) -> BridgeSettings:
        """The settings ``serve`` or ``dev`` runs with, checked: an unset
        BRIDGE_HOST binds every address for ``serve`` (a deployment is reached
        from other machines) and loopback for ``dev`` (a server for this
        machine). Raises SettingsError as check_for_serving does."""
        resolved = self if self.host is not None else dataclasses.replace(
            self, host=LOOPBACK_HOST if command == "dev" else ALL_ADDRESSES)
        resolved.check_for_serving()
        return resolved

    def check_for_serving(self) -> None:
        """Raises SettingsError for what only serving needs (``tree`` needs
        the certificate, not its key): a TLS certificate and its key go
        together; a TCP listener that others can reach needs
        BRIDGE_AUTH_TOKEN, or BRIDGE_INSECURE to say that is meant."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("BRIDGE_TLS_CERT (--tls-cert) and BRIDGE_TLS_KEY (--tls-key) go together: set "
                                "both (PEM files) or neither")
        if self.open_to_the_network and not self.insecure:
            raise SettingsError(
                f"refusing to serve TCP on {self.listen_host}:{self.port} (BRIDGE_HOST, PORT) without "
                f"BRIDGE_AUTH_TOKEN: anyone who reaches the port could join rooms, read the actor tree and make the "
                f"bridge fetch URLs (TLS encrypts but does not say who may call). Choose one: set BRIDGE_AUTH_TOKEN "
                f"(callers send 'authorization: Bearer <token>'); or serve on a Unix socket (LIVEKIT_GRPC_SOCKET); "
                f"or, on a network you trust, set BRIDGE_INSECURE=1 (--insecure). BRIDGE_HOST=127.0.0.1 serves "
                f"this machine only.")

    @property
    def listen_host(self) -> str:
        """The address the TCP listener binds: BRIDGE_HOST, or every address
        when unset (for_command sets it for ``dev``)."""
        return self.host if self.host is not None else ALL_ADDRESSES

    @property
    def open_to_the_network(self) -> bool:
        """A TCP listener on an address other than loopback, without BRIDGE_AUTH_TOKEN."""
        return not self.unix_socket and not self.auth_token and not is_loopback(self.listen_host)

    @classmethod
    def load(cls, environ: Mapping[str, str] = os.environ, flags: Any = ()) -> BridgeSettings:
        """The settings from ``flags`` (as parsed from ``configuration.add_flags``),
        else ``environ``, else the defaults.

        Raises:
            SettingsError: a bad value, named by its variable or flag.
        """
        return load(cls, environ, flags)

    @property
    def rejoin_backoff(self) -> Backoff:
        return Backoff(initial=self.rejoin_backoff_initial, maximum=self.rejoin_backoff_max)

    @property
    def sdk_worker_processes(self) -> int:
        """How many SDK worker processes run: BRIDGE_SDK_WORKERS, or when it is
        unset one per CPU this process may use, its cgroup's CPU quota
        counted (none on a single CPU, where a worker would only add the hop)."""
        if self.sdk_workers is not None:
            return self.sdk_workers
        cpus = usable_cpus()
        return cpus if cpus > 1 else 0

    @property
    def uses_external_livekit(self) -> bool:
        """LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET all name a server."""
        return bool(self.default_livekit_url and self.livekit_api_key and self.livekit_api_secret)

    @property
    def log_shipping_url(self) -> str | None:
        """Where log lines are shipped (https://BETTERSTACK_INGESTING_HOST), or
        None when BETTERSTACK_SOURCE_TOKEN or the host is unset."""
        host = self.betterstack_ingesting_host
        if not (host and self.betterstack_source_token):
            return None
        return host if host.lower().startswith("https://") else f"https://{host}"

    @property
    def secret_values(self) -> list[str]:
        """The values of the secret settings (tokens), which no log line may carry."""
        return [value for field, declaration, _ in declared(type(self))
                if declaration.secret and (value := getattr(self, field.name))]

    @property
    def playback_limits(self) -> PlaybackLimits:
        # Imported here: the playback stack (httpx, PyAV) is not needed to read settings, nor to start listening.
        from ..audio.fetch import FetchLimits
        from ..session.playback import PlaybackLimits

        return PlaybackLimits(
            fetch=FetchLimits(connect_timeout=self.playback_connect_timeout,
                              idle_read_timeout=self.playback_read_timeout,
                              max_bytes=self.playback_max_bytes,
                              refuse_private_addresses=self.playback_refuse_private),
            max_seconds=self.playback_max_seconds,
            stall_timeout=self.playback_stall_timeout,
        )


def is_loopback(host: str) -> bool:
    """``host`` names this machine only: 127.0.0.0/8, ::1 or localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
