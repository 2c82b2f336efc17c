"""A local livekit-server in dev mode that keeps every byte on loopback.

Used by ``just run`` (the embedded default) and by the end-to-end tests. The
server binds 127.0.0.1, advertises only its loopback ICE candidate, does not
discover an external IP, and hands clients a loopback STUN address instead of
its default public STUN servers.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import random
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


def loopback_config(*, port: int, rtc_tcp_port: int, udp_ports: tuple[int, int], api_key: str, api_secret: str) -> str:
    return f"""\
port: {port}
bind_addresses: ["127.0.0.1"]
rtc:
  tcp_port: {rtc_tcp_port}
  port_range_start: {udp_ports[0]}
  port_range_end: {udp_ports[1]}
  node_ip: 127.0.0.1
  use_external_ip: false
  enable_loopback_candidate: true
  interfaces:
    includes: [lo]
  ips:
    includes: [127.0.0.1/32]
  # Clients are told of this STUN address instead of the public defaults.
  stun_servers: ["127.0.0.1:{rtc_tcp_port}"]
keys:
  {api_key}: {api_secret}
logging:
  level: info
"""


def start_dev_livekit(
    workdir: pathlib.Path,
    *,
    port: int | None = None,
    api_key: str = "devkey",
    api_secret: str | None = None,
    udp_ports: tuple[int, int] = (50000, 50999),
    rtc_tcp_port: int | None = None,
    ready_timeout: float = 30.0,
) -> DevLiveKit:
    """Start livekit-server and return once it accepts connections.

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
        api_secret=api_secret,
    ))
    config.chmod(0o600)
    log_path = workdir / "livekit-server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(LIVEKIT_SERVER_BIN), "--dev", "--config", str(config),
             "--bind", "127.0.0.1", "--node-ip", "127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    server = DevLiveKit(f"ws://127.0.0.1:{port}", api_key, api_secret, process, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LiveKitServerError(f"livekit-server exited with {process.returncode}; see {log_path}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise LiveKitServerError(f"livekit-server did not listen on port {port} within {ready_timeout:g} s; see {log_path}")
