"""How the bridge logs: loguru, the one sink for the bridge and the libraries
it hosts, as JSON lines or text, without variable values in tracebacks.

loguru's default handler prints every frame's local variables next to a
traceback ("diagnose"); a JoinRoom frame holds the user's LiveKit token, and
tokens must never reach a log. Log lines about a user carry ``user_id`` (and
``room``, ``request_id`` where they apply) as fields: actors bind them with
``logger.contextualize``; JSON lines have them under record.extra, text
lines show them as key=value before the message. The bridge's entry point
calls ``configure_logging`` before anything else logs.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from loguru import logger

LOG_FORMATS = ("json", "text")
#: Libraries whose records quote header values (bearer tokens) or whole URLs
#: with their query strings (signed audio URLs): kept at WARNING whatever the level.
QUOTING_LOGGERS = ("hpack", "h2", "httpx", "httpcore")


class LogSettingError(ValueError):
    """LOG_FORMAT or LOG_LEVEL holds a value the bridge cannot use."""


def configure_logging(sink: Any = sys.stderr, *, level: str = "INFO", log_format: str | None = None) -> int:
    """Replace every handler with one that never prints variable values, and
    route the standard logging of libraries (livekit, grpclib, asyncio,
    httpx) into it.

    ``log_format`` is "json" (one JSON object a line), "text", or None: text
    on a terminal, JSON otherwise. Returns the handler id (for logger.remove).

    Raises:
        LogSettingError: an unknown format or level.
    """
    if log_format is None:
        log_format = "text" if getattr(sink, "isatty", lambda: False)() else "json"
    if log_format not in LOG_FORMATS:
        raise LogSettingError(f"LOG_FORMAT={log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    try:
        logger.level(level.upper())
    except ValueError:
        raise LogSettingError(f"LOG_LEVEL={level!r} is not a level; use DEBUG, INFO, WARNING or ERROR") from None
    logger.remove()
    options: dict[str, Any] = dict(level=level.upper(), diagnose=False, backtrace=False)
    if log_format == "json":
        handler = logger.add(sink, serialize=True, **options)
    else:
        handler = logger.add(sink, format=_text_format, **options)
    logging.basicConfig(handlers=[_IntoLoguru()], level=logging.DEBUG if level.upper() == "DEBUG" else logging.INFO,
                        force=True)
    for library in QUOTING_LOGGERS:
        logging.getLogger(library).setLevel(logging.WARNING)
    return handler


def _text_format(record: Any) -> str:
    fields = " ".join(f"{key}={value}" for key, value in record["extra"].items())
    fields = fields.replace("{", "{{").replace("}", "}}").replace("<", r"\<")
    return ("<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
            + (f"<cyan>{fields}</cyan> " if fields else "") + "{name}:{line} - <level>{message}</level>\n{exception}")


class _IntoLoguru(logging.Handler):
    """Hands standard logging records to loguru, attributed to their caller."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        depth = 0
        frame = logging.currentframe()
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())
