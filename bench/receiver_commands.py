"""The command loop shared by the ladder's receivers (the cloud client and the
floor): one JSON command per line on stdin, one JSON answer per line on stdout."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

Command = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


async def serve_commands(commands: dict[str, Command]) -> None:
    """Answer commands until "quit" or the end of stdin. Commands run one at a
    time; an unknown one or one that raises is answered {"error": ...}."""
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == '{"op": "quit"}':
            return
        command = json.loads(line)
        try:
            answer = await commands[command["op"]](command)
        except Exception as error:  # reported to the ladder, which stops the run
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)
