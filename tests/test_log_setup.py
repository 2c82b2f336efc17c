"""Tokens never reach a log, even in a traceback."""

from __future__ import annotations

import sys

from loguru import logger

from actors.log_setup import configure_logging


def test_tracebacks_show_no_variable_values() -> None:
    lines: list[str] = []
    configure_logging(lines.append)
    try:
        def join(token: str) -> None:
            raise RuntimeError("LiveKit refused")

        token = "-".join(["secret", "token", "value"])  # built, so no source line shows it
        try:
            join(token)
        except RuntimeError as error:
            logger.opt(exception=error).error("JoinRoom failed unexpectedly")
    finally:
        configure_logging(sys.stderr, level="DEBUG")
    text = "".join(lines)
    assert "JoinRoom failed unexpectedly" in text and "RuntimeError: LiveKit refused" in text
    assert "secret-token-value" not in text
