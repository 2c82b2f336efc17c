"""`bridge_main.py tree`: a running bridge's live actor tree, printed.

It reaches the bridge as its settings describe it (``bridge_client``).
"""

from __future__ import annotations

import contextlib
import json
import sys

from grpclib.client import Channel

from proto.mentra.livekit.bridge.debug import BridgeDebugStub, DescribeActorsRequest, WatchActorsRequest

from .bridge_client import call_bridge
from .settings import BridgeSettings
from .tree_view import render, user_nodes


def print_tree(settings: BridgeSettings, *, as_json: bool = False, watch: float | None = None,
               user: str | None = None) -> None:
    """Print the tree once or, with ``watch``, every ``watch`` seconds until Ctrl-C.

    Raises:
        BridgeUnavailable: nothing listens where the settings point, or the
            bridge answered with an error (UNAUTHENTICATED without the token).
    """
    def show(tree_json: str) -> None:
        snapshot = json.loads(tree_json)
        if as_json:
            if user is not None:
                snapshot = {"user": user, "children": user_nodes(snapshot, user)}
            text = json.dumps(snapshot, indent=2) + "\n"
        else:
            text = render(snapshot, user=user, colour=sys.stdout.isatty())
        if watch is not None and sys.stdout.isatty():
            text = "\x1b[H\x1b[J" + text  # redraw in place
        sys.stdout.write(text)
        sys.stdout.flush()

    async def run(channel: Channel, metadata: dict[str, str] | None) -> None:
        stub = BridgeDebugStub(channel, metadata=metadata)
        if watch is None:
            show((await stub.describe_actors(DescribeActorsRequest(), timeout=5)).tree_json)
        else:
            async for reply in stub.watch_actors(WatchActorsRequest(interval_seconds=watch)):
                show(reply.tree_json)

    with contextlib.suppress(KeyboardInterrupt):
        call_bridge(settings, run)
