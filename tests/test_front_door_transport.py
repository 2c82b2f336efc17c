"""The front door's transports: a Unix socket as deployed, and hundreds of
streams multiplexed on the cloud's one HTTP/2 connection."""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import socket
import stat
import subprocess

import pytest
import trio
import trio_asyncio

from actors.bridge import run_bridge
from actors.grpc.listener import SocketPathError
from actors.livekit.dev_server import free_port
from actors.operations.metrics import serve_metrics
from bridge_harness import (cloud, grpcurl, join_request, nodelay_of_accepted, pcm_packet, phone_in_room,
                            running_bridge)


async def test_unix_socket_serves_the_whole_audio_path(livekit, bridge_settings, tmp_path: pathlib.Path) -> None:
    socket_path = tmp_path / "bridge.sock"
    settings = dataclasses.replace(bridge_settings, unix_socket=str(socket_path))
    async with running_bridge(settings) as running:
        assert running.address == f"unix:{socket_path}" and socket_path.is_socket()
        async with cloud(running.address) as client, phone_in_room(livekit, "socket-user") as phone:
            joined = await client.join(join_request(livekit, "socket-user", livekit_url=""))  # the default URL
            assert joined.success, joined.error
            async with client.audio_stream("socket-user") as stream, trio.open_nursery() as talking:
                talking.start_soon(phone.keep_talking)
                with trio.fail_after(10):
                    chunk = await stream.recv()
                assert chunk.pcm_data == pcm_packet(chunk.pcm_data[0])  # a whole packet of the phone's
                talking.cancel_scope.cancel()


async def test_the_socket_is_0660_in_a_folder_made_for_it_and_a_stale_one_is_replaced(
        bridge_settings, tmp_path: pathlib.Path) -> None:
    socket_path = tmp_path / "run" / "bridge" / "bridge.sock"
    settings = dataclasses.replace(bridge_settings, unix_socket=str(socket_path))
    async with running_bridge(settings):
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o660
    # A socket file whose process died without removing it.
    socket_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(socket_path))
    assert socket_path.is_socket()
    async with running_bridge(settings) as running:
        async with cloud(running.address) as client:
            assert (await client.health()).status == 1  # SERVING


@pytest.mark.parametrize("occupant", ["a live bridge", "a regular file"])
async def test_a_socket_path_in_use_is_refused_with_a_reason(bridge_settings, tmp_path: pathlib.Path,
                                                            occupant: str) -> None:
    socket_path = tmp_path / "bridge.sock"
    settings = dataclasses.replace(bridge_settings, unix_socket=str(socket_path))
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        if occupant == "a live bridge":
            await nursery.start(run_bridge, settings)
            why = "another process is serving"
        else:
            socket_path.write_text("not a socket")
            why = "is not a socket"
        with pytest.raises(BaseException) as caught:
            await nursery.start(run_bridge, settings)
        error = SocketPathError.found_in(caught.value)
        assert error is not None, caught.value
        assert why in str(error) and "LIVEKIT_GRPC_SOCKET" in str(error)
        if occupant == "a live bridge":
            async with cloud(f"unix:{socket_path}") as client:  # the first one still serves
                assert (await client.health()).status == 1
        nursery.cancel_scope.cancel()


async def test_300_concurrent_streams_share_one_connection(bridge, livekit) -> None:
    users = [f"crowd-{index}" for index in range(300)]
    async with cloud(bridge.address) as client:  # one channel: one HTTP/2 connection
        limiter = trio.CapacityLimiter(30)

        async def join(user: str) -> None:
            async with limiter:
                joined = await client.join(join_request(livekit, user))
                assert joined.success, joined.error

        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                for user in users:
                    nursery.start_soon(join, user)

        async with trio.open_nursery() as nursery:
            streams = {}
            all_open = trio.Event()

            async def hold_stream(user: str) -> None:
                async with client.audio_stream(user) as stream:
                    streams[user] = stream
                    if len(streams) == len(users):
                        all_open.set()
                    await trio.sleep_forever()

            for user in users:
                nursery.start_soon(hold_stream, user)
            with trio.fail_after(120):
                await all_open.wait()
                while (await client.health()).active_streams < len(users):
                    await trio.sleep(0.1)
            # The last stream opened carries audio like the first.
            async with phone_in_room(livekit, users[-1]) as phone, trio.open_nursery() as talking:
                talking.start_soon(phone.keep_talking)
                with trio.fail_after(30):
                    chunk = await streams[users[-1]].recv()
                assert chunk.pcm_data == pcm_packet(chunk.pcm_data[0])
                talking.cancel_scope.cancel()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("over_tls", [False, True], ids=["plain", "tls"])
async def test_accepted_tcp_connections_have_nagle_off(bridge_settings, over_tls: bool,
                                                      tmp_path: pathlib.Path) -> None:
    """Each microphone packet is a small HTTP/2 write: with Nagle's algorithm on,
    it waits for the ACK of the write before it, which the client delays (tens
    of ms a packet). Read from the kernel's socket, plain and over TLS."""
    settings = bridge_settings
    if over_tls:
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=bridge", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                        str(cert)], check=True, capture_output=True)
        settings = dataclasses.replace(settings, tls_cert=str(cert), tls_key=str(key))
    async with running_bridge(settings) as running:
        port = int(running.address.rsplit(":", 1)[1])
        if over_tls:  # a call goes through over TLS; a connection is held open to read the bridge's side of
            answered = await grpcurl(running.address, "list", flags=("-cacert", str(cert)))
            assert answered.returncode == 0, answered.stderr
            held = contextlib.closing(socket.create_connection(("127.0.0.1", port)))
        else:
            held = cloud(running.address)
        async with contextlib.AsyncExitStack() as stack:
            client = stack.enter_context(held) if over_tls else await stack.enter_async_context(held)
            if not over_tls:
                assert (await client.health()).status == 1
            assert await nodelay_of_accepted(port) == [1]


async def test_the_metrics_server_has_nagle_off() -> None:
    """A scrape's response is written as headers, then body: with Nagle on,
    the body waits for the scraper's delayed ACK of the headers."""
    port = free_port()
    with serve_metrics(port, "127.0.0.1"), socket.create_connection(("127.0.0.1", port)) as scraper:
        scraper.sendall(b"GET /metrics HTTP/1.1\r\n")  # the request is not finished: the connection stays open
        assert await nodelay_of_accepted(port) == [1]
        scraper.sendall(b"Host: 127.0.0.1\r\n\r\n")
        scraper.settimeout(10)
        response = b""
        while chunk := scraper.recv(1 << 16):  # an HTTP/1.0 server: the response ends with the connection
            response += chunk
        assert b"bridge_build_info" in response
