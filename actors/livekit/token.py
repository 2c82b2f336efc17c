"""What the bridge may read from a LiveKit access token without verifying it."""

from __future__ import annotations

import base64
import json


def token_expiry(token: str) -> float | None:
    """The token's expiry (``exp``, seconds since the epoch), or None when it
    has none or cannot be read.

    The signature is not checked: LiveKit checks it. The bridge only needs to
    know when rejoining with this token stops making sense.
    """
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None
