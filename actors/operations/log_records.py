"""A log line as one flat JSON object: what the bridge writes on stderr
(LOG_FORMAT=json) and ships to Better Stack, with secrets taken out.

The schema keeps the Go bridge's field names at the top level, so the
runbook's Better Stack queries keep working:

- ``dt`` (RFC 3339, UTC), ``level`` (``debug``, ``info``, ``warn``,
  ``error``, ...), ``message``, ``service`` (``livekit-bridge``), ``env``
  (BRIDGE_LOG_ENV, else NODE_ENV; null when neither is set);
- ``user_id`` and ``room_name`` (null on lines about no user or room);
- ``error`` (the exception's text, or the failure's reason a line binds as
  ``error``; null otherwise), and with an exception ``error_type`` and
  ``traceback`` (without variable values);
- beside them, every other field the line carries (``request_id``,
  ``sdk_worker``, ``replacement``, ...) and ``logger`` (the module).

A field bound as ``room`` is written ``room_name``. The top-level fields
win over a bound field of the same name.

:class:`Redactor` takes secrets out of every string of a line (message,
error, traceback, fields): the values it is given (the bridge's secret
settings), JWTs (LiveKit tokens) and their parts (JWT_SHAPED: a payload
alone, or with its signature), URL query strings (signed URLs), bearer
credentials, and values assigned to names such as token, secret, password
or signature; and the whole value of a field so named. (A line is searched
for JWT_SHAPED when it holds ``eyJ`` or a secret's name, as every LiveKit
token does: the search costs more than the rest of a line's redaction.)
"""

from __future__ import annotations

import datetime
import json
import re
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

SERVICE = "livekit-bridge"
#: Fields written under another name: the Go bridge's (and the runbook's).
RENAMED_FIELDS = {"room": "room_name"}
#: loguru's level names as the Go bridge wrote them.
LEVEL_NAMES = {"WARNING": "warn"}
#: Strings longer than this are cut (a line stays well under any ingest limit).
MAX_STRING = 16_384
REDACTED = "[redacted]"
#: Known secrets shorter than this are not searched for (they would match ordinary words).
MIN_SECRET_LENGTH = 6

_SECRET_NAMES = r"(?:access_?token|token|secret|password|passwd|signature|authorization|credentials?)"
#: Anything of a JWT's shape: three base64url segments joined by dots, each of 16 characters or more (no host
#: name, address or version number has that; a signed JWT's header, payload and signature all do), or a segment
#: of base64url JSON ("eyJ...": a header or a payload, alone) with up to two segments after it (a payload and its
#: signature). The first kind is tried only where a run of such characters begins, so a scan stays linear.
JWT_SHAPED = (r"(?<![A-Za-z0-9_-])(?:[A-Za-z0-9_-]{16,}\.){2}[A-Za-z0-9_-]{16,}"
              r"|eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}")
_JWT = re.compile(JWT_SHAPED)
_URL_QUERY = re.compile(r"((?:https?|wss?)://[^\s?#\"'<>]+)\?[^\s#\"'<>]*", re.IGNORECASE)
_BEARER = re.compile(r"(\bbearer\s+)[^\s\"',;]+", re.IGNORECASE)
_ASSIGNED = re.compile(_SECRET_NAMES + r"""(["']?\s*[=:]\s*["']?)(?!\[redacted)[^\s"'&,;]{6,}""", re.IGNORECASE)
_SECRET_FIELD = re.compile(r"(?:^|_)" + _SECRET_NAMES + "$", re.IGNORECASE)
#: What one of the text patterns above needs to find: a string holding none of these (most) is searched once,
#: not four times. Redaction took 36 us of a line's 60 (bench/reports/log-shipping-2026-12-06.md), now 14;
#: a shipping bridge redacts each line twice (stderr and the shipper).
_MAY_HOLD_A_SECRET = re.compile(r"eyJ|://|(?i:bearer|token|secret|passw|signature|authorization|credential)")


class Redactor:
    """Takes secrets out of log lines (see the module's docstring)."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        known = {secret for secret in secrets if secret and len(secret) >= MIN_SECRET_LENGTH}
        self._known = sorted(known, key=len, reverse=True)  # a secret inside another goes after it

    def text(self, text: str) -> str:
        for secret in self._known:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if not _MAY_HOLD_A_SECRET.search(text):
            return text
        text = _JWT.sub(REDACTED, text)
        text = _URL_QUERY.sub(r"\1?" + REDACTED, text)
        text = _BEARER.sub(r"\1" + REDACTED, text)
        return _ASSIGNED.sub(lambda match: match.group(0)[:match.end(1) - match.start(0)] + REDACTED, text)

    def line(self, line: dict[str, Any]) -> dict[str, Any]:
        """``line`` with every string redacted (a new dict)."""
        return {key: REDACTED if isinstance(value, str) and _SECRET_FIELD.search(key) else self._value(value)
                for key, value in line.items()}

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return self.line(value)
        if isinstance(value, list):
            return [self._value(item) for item in value]
        return value


def flat_line(record: Mapping[str, Any], *, env: str | None) -> dict[str, Any]:
    """A loguru record in the flat schema, not yet redacted."""
    line = {RENAMED_FIELDS.get(key, key): _plain(value) for key, value in record["extra"].items()}
    line["logger"] = record["name"]
    exception = record["exception"]
    error = line.get("error")
    if exception is not None and exception.type is not None:
        error = _cut(str(exception.value) or exception.type.__name__)
        line["error_type"] = exception.type.__name__
        line["traceback"] = _cut("".join(traceback.format_exception(exception.type, exception.value,
                                                                      exception.traceback)))
    core = core_fields(record["level"].name, record["message"], record["time"], env=env,
                       user_id=line.get("user_id"), room_name=line.get("room_name"), error=error)
    return {**core, **{key: value for key, value in line.items() if key not in core}}


def core_fields(level: str, message: str, when: datetime.datetime, *, env: str | None, user_id: Any = None,
                room_name: Any = None, error: Any = None) -> dict[str, Any]:
    """The top-level fields every line has."""
    return {"dt": rfc3339_utc(when), "level": LEVEL_NAMES.get(level, level.lower()), "message": _cut(message),
            "service": SERVICE, "env": env, "user_id": user_id, "room_name": room_name, "error": error}


def rfc3339_utc(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def encode(line: dict[str, Any]) -> str:
    """One line of JSON (no newline)."""
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"), default=str)


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it: containers kept, other objects as their text, long strings cut."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item) for item in value]
    return _cut(str(value))


def _cut(text: str) -> str:
    if len(text) <= MAX_STRING:
        return text
    return f"{text[:MAX_STRING]}... [{len(text) - MAX_STRING} more characters cut]"
