"""A LiveKit cluster on loopback: Redis and three livekit-server nodes sharing it.

LiveKit runs so once its users outgrow one machine: any node takes a
client's signalling and relays it to the node that hosts the client's room
(through Redis), and a room whose node is lost is recreated on another. The
tests (tests/test_livekit_cluster.py) and the bench (bench/cluster.py) start
it here, inside tests/isolated's network namespace:

- Redis (Debian's redis-server, `just redis`) on 127.0.0.1 and a free port,
  with no persistence (nothing saved, no append-only file);
- node ``i`` on ``NODES[i]``'s address, each bound to it alone, with ICE
  restricted to that address and its interface, a signalling port and an ICE
  TCP port of its own (livekit-server binds its ICE TCP port on every
  address) and a UDP range of its own, and STUN on its own address, so no
  client is handed public STUN servers (see actors/livekit/dev_server.py).

Every address is on an interface of the namespace: libwebrtc gathers no ICE
candidates on a loopback adapter, and a node advertises only its own address.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

from actors.livekit.dev_server import DevLiveKit, LiveKitServerError, free_port, start_dev_livekit

#: Each node's address and the interface that holds it (tests/isolated adds them).
NODES = (("127.0.0.1", "lo"), ("127.0.0.2", "lk-veth0"), ("127.0.0.3", "lk-veth2"))
#: Each node's UDP range for ICE (apart from the single test server's 40000-40999 and the others').
UDP_PORTS = ((43000, 43299), (43300, 43599), (43600, 43899))
#: How Redis maps a room to the node that hosts it (livekit-server's routing.NodeRoomKey).
ROOM_NODE_MAP = "room_node_map"


class ClusterError(RuntimeError):
    """The cluster could not be started (the message says what to install or where to look)."""


@dataclasses.dataclass(frozen=True)
class RedisServer:
    process: subprocess.Popen[bytes] = dataclasses.field(repr=False)
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self, *words: str) -> str:
        """Run one Redis command (with redis-cli, installed with redis-server); its reply."""
        done = subprocess.run(["redis-cli", "-h", self.host, "-p", str(self.port), *words],
                              capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip()

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes], grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL if it is still running after ``grace`` s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_redis(workdir: pathlib.Path, ready_timeout: float = 20.0) -> RedisServer:
    """Redis on 127.0.0.1 and a free port, keeping nothing on disk; returns once it answers PING.

    Raises:
        ClusterError: redis-server is missing, exited, or did not answer in time.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise ClusterError("redis-server is missing; install it with `just redis`")
    workdir.mkdir(parents=True, exist_ok=True)
    host, port = "127.0.0.1", free_port()
    log_path = workdir / "redis.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [binary, "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    redis = RedisServer(process, host, port)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterError(f"redis-server exited with {process.returncode}; see {log_path}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return redis
        time.sleep(0.1)
    redis.stop()
    raise ClusterError(f"redis-server did not answer on {host}:{port} within {ready_timeout:g} s; see {log_path}")


def check_addresses() -> None:
    """Raises ClusterError unless every node's address is on its interface (as in tests/isolated)."""
    shown = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    held = {(words[1], words[3].split("/")[0]) for words in (line.split() for line in shown.splitlines())}
    missing = [f"{address} on {interface}" for address, interface in NODES if (interface, address) not in held]
    if missing:
        raise ClusterError(f"no {', '.join(missing)}: run inside tests/isolated, which adds them")


class LiveKitCluster:
    """Redis and three livekit-server nodes (see the module's docstring).

    ``nodes[i]`` is node ``i`` as last started; ``kill``, ``force_stop`` and
    ``restart`` act on one node, ``stop`` on everything (whatever state it is in).
    """

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.api_key = "devkey"
        self._api_secret = secrets.token_hex(24)
        self.redis: RedisServer | None = None
        self.nodes: list[DevLiveKit] = []
        self._configs: list[dict] = []
        self._starts = 0

    def start(self) -> None:
        check_addresses()
        self.redis = start_redis(self.workdir / "redis")
        for (address, interface), udp_ports in zip(NODES, UDP_PORTS):
            self._configs.append(dict(
                port=free_port(), rtc_tcp_port=free_port(), udp_ports=udp_ports, node_ip=address,
                interface=interface, redis_address=self.redis.address, api_key=self.api_key,
                api_secret=self._api_secret))
            self.nodes.append(self._start_node(len(self.nodes)))

    def _start_node(self, index: int) -> DevLiveKit:
        self._starts += 1
        try:
            return start_dev_livekit(self.workdir / f"node{index}-{self._starts}", **self._configs[index])
        except LiveKitServerError as error:
            raise ClusterError(str(error)) from None

    def restart(self, index: int) -> DevLiveKit:
        """Start node ``index`` again (after kill or force_stop), on its ports, under a new node id."""
        self.nodes[index].stop()
        self.nodes[index] = self._start_node(index)
        return self.nodes[index]

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``, as a crash or a lost machine: it tells nobody, and Redis keeps its entry."""
        process = self.nodes[index].process
        process.kill()
        process.wait()

    def force_stop(self, index: int, timeout: float = 30.0) -> None:
        """Stop node ``index`` by force, as an operator's second SIGTERM does:
        the first starts a drain (no new rooms; it waits for its participants
        to leave), the second closes every room it hosts at once, each
        participant told SERVER_SHUTDOWN."""
        node = self.nodes[index]
        node.process.send_signal(signal.SIGTERM)
        # (Go drops a signal that comes while the first one is not taken yet: wait for its log line.)
        deadline = time.monotonic() + timeout
        while b"exit requested" not in node.log_path.read_bytes():
            if time.monotonic() > deadline:
                raise ClusterError(f"{node.url} did not take SIGTERM within {timeout:g} s; see {node.log_path}")
            time.sleep(0.05)
        node.process.send_signal(signal.SIGTERM)
        try:
            node.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{node.url} did not exit within {timeout:g} s of its second SIGTERM") from None

    def room_node(self, room: str) -> str:
        """The id of the node Redis routes ``room`` to ("" when none)."""
        assert self.redis is not None
        return self.redis.command("HGET", ROOM_NODE_MAP, room)

    def index_of(self, node_id: str) -> int | None:
        """Which node (as last started) has ``node_id``; None if none."""
        return next((index for index, node in enumerate(self.nodes) if node.node_id == node_id), None)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.redis is not None:
            self.redis.stop()


@contextlib.contextmanager
def livekit_cluster(workdir: pathlib.Path) -> Iterator[LiveKitCluster]:
    """A started cluster for the block; every process it started is stopped
    when the block ends, however it ends (a start that fails midway too)."""
    cluster = LiveKitCluster(workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
