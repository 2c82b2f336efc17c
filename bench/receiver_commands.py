"""The command loop shared by the ladder's receivers (the cloud client and the
floor): one JSON command per line on stdin, one JSON answer per line on stdout."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

Command = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
#: join_one(user) -> (milliseconds it took, "" or why it failed)
JoinOne = Callable[[str], Awaitable[tuple[float, str]]]


async def join_all_at_once(users: list[str], join_one: JoinOne) -> dict[str, Any]:
    """Join every user at once: how long until all answered, each one's time, and the failures."""
    started = time.perf_counter()
    results = await asyncio.gather(*(join_one(user) for user in users))
    return {"all_ms": (time.perf_counter() - started) * 1000, "ms": [took for took, _ in results],
            "failed": {user: error for user, (_, error) in zip(users, results) if error}}


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
