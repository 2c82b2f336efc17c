"""How the bridge logs: loguru to stderr, without variable values in tracebacks.

loguru's default handler prints every frame's local variables next to a
traceback ("diagnose"); a JoinRoom frame holds the user's LiveKit token, and
tokens must never reach a log. The bridge's entry point calls
``configure_logging`` before anything else logs.
"""

from __future__ import annotations

import sys
from typing import Any

from loguru import logger


def configure_logging(sink: Any = sys.stderr, *, level: str = "INFO") -> int:
    """Replace every handler with one that never prints variable values.

    Returns the handler id (for logger.remove).
    """
    logger.remove()
    return logger.add(sink, level=level, diagnose=False, backtrace=False)
