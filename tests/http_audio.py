"""A real HTTP server on 127.0.0.1 (or another local address) that serves the tests' audio, and misbehaves on request.

It runs the standard library's threading HTTP server in a thread of its own,
so it answers while the test's Trio loop waits. Paths:

- ``/files/<name>``: a registered body, with its Content-Type
  (``?delay_ms=N``: answer only after N ms, as a TTS server that first
  synthesises);
- ``/status/<code>``: an error answer;
- ``/redirect/<n>/<name>``: n redirects, then ``/files/<name>``;
- ``/redirect-to?location=...``: one redirect to any location;
- ``/drip/<name>``: the body's first 64 bytes, then one byte every 0.2 s;
- ``/truncated/<name>``: announces the whole body, sends half, hangs up;
- ``/silent-headers``: accepts and never answers;
- ``/silent-body/<name>``: headers, then nothing.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
import urllib.parse
from collections.abc import Iterator


class AudioHTTPServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.files: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        self._stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(self.path)
                try:
                    server._route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self.base = f"http://{host}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def add(self, name: str, body: bytes, content_type: str) -> str:
        self.files[name] = (content_type, body)
        return f"{self.base}/files/{name}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _route(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(handler.path)
        path = parts.path.strip("/").split("/")
        kind, rest = path[0], path[1:]
        if kind == "files":
            delay_ms = int(urllib.parse.parse_qs(parts.query).get("delay_ms", ["0"])[0])
            if delay_ms and self._stop.wait(delay_ms / 1000):
                return
            self._send_file(handler, rest[0])
        elif kind == "status":
            code = int(rest[0])
            body = b"<html><body>error</body></html>"
            handler.send_response(code)
            handler.send_header("Content-Type", "text/html")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        elif kind == "redirect":
            left, name = int(rest[0]), rest[1]
            location = f"/redirect/{left - 1}/{name}" if left > 1 else f"/files/{name}"
            self._redirect(handler, location)
        elif kind == "redirect-to":
            self._redirect(handler, urllib.parse.parse_qs(parts.query)["location"][0])
        elif kind == "drip":
            content_type, body = self.files[rest[0]]
            self._headers(handler, content_type, len(body))
            handler.wfile.write(body[:64])
            handler.wfile.flush()
            for byte in body[64:]:
                if self._stop.wait(0.2):
                    return
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
        elif kind == "truncated":
            content_type, body = self.files[rest[0]]
            self._headers(handler, content_type, len(body))
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
        elif kind == "silent-headers":
            self._stop.wait(60)
        elif kind == "silent-body":
            content_type, body = self.files[rest[0]]
            self._headers(handler, content_type, len(body))
            handler.wfile.flush()
            self._stop.wait(60)
        else:
            handler.send_error(404)

    def _send_file(self, handler: http.server.BaseHTTPRequestHandler, name: str) -> None:
        if name not in self.files:
            handler.send_error(404)
            return
        content_type, body = self.files[name]
        self._headers(handler, content_type, len(body))
        # In pieces, as a network delivers it: the bridge must not need the whole file.
        for start in range(0, len(body), 16_384):
            handler.wfile.write(body[start:start + 16_384])
            handler.wfile.flush()
            time.sleep(0.001)

    @staticmethod
    def _headers(handler: http.server.BaseHTTPRequestHandler, content_type: str, length: int) -> None:
        handler.send_response(200)
        if content_type:
            handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(length))
        handler.end_headers()

    @staticmethod
    def _redirect(handler: http.server.BaseHTTPRequestHandler, location: str) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()


@contextlib.contextmanager
def audio_http_server(host: str = "127.0.0.1") -> Iterator[AudioHTTPServer]:
    server = AudioHTTPServer(host)
    server.start()
    try:
        yield server
    finally:
        server.close()
