"""Which LiveKit token a JoinRoom may carry.

The front door checks the token's claims (read, not verified: LiveKit
verifies the signature) before any message reaches the session supervisor,
so a wrong token is refused without touching the user's existing session.
A token that LiveKit would refuse, or that would put the bridge in a room
other than the one the cloud asked for, is refused with a message naming
what the token says and what was expected; nothing else of the token is
ever quoted.
"""

from __future__ import annotations

import dataclasses

from ..livekit.token import UnreadableToken, read_claims


class TokenRefused(Exception):
    """The JoinRoom's token cannot be the right one; the message says why and
    what the cloud should send instead."""


def expected_identity(user_id: str) -> str:
    """The identity the cloud mints for the bridge's participant of ``user_id``."""
    return f"cloud-agent:{user_id}"


@dataclasses.dataclass(frozen=True)
class AdmittedToken:
    """A token the bridge joins with, and what it says."""

    #: The room the session joins: the JoinRoom's room_name, or the token's room when room_name is empty.
    room: str
    #: The participant identity the bridge joins as.
    identity: str
    #: The identity is ``cloud-agent:<user_id>``, as the cloud mints it.
    identity_expected: bool


def admit_join_token(token: str, *, user_id: str, room_name: str, target_identity: str) -> AdmittedToken:
    """The token of a JoinRoom of ``user_id`` for ``room_name`` ("" takes
    the token's room), checked.

    Refused: a token whose claims cannot be read; without the roomJoin
    grant; with an empty identity; whose grant names no room, or a room
    other than ``room_name``; whose identity is ``target_identity`` (the
    user's phone, which LiveKit would evict: one participant per identity).
    An identity other than ``cloud-agent:<user_id>`` is admitted and said
    so (``identity_expected``): the bridge does not rely on its form.

    Raises:
        TokenRefused: the message names the token's value and the expected one.
    """
    try:
        claims = read_claims(token)
    except UnreadableToken as error:
        raise TokenRefused(f"token is not a LiveKit access token: {error}; send the JWT minted for this "
                           f"user's room") from None
    expected = expected_identity(user_id)
    if not claims.room_join:
        raise TokenRefused(f"token (identity {claims.identity!r}, room {claims.room!r}) has roomJoin false or "
                           f"missing in its video grant, where joining needs roomJoin true; mint it with roomJoin "
                           f"for room {room_name or claims.room!r}")
    if not claims.identity:
        raise TokenRefused(f"token identity (sub) is empty, where {expected!r} was expected; mint it with that "
                           f"identity")
    if not claims.room:
        raise TokenRefused(f"token grants room '' (none), where {room_name or 'a room'!r} was expected; mint it "
                           f"for the user's room")
    if room_name and claims.room != room_name:
        raise TokenRefused(f"token grants room {claims.room!r}, but room_name is {room_name!r}: the bridge would "
                           f"join the wrong room; mint the token for room {room_name!r}")
    if target_identity and claims.identity == target_identity:
        raise TokenRefused(f"token identity {claims.identity!r} is the target_identity {target_identity!r} (the "
                           f"user's phone), which LiveKit would evict from the room; mint it with identity "
                           f"{expected!r}")
    return AdmittedToken(room=claims.room, identity=claims.identity, identity_expected=claims.identity == expected)
