"""How the bridge logs: loguru, the one sink for the bridge and the libraries
it hosts, as JSON lines or text, without variable values in tracebacks.

loguru's default handler prints every frame's local variables next to a
traceback ("diagnose"); a JoinRoom frame holds the user's LiveKit token, and
tokens must never reach a log. Log lines about a user carry ``user_id`` (and
``room``, ``request_id`` where they apply) as fields: actors bind them with
``logger.contextualize``; JSON lines are flat objects with them beside the
message (log_records.py: the schema Better Stack receives too, secrets taken
out), text lines show them as key=value before the message. The bridge's
entry point calls ``configure_logging`` before anything else logs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from loguru import logger

from .log_records import Redactor, encode, flat_line

LOG_FORMATS = ("json", "text")
#: Libraries whose records quote header values (bearer tokens) or whole URLs
#: with their query strings (signed audio URLs): kept at WARNING whatever the level.
QUOTING_LOGGERS = ("hpack", "h2", "httpx", "httpcore")


class LogSettingError(ValueError):
    """LOG_FORMAT or LOG_LEVEL holds a value the bridge cannot use."""


def configure_logging(sink: Any = sys.stderr, *, level: str = "INFO", log_format: str | None = None,
                      env: str | None = None, secrets: Iterable[str | None] = ()) -> int:
    """Replace every handler with one that never prints variable values, and
    route the standard logging of libraries (livekit, grpclib, asyncio,
    httpx) into it.

    ``log_format`` is "json" (one flat JSON object a line, its ``env`` field
    ``env``, ``secrets`` and other credentials taken out: log_records.py),
    "text", or None: text on a terminal, JSON otherwise. Returns the handler
    id (for logger.remove).

    Raises:
        LogSettingError: an unknown format or level.
    """
    log_format = chosen_format(log_format, sink)
    if log_format not in LOG_FORMATS:
        raise LogSettingError(f"LOG_FORMAT={log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    try:
        logger.level(level.upper())
    except ValueError:
        raise LogSettingError(f"LOG_LEVEL={level!r} is not a level; use DEBUG, INFO, WARNING or ERROR") from None
    logger.remove()
    options: dict[str, Any] = dict(level=level.upper(), diagnose=False, backtrace=False)
    redactor = Redactor(secrets)
    if log_format == "json":
        # (format: loguru still renders one; the message alone is the cheapest)
        handler = logger.add(json_lines(sink, env=env, redactor=redactor), format="{message}", **options)
    else:
        colorize = getattr(sink, "isatty", lambda: False)()  # (loguru's own choice for a stream)
        handler = logger.add(text_lines(sink, redactor=redactor), format=_text_format, colorize=colorize, **options)
    logging.basicConfig(handlers=[_IntoLoguru()], level=logging.DEBUG if level.upper() == "DEBUG" else logging.INFO,
                        force=True)
    for library in QUOTING_LOGGERS:
        logging.getLogger(library).setLevel(logging.WARNING)
    return handler


def chosen_format(log_format: str | None, sink: Any = sys.stderr) -> str:
    """``log_format``, or when None: text on a terminal, JSON otherwise."""
    if log_format is not None:
        return log_format
    return "text" if getattr(sink, "isatty", lambda: False)() else "json"


def json_lines(sink: Any, *, env: str | None, redactor: Redactor) -> Callable[[Any], None]:
    """A loguru sink writing each record to ``sink`` (a stream, or a function
    given each line) as one flat JSON object and a newline."""
    write: Callable[[str], Any] = getattr(sink, "write", sink)
    flush: Callable[[], Any] = getattr(sink, "flush", lambda: None)

    def write_line(message: Any) -> None:
        write(encode(redactor.line(flat_line(message.record, env=env))) + "\n")
        flush()

    return write_line


def text_lines(sink: Any, *, redactor: Redactor) -> Callable[[Any], None]:
    """A loguru sink writing each formatted line to ``sink``, secrets taken out
    as in JSON lines (a terminal's lines are as secret as a shipped one's)."""
    write: Callable[[str], Any] = getattr(sink, "write", sink)
    flush: Callable[[], Any] = getattr(sink, "flush", lambda: None)

    def write_line(message: Any) -> None:
        write(redactor.text(str(message)))
        flush()

    return write_line


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
