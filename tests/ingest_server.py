"""A real HTTPS log ingest server on 127.0.0.1 standing in for Better Stack,
with a CA of its own, and misbehaving on request.

``make_ca(folder)`` makes a CA and a certificate for 127.0.0.1 signed by it
(openssl); a client trusts it through SSL_CERT_FILE, as the bridge would
trust a private CA. :class:`IngestServer` serves POST over TLS from a thread,
as Better Stack does: it checks ``Authorization: Bearer <token>``, decodes
each body (a JSON array, gzip-encoded or not) and keeps the raw bodies, the
lines it accepted and, per request, when it came and what it answered.
``mode`` says what it answers:

- ``accept``: 202, the lines kept;
- ``500``, ``403``: that status;
- ``429``: 429 with ``Retry-After: 1``;
- ``413``: 413 for a body over ``max_body_bytes``, else 202.

:func:`hanging_listener` is a host that accepts connections and never
answers, and :func:`closed_port` one where nothing listens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import http.server
import json
import pathlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from actors.livekit.dev_server import free_port


@dataclasses.dataclass(frozen=True)
class IngestCA:
    ca_file: pathlib.Path
    cert_file: pathlib.Path
    key_file: pathlib.Path


def make_ca(folder: pathlib.Path) -> IngestCA:
    """A CA, and a server certificate for IP 127.0.0.1 that it signed."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-days", "1", "-subj", "/CN=test ingest CA", "-keyout", "ca.key", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "server.ext", "-out", "server.pem")
    return IngestCA(folder / "ca.pem", folder / "server.pem", folder / "server.key")


@dataclasses.dataclass
class Request:
    at: float  # time.monotonic()
    status: int
    lines: int


class IngestServer:
    def __init__(self, ca: IngestCA, token: str, port: int = 0) -> None:
        self.token = token
        self.mode = "accept"
        self.max_body_bytes = 2048
        #: Every body received, decoded (gunzipped) but otherwise as sent.
        self.bodies: list[bytes] = []
        #: The lines of the requests answered 202.
        self.lines: list[dict[str, Any]] = []
        self.requests: list[Request] = []
        self.wrong_tokens = 0
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                status, headers = server._answer(self.headers.get("Authorization"), body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(ca.cert_file, ca.key_file)
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.host = f"127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def _answer(self, authorization: str | None, body: bytes) -> tuple[int, dict[str, str]]:
        with self._lock:
            self.bodies.append(body)
            lines = json.loads(body)
            status, headers = 202, {}
            if authorization != f"Bearer {self.token}":
                self.wrong_tokens += 1
                status = 403
            elif self.mode in ("500", "403"):
                status = int(self.mode)
            elif self.mode == "429":
                status, headers = 429, {"Retry-After": "1"}
            elif self.mode == "413" and len(body) > self.max_body_bytes:
                status = 413
            if status == 202:
                self.lines.extend(lines)
            self.requests.append(Request(time.monotonic(), status, len(lines)))
            return status, headers

    def received(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self._lock:
            return [line for line in self.lines if predicate(line)]

    def answered(self, status: int) -> list[Request]:
        with self._lock:
            return [request for request in self.requests if request.status == status]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


#: The Better Stack source token the tests' bridges ship with (built, so no source line shows it whole).
INGEST_TOKEN = "-".join(["ingest", "source", "token", "4f1c9e"])


@contextlib.contextmanager
def ingest_server(ca: IngestCA, token: str, port: int = 0) -> Iterator[IngestServer]:
    server = IngestServer(ca, token, port)
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def hanging_listener() -> Iterator[str]:
    """A host:port whose listener accepts connections (the kernel completes
    them) and never reads or answers: a TLS handshake there waits forever."""
    with socket.create_server(("127.0.0.1", 0), backlog=128) as listener:
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def closed_port() -> str:
    """A host:port where nothing listens (connections are refused)."""
    return f"127.0.0.1:{free_port()}"  # (outside the ephemeral range: no outgoing connection takes it meanwhile)
