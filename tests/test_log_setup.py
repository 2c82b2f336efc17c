"""Logs: tokens never reach a log, even in a traceback; JSON or text lines
with the user's fields; the libraries' standard logging comes through."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest
from loguru import logger

from actors.operations.log_setup import LogSettingError, configure_logging
from bridge_harness import about_user, cloud, join_request, running_bridge


@pytest.fixture
def lines() -> Iterator[list[str]]:
    """What the test's own configure_logging(lines.append, ...) writes; the
    suite's logging is set up again afterwards."""
    written: list[str] = []
    yield written
    configure_logging(sys.stderr, level="DEBUG", log_format="text")


def test_tracebacks_show_no_variable_values(lines: list[str]) -> None:
    configure_logging(lines.append)

    def join(token: str) -> None:
        raise RuntimeError("LiveKit refused")

    token = "-".join(["secret", "token", "value"])  # built, so no source line shows it
    try:
        join(token)
    except RuntimeError as error:
        logger.opt(exception=error).error("JoinRoom failed unexpectedly")
    text = "".join(lines)
    assert "JoinRoom failed unexpectedly" in text and "RuntimeError: LiveKit refused" in text
    assert "secret-token-value" not in text


def test_json_lines_are_flat_in_better_stacks_schema_and_library_logs_come_through(lines: list[str]) -> None:
    configure_logging(lines.append, level="INFO", log_format="json", env="staging")
    with logger.contextualize(user_id="ann", room="room-ann", request_id="r1"):
        logger.info("joined")
    logging.getLogger("grpclib.protocol").warning("a library speaks")
    try:
        raise ValueError("no such room")
    except ValueError as error:
        logger.opt(exception=error).error("it broke")
    joined, library, broke = [json.loads(line) for line in lines]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", joined.pop("dt"))
    assert joined == {"level": "info", "message": "joined", "service": "livekit-bridge", "env": "staging",
                      "user_id": "ann", "room_name": "room-ann", "error": None, "request_id": "r1",
                      "logger": "test_log_setup"}
    assert library["message"] == "a library speaks" and library["level"] == "warn"
    assert library["user_id"] is None and library["logger"] == "test_log_setup"
    assert broke["level"] == "error" and broke["error"] == "no such room" and broke["error_type"] == "ValueError"
    assert "ValueError: no such room" in broke["traceback"]


def test_text_lines_show_fields_before_the_message(lines: list[str]) -> None:
    configure_logging(lines.append, level="INFO", log_format="text")
    with logger.contextualize(user_id="b{o}b"):
        logger.info("left")
    assert "user_id=b{o}b test_log_setup:" in lines[0] and lines[0].rstrip().endswith("- left")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_token_in_a_message_or_a_traceback_is_redacted_in_either_format(lines: list[str], log_format: str) -> None:
    import jwt

    token = jwt.encode({"sub": "cloud-agent:ann", "video": {"room": "room-ann"}}, "s" * 32, algorithm="HS256")
    configure_logging(lines.append, level="INFO", log_format=log_format)
    logger.info("joining with {}", token)
    try:
        raise RuntimeError(f"401 Unauthorized - invalid token: {token}")
    except RuntimeError as error:
        logger.opt(exception=error).error("JoinRoom failed")
    text = "".join(lines)
    assert "JoinRoom failed" in text and text.count("[redacted]") >= 2, text
    assert all(part not in text for part in token.split(".")), text


@pytest.mark.parametrize("setting", [dict(log_format="xml"), dict(level="LOUD")])
def test_bad_log_settings_are_refused_by_name(setting) -> None:
    with pytest.raises(LogSettingError) as caught:
        configure_logging(lambda line: None, **setting)
    assert ("LOG_FORMAT" if "log_format" in setting else "LOG_LEVEL") in str(caught.value)


async def test_a_sessions_lines_carry_its_user_and_never_a_secret(bridge_settings, livekit, log_records) -> None:
    # The bridge holds the LiveKit secret too (as `dev` with LIVEKIT_API_SECRET does), so it could leak it.
    settings = dataclasses.replace(bridge_settings, livekit_api_key=livekit.api_key,
                                   livekit_api_secret=livekit.api_secret)
    request = join_request(livekit, "fielded")
    async with running_bridge(settings) as bridge, cloud(bridge.address) as client:
        assert (await client.join(request)).success
        assert (await client.join(request)).success  # a replacement logs too
        await client.leave("fielded")
    about_fielded = about_user(log_records, "fielded")
    assert len(about_fielded) >= 3
    assert any(record["room_name"] == "room-fielded" for record in about_fielded)
    everything = json.dumps(log_records)
    assert request.token not in everything and livekit.api_secret not in everything
