"""The log ingest host in a process of its own: the tests' HTTPS ingest
server (tests/ingest_server.py: a CA of its own, checks the bearer token,
decodes every batch, answers 202), so that its CPU is not the measured
process's.

Usage: python bench/ingest_process.py TOKEN
Commands (bench/receiver_commands.py):
  {"op": "where"}   {"host": "127.0.0.1:PORT", "ca_file": the CA to trust through SSL_CERT_FILE}
  {"op": "count"}   lines accepted and requests answered (by status) so far; the
                    lines and bodies kept until then are let go, so that a long run
                    holds bounded memory
"""

from __future__ import annotations

import asyncio
import collections
import pathlib
import sys
import tempfile
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))

from ingest_server import ingest_server, make_ca  # noqa: E402
from receiver_commands import serve_commands  # noqa: E402


async def main(token: str) -> None:
    ca = make_ca(pathlib.Path(tempfile.mkdtemp(prefix="bench-ingest-ca-")))
    lines = 0
    requests: collections.Counter[int] = collections.Counter()
    with ingest_server(ca, token) as server:
        async def where(command: dict[str, Any]) -> dict[str, Any]:
            return {"host": server.host, "ca_file": str(ca.ca_file)}

        async def count(command: dict[str, Any]) -> dict[str, Any]:
            nonlocal lines
            with server._lock:  # (the server's handler threads append under it)
                lines += len(server.lines)
                requests.update(request.status for request in server.requests)
                server.lines.clear()
                server.bodies.clear()
                server.requests.clear()
                wrong_tokens = server.wrong_tokens
            return {"lines": lines, "requests": {str(status): n for status, n in requests.items()},
                    "wrong_tokens": wrong_tokens}

        await serve_commands({"where": where, "count": count})


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
