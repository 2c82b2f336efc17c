"""A connection flood in a process of its own: COUNT connections to the bridge
opened at once, a third of each kind:

- idle: connected, nothing sent;
- preface: the HTTP/2 preface and SETTINGS, nothing more;
- unread: a grpc.health.v1.Health/Watch call whose answers are never read.

Usage: python tests/flood_process.py ADDRESS COUNT [DEADLINE_S]   (ADDRESS: host:port or unix:/path)

Each connection counts as answered once the server's first frame (its
SETTINGS) arrives; of the unread ones nothing more is read. Prints one JSON
line once every connection is answered or has failed, or at DEADLINE_S
(default 60): {"answered", "failed" (refused, or closed unanswered),
"unanswered" (still waiting at the deadline: a listener whose queue
overflowed leaves an idle client believing it is connected while the server
never took it), "seconds" (until the last answer), "by_kind"}, then holds the
connections until stdin closes.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import sys
import time

import h2.config
import h2.connection

KINDS = ("idle", "preface", "unread")
#: The server's first frame is SETTINGS: a 9-byte frame header whose fourth byte is the type, 0x4.
SETTINGS_TYPE = 4


def opening_bytes(kind: str) -> bytes:
    """What a connection of ``kind`` sends first (and last)."""
    if kind == "idle":
        return b""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    if kind == "unread":
        connection.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "bridge"),
                                    (":path", "/grpc.health.v1.Health/Watch"), ("content-type", "application/grpc"),
                                    ("te", "trailers")])
        connection.send_data(1, b"\x00\x00\x00\x00\x00")  # an empty HealthCheckRequest
    return connection.data_to_send()


def flood(address: str, count: int, deadline: float = 60.0) -> tuple[dict, list[socket.socket]]:
    if address.startswith("unix:"):
        family, target = socket.AF_UNIX, address[len("unix:"):]
    else:
        host, port = address.rsplit(":", 1)
        family, target = socket.AF_INET, (host, int(port))
    selector = selectors.DefaultSelector()
    opening = {kind: opening_bytes(kind) for kind in KINDS}
    answered = {kind: 0 for kind in KINDS}
    failed = 0
    sockets = []
    started = time.monotonic()
    for index in range(count):
        kind = KINDS[index % len(KINDS)]
        connection = socket.socket(family, socket.SOCK_STREAM)
        connection.setblocking(False)
        try:
            connection.connect(target)
        except BlockingIOError as error:
            if error.errno == errno.EAGAIN:  # a Unix socket whose listen queue is full refuses at once
                failed += 1
                connection.close()
                continue
        except OSError:
            failed += 1
            connection.close()
            continue
        sockets.append(connection)
        # Written once connected (writable), then read until the server's first frame.
        selector.register(connection, selectors.EVENT_WRITE, kind)
    last_answer = started
    waiting = len(sockets)
    while waiting and (left := started + deadline - time.monotonic()) > 0:
        for key, events in selector.select(timeout=left):
            connection, kind = key.fileobj, key.data
            if events & selectors.EVENT_WRITE:
                error = connection.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    failed += 1
                    waiting -= 1
                    selector.unregister(connection)
                    continue
                try:
                    if opening[kind]:
                        connection.send(opening[kind])  # small: fits in an empty socket buffer
                except OSError:
                    failed += 1
                    waiting -= 1
                    selector.unregister(connection)
                    continue
                selector.modify(connection, selectors.EVENT_READ, kind)
                continue
            try:
                first = connection.recv(9)
            except OSError:
                first = b""
            selector.unregister(connection)
            waiting -= 1
            if len(first) >= 4 and first[3] == SETTINGS_TYPE:
                answered[kind] += 1
                last_answer = time.monotonic()
            else:
                failed += 1
    return ({"answered": sum(answered.values()), "failed": failed, "unanswered": waiting,
             "seconds": round(last_answer - started, 3), "by_kind": answered}, sockets)


def listen_overflows() -> int:
    """Connections this network namespace's TCP listeners could not queue
    (TcpExt ListenOverflows, /proc/net/netstat), so far: each waits for its
    SYN or ACK to be sent again, a second or more."""
    lines = [line.split() for line in open("/proc/net/netstat").read().splitlines() if line.startswith("TcpExt:")]
    names, values = lines[0], lines[1]
    return int(values[names.index("ListenOverflows")])


def main(address: str, count: int, deadline: float = 60.0) -> None:
    result, sockets = flood(address, count, deadline)
    print(json.dumps(result), flush=True)
    sys.stdin.read()
    for connection in sockets:
        connection.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:4]))
