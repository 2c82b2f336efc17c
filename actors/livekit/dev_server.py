"""A local livekit-server in dev mode that keeps every byte on loopback.

Used by ``just run`` (the embedded default) and by the end-to-end tests. The
server binds its node address (127.0.0.1 unless told another loopback-range
address), advertises only that address as its ICE candidate, does not
discover an external IP, and hands clients a STUN address of its own
instead of its default public STUN servers.

Given a Redis address, the server is one node of a cluster: nodes that share
the Redis route each room to the node that hosts it (tests/livekit_cluster.py
starts three). Dev mode changes defaults only (placeholder keys when none
are given, debug logging, one UDP port, pprof on the signalling port) and
leaves routing alone, so cluster nodes run in it too.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import random
import re
import secrets
import socket
import subprocess
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
LIVEKIT_SERVER_VERSION = "1.13.5"
LIVEKIT_SERVER_BIN = pathlib.Path(
    os.environ.get("LIVEKIT_SERVER_BIN", REPO / ".tools" / "bin" / "livekit-server")
)


class LiveKitServerError(RuntimeError):
    """The dev livekit-server could not be started."""


@dataclasses.dataclass(frozen=True)
class DevLiveKit:
    url: str
    api_key: str
    api_secret: str = dataclasses.field(repr=False)
    process: subprocess.Popen[bytes] = dataclasses.field(repr=False)
    log_path: pathlib.Path
    #: The id the server drew for itself at start (``ND_...``, new at every
    #: start), which CreateRoom's ``node_id`` names to place a room on it.
    node_id: str = ""

    def stop(self) -> None:
        """Stop the server; it gets a moment to close its rooms, then is killed
        (a dev server has nothing to drain)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


#: Ports are picked below Linux's ephemeral range (32768-60999): a port from
#: that range can be taken by any outgoing connection between the pick and the
#: server's bind, and livekit-server binds its RTC port on every address.
_PORTS = range(20_000, 32_000)


def free_port() -> int:
    """A TCP port nothing listens on, outside the ephemeral range."""
    for _ in range(100):
        port = random.choice(_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise LiveKitServerError("found no free port between 20000 and 32000")


def loopback_config(*, port: int, rtc_tcp_port: int, udp_ports: tuple[int, int], api_key: str, api_secret: str,
                    node_ip: str = "127.0.0.1", interface: str = "lo", redis_address: str | None = None) -> str:
    """The server's YAML config: signalling on ``node_ip``:``port``, ICE only
    on ``interface`` and ``node_ip`` (over UDP in ``udp_ports``, over TCP on
    ``rtc_tcp_port``, which livekit-server binds on every address, so each
    server on a machine needs its own), and a node of the cluster that shares
    the Redis at ``redis_address`` ("host:port") when one is given."""
    redis = f"redis:\n  address: {redis_address}\n" if redis_address else ""
    return f"""\
port: {port}
bind_addresses: ["{node_ip}"]
{redis}rtc:
  tcp_port: {rtc_tcp_port}
  port_range_start: {udp_ports[0]}
  port_range_end: {udp_ports[1]}
  node_ip: {node_ip}
  use_external_ip: false
  enable_loopback_candidate: true
  interfaces:
    includes: [{interface}]
  ips:
    includes: [{node_ip}/32]
  # Clients are told of this STUN address instead of the public defaults.
  stun_servers: ["{node_ip}:{rtc_tcp_port}"]
keys:
  {api_key}: {api_secret}
logging:
  level: info
"""


#: The line livekit-server logs once its listeners are open, with the node id it drew.
_NODE_ID = re.compile(rb'starting LiveKit server.*"nodeID": "([^"]+)"')


def _logged_node_id(log_path: pathlib.Path) -> str | None:
    match = _NODE_ID.search(log_path.read_bytes())
    return match.group(1).decode() if match else None


def start_dev_livekit(
    workdir: pathlib.Path,
    *,
    port: int | None = None,
    api_key: str = "devkey",
    api_secret: str | None = None,
    udp_ports: tuple[int, int] = (50000, 50999),
    rtc_tcp_port: int | None = None,
    node_ip: str = "127.0.0.1",
    interface: str = "lo",
    redis_address: str | None = None,
    ready_timeout: float = 30.0,
) -> DevLiveKit:
    """Start livekit-server and return once it accepts connections on
    ``node_ip`` and has logged its node id (see ``loopback_config`` for the
    other parameters).

    Raises:
        LiveKitServerError: the binary is missing (run ``just livekit-server``)
            or the server exited or did not listen within ``ready_timeout``.
    """
    if not LIVEKIT_SERVER_BIN.exists():
        raise LiveKitServerError(
            f"{LIVEKIT_SERVER_BIN} is missing; install it with `just livekit-server`"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    api_secret = api_secret or secrets.token_hex(24)
    config = workdir / "livekit.yaml"
    config.write_text(loopback_config(
        port=port, rtc_tcp_port=rtc_tcp_port or free_port(), udp_ports=udp_ports, api_key=api_key,
        api_secret=api_secret, node_ip=node_ip, interface=interface, redis_address=redis_address,
    ))
    config.chmod(0o600)
    log_path = workdir / "livekit-server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(LIVEKIT_SERVER_BIN), "--dev", "--config", str(config),
             "--bind", node_ip, "--node-ip", node_ip],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    server = DevLiveKit(f"ws://{node_ip}:{port}", api_key, api_secret, process, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LiveKitServerError(f"livekit-server exited with {process.returncode}; see {log_path}")
        try:
            socket.create_connection((node_ip, port), timeout=0.5).close()
            # (It logs its id just after opening its listeners: a connect may come first.)
            if (node_id := _logged_node_id(log_path)) is not None:
                return dataclasses.replace(server, node_id=node_id)
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise LiveKitServerError(f"livekit-server did not listen on {node_ip}:{port} and log its node id within "
                             f"{ready_timeout:g} s; see {log_path}")
