"""The live actor tree (DescribeActors' JSON) rendered for a person: one line
per actor, indented by hierarchy, with what matters for its kind."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

_STATE_COLOURS = {"running": "32", "starting": "36", "restarting": "33", "stopping": "33", "crashed": "31",
                  "stopped": "90"}

#: The counters shown for each kind of actor, under short names; other kinds show none.
_KEY_COUNTERS = {
    "UserSession": [("connected", "connected"), ("stream_attached", "stream"), ("mic_packets_received", "in"),
                    ("cloud_chunks_published", "out"), ("mic_packets_lost", "lost"),
                    ("mic_buffer_dropped", "dropped"), ("playbacks_active", "playing")],
    "RoomLink": [("connected", "connected"), ("rejoins", "rejoins"), ("adoptions", "adopted")],
    "SessionSupervisor": [("sessions", "sessions"), ("joins", "joins"), ("replacements", "replaced"),
                          ("adoptions", "adopted"), ("failed_joins", "failed"), ("sessions_reaped", "reaped"),
                          ("connect_window", "window"), ("connects_waiting", "waiting")],
    "Playback": [("position_ms", "played_ms")],
    "SdkWorker": [("rooms", "rooms"), ("mic_packets_dropped_in_worker", "dropped")],
}
_KEY_DETAILS = {
    "UserSession": ["link"],
    "RoomLink": ["link", "room", "sdk"],
    "SdkWorker": ["pid"],
    "Playback": ["request_id", "state", "format", "track_id"],
}


def render(tree: dict[str, Any], *, user: str | None = None, colour: bool = False, now: float | None = None) -> str:
    """The tree as text; with ``user``, only that user's session and link and
    what is under them (a line saying so when the user has none)."""
    now = time.time() if now is None else now
    roots = tree.get("children", [])
    if user is not None:
        roots = user_nodes(tree, user)
        if not roots:
            return f"no session for user {user!r}\n"
    header = f"bridge  ({tree.get('front_door', {}).get('active_streams', 0)} StreamAudio calls open)"
    lines = [header] if user is None else []
    for node in roots:
        _render_node(node, 0 if user is not None else 1, lines, colour, now)
    return "\n".join(lines) + "\n"


def user_nodes(tree: dict[str, Any], user: str) -> list[dict[str, Any]]:
    """The user's link and session nodes (and what is under them), in the tree's order."""
    return [node for node in walk(tree.get("children", [])) if node.get("name") in (f"link:{user}", f"session:{user}")]


def walk(nodes: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every node of the tree under ``nodes``, parents before children."""
    for node in nodes:
        yield node
        yield from walk(node.get("children", []))


def _render_node(node: dict[str, Any], depth: int, lines: list[str], colour: bool, now: float) -> None:
    state = str(node.get("state", "?"))
    shown_state = f"\x1b[{_STATE_COLOURS.get(state, '0')}m{state}\x1b[0m" if colour else state
    kind = node.get("kind", "?")
    mailbox = node.get("mailbox", {})
    uptime = _duration(now - node.get("started_at", now))
    parts = [f"{'  ' * depth}{node.get('name', '?')}", kind, shown_state, f"up {uptime}"]
    if node.get("restarts"):
        parts.append(f"restarts {node['restarts']}")
    parts.append(f"mailbox {mailbox.get('depth', 0)}/{mailbox.get('capacity', '?')}")
    counters = node.get("counters", {})
    parts += [f"{short} {counters[key]}" for key, short in _KEY_COUNTERS.get(kind, []) if key in counters]
    details = node.get("details", {})
    parts += [f"{key} {_detail(details[key])}" for key in _KEY_DETAILS.get(kind, [])
              if details.get(key) not in (None, "")]
    if node.get("last_error"):
        parts.append(f"last error: {node['last_error']}")
    if node.get("given_up"):
        parts.append(f"given up: {node['given_up']}")
    lines.append("  ".join(parts))
    for child in node.get("children", []):
        _render_node(child, depth + 1, lines, colour, now)


def _detail(value: Any) -> str:
    """A detail on one line: a playback's source format as "wav/pcm_s16le 22050 Hz 1 ch"."""
    if isinstance(value, dict) and "format" in value:
        return f"{value['format']} {value.get('source_sample_rate', '?')} Hz {value.get('source_channels', '?')} ch"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
