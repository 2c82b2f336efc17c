"""Command line of the LiveKit bridge: `livekit-bridge` once installed, or `python bridge_main.py`.

    livekit-bridge [serve]         the bridge alone (TCP beyond loopback needs BRIDGE_AUTH_TOKEN or
                                   BRIDGE_INSECURE=1; LIVEKIT_GRPC_SOCKET serves a Unix socket)
    python bridge_main.py dev      a local livekit-server (dev mode, loopback) plus the bridge, on
                                   loopback unless BRIDGE_HOST says otherwise;
                                   with LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET set it
                                   uses that server instead and starts none
    python bridge_main.py tree     print a running bridge's live actor tree
                                   (--json, --watch [SECONDS], --user ID)
    livekit-bridge health          exit 0 if a running bridge answers SERVING to grpc.health.v1
                                   Health/Check, 1 otherwise (--timeout SECONDS); for HEALTHCHECK

Every setting below is read from its environment variable or its flag (the
flag wins); a bad value stops start-up with a message naming it. `tree` and
`health` reach the bridge with the same settings: run them with its environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pathlib
import signal
import sys
import tempfile

import socket
from typing import TYPE_CHECKING, Any

import trio
from loguru import logger

# Only what reading the settings and opening the listener need is imported up
# front: a restarted bridge listens before it imports the livekit SDK and the
# audio stack (most of a second), so the cloud's retry is queued, not refused.
from actors.grpc.listener import SocketPathError, open_listener
from actors.livekit.dev_server import start_dev_livekit
from actors.operations.configuration import add_flags
from actors.operations.log_setup import LogSettingError, configure_logging
from actors.operations.settings import BridgeSettings, SettingsError
from actors.operations.stderr_redaction import filter_own_stderr

if TYPE_CHECKING:
    from actors.bridge import RunningBridge


def serve(settings: BridgeSettings) -> None:
    listener = open_listener(host=settings.listen_host, port=settings.port, unix_socket=settings.unix_socket)
    trio.run(_serve_until_signalled, settings, listener)


async def _serve_until_signalled(settings: BridgeSettings, listener: socket.socket) -> None:
    """Run the bridge on ``listener`` until SIGTERM or SIGINT, then drain it
    and stop it the structured way: HealthCheck answers NOT_SERVING, new calls
    are refused, open PlayAudio calls end with UNAVAILABLE; then every
    session leaves its room and its StreamAudio ends with UNAVAILABLE (the
    cloud rejoins), as late as that, before the process exits. A second
    signal exits at once."""
    from actors.bridge import run_bridge

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(functools.partial(run_bridge, listener=listener), settings)
            async for signum in signals:
                name = signal.Signals(signum).name
                if running.front_door.draining:
                    logger.warning("{} received again; exiting at once", name)
                    os._exit(1)
                logger.info("{} received; draining, then stopping", name)
                nursery.start_soon(_drain_then_stop, running, settings, nursery.cancel_scope)


async def _drain_then_stop(running: RunningBridge, settings: BridgeSettings, stop: trio.CancelScope) -> None:
    await running.front_door.drain(timeout=settings.teardown_timeout / 2)
    # Load balancers poll HealthCheck: give them a moment to see NOT_SERVING.
    await trio.sleep(settings.drain_grace)
    stop.cancel()


def dev(settings: BridgeSettings) -> None:
    if settings.uses_external_livekit:
        logger.info("using the LiveKit server at {} (from LIVEKIT_URL); starting none", settings.default_livekit_url)
        serve(settings)
        return
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bridge-dev-livekit-"))
    livekit = start_dev_livekit(workdir, port=7880)
    from actors.operations.bridge_client import dial_address

    try:
        where = dial_address(settings)
        reach = (f" --livekit-grpc-socket {settings.unix_socket}" if settings.unix_socket
                 else f" --port {settings.port}" if settings.port != 9090 else "")
        grpcurl_target = f"-unix {settings.unix_socket}" if settings.unix_socket else where
        security = f"-cacert {settings.tls_cert}" if settings.tls_cert and not settings.unix_socket else "-plaintext"
        print(
            f"\nLiveKit dev server: {livekit.url}  (API key {livekit.api_key!r}; its secret is in "
            f"{workdir / 'livekit.yaml'})\n"
            f"LiveKit bridge gRPC: {where}  (service mentra.livekit.bridge.LiveKitBridge)\n"
            f"Actor tree:          python bridge_main.py tree{reach}\n"
            f"Health, reflection:  grpcurl {security} {grpcurl_target} list\n"
            f"Stop with Ctrl-C.\n",
            flush=True,
        )
        serve(dataclasses.replace(settings, default_livekit_url=livekit.url))
    finally:
        livekit.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(usage="%(prog)s [serve|dev|tree|health] [options]", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["serve", "dev", "tree", "health"], nargs="?", default="serve",
                        help="what to run (default serve)")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the bridge's version and those of "
                        "what it is built on, and exit")
    tree_flags = parser.add_argument_group("tree")
    tree_flags.add_argument("--json", action="store_true", help="the machine-readable JSON snapshot")
    tree_flags.add_argument("--watch", type=float, nargs="?", const=1.0, metavar="SECONDS",
                            help="redraw every SECONDS (default 1) until Ctrl-C")
    tree_flags.add_argument("--user", metavar="ID", help="only this user's session")
    parser.add_argument_group("health").add_argument(
        "--timeout", type=float, default=3.0, metavar="SECONDS",
        help="how long health waits for the answer (default 3)")
    add_flags(parser, BridgeSettings)
    args = parser.parse_args(argv)
    try:
        settings = BridgeSettings.load(os.environ, args)
        log_lines = sys.stderr
        if args.command in ("serve", "dev"):
            settings = settings.for_command(args.command)
            if not settings.sdk_worker_processes:
                # The SDK runs in this process: what its core logs on fd 2 passes through the redactor
                # (stderr_redaction.py); this process's own lines (loguru's) go past it.
                log_lines = filter_own_stderr()
        configure_logging(log_lines, level=settings.log_level, log_format=settings.log_format, env=settings.log_env,
                          secrets=settings.secret_values)
    except (SettingsError, LogSettingError) as error:
        print(f"bridge: {error}", file=sys.stderr)
        return 2
    if args.command in ("serve", "dev") and settings.log_shipping_url is not None:
        from actors.operations.log_shipping import start_log_shipping

        start_log_shipping(settings)  # buffering from here on, so the lines before listening go too; run_bridge sends
    if args.command in ("serve", "dev") and settings.open_to_the_network:
        logger.warning("serving TCP on {}:{} without BRIDGE_AUTH_TOKEN (BRIDGE_INSECURE is set): anyone who "
                       "reaches the port may call", settings.listen_host, settings.port)
    if args.command in ("tree", "health"):
        return _ask_the_running_bridge(args, settings)
    try:
        {"serve": serve, "dev": dev}[args.command](settings)
    except OSError as error:  # the listener's address: in use, or not this machine's
        where = settings.unix_socket or f"{settings.listen_host}:{settings.port}"
        print(f"bridge: cannot listen on {where}: {error.strerror or error}; stop what uses it or choose another "
              f"PORT, BRIDGE_HOST or LIVEKIT_GRPC_SOCKET", file=sys.stderr)
        return 2
    except BaseException as error:
        refused = SocketPathError.found_in(error)
        if refused is None:
            raise
        print(f"bridge: {refused}", file=sys.stderr)
        return 2
    return 0


def _ask_the_running_bridge(args: argparse.Namespace, settings: BridgeSettings) -> int:
    """`tree` or `health`: 0 when the bridge answered (health: SERVING), else 1 with the reason on stderr."""
    from actors.operations.bridge_client import BridgeUnavailable

    try:
        if args.command == "tree":
            from actors.operations.tree_command import print_tree

            print_tree(settings, as_json=args.json, watch=args.watch, user=args.user)
            return 0
        from actors.operations.health_command import health_status

        status = health_status(settings, timeout=args.timeout)
    except BridgeUnavailable as error:
        print(f"bridge: {error}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


class _Version(argparse.Action):
    """--version, reading the versions only when asked."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> None:
        from actors.operations.metrics import versions

        built_on = versions()
        parser.exit(message=f"livekit-bridge {built_on.pop('version')} ("
                    + ", ".join(f"{name} {value}" for name, value in built_on.items()) + ")\n")


if __name__ == "__main__":
    sys.exit(main())
