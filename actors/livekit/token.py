"""What the bridge may read from a LiveKit access token without verifying it.

The signature is not checked: the bridge has no API secret, and LiveKit
checks it when the token is used. The bridge reads the claims to refuse a
token that cannot be the right one before it acts on it, and to know when
rejoining with a token stops making sense.

LiveKit tokens (livekit-api's ``AccessToken.to_jwt``, the Node SDK alike) are
JWTs whose payload holds the identity in ``sub``, the expiry in ``exp`` and
the room grants under ``video`` (``room``, ``roomJoin``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from typing import Any


class UnreadableToken(ValueError):
    """The token is not a JWT with a JSON payload of LiveKit's claims; the
    message says what is wrong, never what the token holds."""


@dataclasses.dataclass(frozen=True)
class TokenClaims:
    """The claims of a LiveKit access token that the bridge uses."""

    #: The participant identity the token joins as (``sub``); "" when absent.
    identity: str
    #: The room its grant names (``video.room``); "" when absent.
    room: str
    #: Whether its grant allows joining that room (``video.roomJoin``).
    room_join: bool
    #: Its expiry in seconds since the epoch (``exp``); None when absent.
    expires_at: float | None


def read_claims(token: str) -> TokenClaims:
    """The claims of ``token``, read without verifying its signature.

    Raises:
        UnreadableToken: not three dot-separated parts, a payload that is not
            base64url JSON of an object, or a claim of the wrong type.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise UnreadableToken(f"a JWT has 3 dot-separated parts; this one has {len(parts)}")
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError) as error:
        raise UnreadableToken(f"its payload is not base64url-encoded JSON ({type(error).__name__})") from None
    if not isinstance(claims, dict):
        raise UnreadableToken("its payload is not a JSON object")
    video = claims.get("video", {})
    if not isinstance(video, dict):
        raise UnreadableToken("its 'video' claim (the room grants) is not a JSON object")
    expiry = claims.get("exp")
    if expiry is not None and (isinstance(expiry, bool) or not isinstance(expiry, (int, float))):
        raise UnreadableToken("its 'exp' claim is not a number")
    return TokenClaims(
        identity=_typed(claims, "sub", str, ""),
        room=_typed(video, "room", str, ""),
        room_join=_typed(video, "roomJoin", bool, False),
        expires_at=float(expiry) if expiry is not None else None,
    )


def _typed(claims: dict[str, Any], name: str, kind: type, absent: Any) -> Any:
    value = claims.get(name, absent)
    if not isinstance(value, kind):
        raise UnreadableToken(f"its {name!r} claim is not a {kind.__name__}")
    return value


def token_expiry(token: str) -> float | None:
    """The token's expiry (``exp``, seconds since the epoch), or None when it
    has none or cannot be read."""
    try:
        return read_claims(token).expires_at
    except UnreadableToken:
        return None
