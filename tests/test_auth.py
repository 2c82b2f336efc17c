"""BRIDGE_AUTH_TOKEN: over TCP every call must carry the bearer token; the
Unix socket relies on its file mode; the token is never logged. TLS with
BRIDGE_TLS_CERT and BRIDGE_TLS_KEY."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import ssl
import subprocess

import grpclib.const
import grpclib.exceptions
import pytest
import trio
from grpclib.const import Status
from grpclib.health.check import ServiceStatus
from prometheus_client import REGISTRY
from trio_asyncio import aio_as_trio

from actors.grpc.standard_services import with_standard_services
from actors.operations.settings import BridgeSettings, SettingsError
from bridge_harness import (SERVICE, Cloud, cloud, expect_status, grpcurl, join_request, pcm_packet, phone_in_room,
                            running_bridge, tree_command)

TOKEN = "s3cret-bridge-token-7f2c"


@pytest.fixture
def bridge_settings(bridge_settings):
    return dataclasses.replace(bridge_settings, auth_token=TOKEN)


@pytest.mark.parametrize("metadata", [None, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}],
                         ids=["none", "wrong-token", "no-bearer-prefix"])
async def test_calls_without_the_token_are_unauthenticated_and_counted(bridge, livekit, metadata) -> None:
    def refused(method: str) -> float:
        return REGISTRY.get_sample_value("bridge_rpc_seconds_count",
                                         {"method": method, "code": "UNAUTHENTICATED"}) or 0.0

    before = {method: refused(method) for method in ("HealthCheck", "JoinRoom", "DescribeActors")}
    async with cloud(bridge.address, metadata) as client:
        # The debug service (the tree: user ids, rooms) is behind the same token.
        for call in (client.health(), client.join(join_request(livekit, "intruder")), client.actor_tree()):
            assert "authorization: Bearer" in await expect_status(Status.UNAUTHENTICATED, call)
    assert {method: refused(method) - count for method, count in before.items()} == {"HealthCheck": 1,
                                                                                     "JoinRoom": 1,
                                                                                     "DescribeActors": 1}
    async with cloud(bridge.address, {"authorization": f"Bearer {TOKEN}"}) as client:
        assert "session:intruder" not in str(await client.actor_tree())


async def call_once(client: Cloud, path: str, handler: grpclib.const.Handler) -> None:
    """One call of ``path`` with an empty request, ended after its first answer."""
    async def call() -> None:
        async with client.channel.request(path, handler.cardinality, handler.request_type, handler.reply_type,
                                          timeout=10, metadata=client.metadata) as stream:
            await stream.send_message(handler.request_type(), end=True)
            try:
                await stream.recv_message()
            except grpclib.exceptions.StreamTerminatedError:
                stream._maybe_raise()  # a status, then a reset (see AudioStream.recv)
                raise
            if stream._stream.closable:  # answered, and a watch would go on
                await stream.cancel()

    await aio_as_trio(call)()


async def test_every_method_of_every_service_needs_the_token(bridge) -> None:
    """Not only the calls above: the cloud's audio streams, the debug
    service's faults and watch, health and reflection; every method the
    bridge serves, read from its own list of services."""
    served = {path: handler for service in with_standard_services([bridge.front_door], ServiceStatus())
              for path, handler in service.__mapping__().items()}
    debug = "/mentra.livekit.bridge.debug.BridgeDebug/"
    assert {SERVICE + "StreamAudio", SERVICE + "PlayAudio", SERVICE + "StopAudio", debug + "InjectFault",
            debug + "WatchActors", "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"} <= set(served)
    answered = {}
    async with cloud(bridge.address) as client:
        for path, handler in served.items():
            try:
                await call_once(client, path, handler)
                answered[path] = "an answer"
            except grpclib.exceptions.GRPCError as error:
                answered[path] = f"{error.status.name}: {error.message}"
    refusal = "UNAUTHENTICATED: this bridge requires the metadata 'authorization: Bearer <BRIDGE_AUTH_TOKEN>'"
    assert {path: outcome for path, outcome in answered.items() if outcome != refusal} == {}
    refused = await grpcurl(bridge.address, "list")  # a real reflection client, as an operator runs it
    assert refused.returncode != 0 and b"Unauthenticated" in refused.stderr, refused.stderr


async def test_calls_with_the_token_work_and_the_token_is_never_logged(bridge, livekit, log_lines) -> None:
    async with cloud(bridge.address, {"authorization": f"Bearer {TOKEN}"}) as client:
        assert (await client.join(join_request(livekit, "trusted"))).success
        async with client.audio_stream("trusted"):
            assert (await client.status("trusted")).connected
        await client.leave("trusted")
    done = await grpcurl(bridge.address, "list", flags=("-plaintext", "-H", f"authorization: Bearer {TOKEN}"))
    assert done.returncode == 0 and b"grpc.health.v1.Health" in done.stdout, done.stderr
    assert log_lines, "the run logged nothing to look at"
    assert not [line for line in log_lines if TOKEN in line]
    assert TOKEN not in repr(bridge.front_door._settings)


async def test_the_unix_socket_needs_no_token(bridge_settings, livekit, tmp_path: pathlib.Path) -> None:
    settings = dataclasses.replace(bridge_settings, unix_socket=str(tmp_path / "bridge.sock"))
    async with running_bridge(settings) as running:
        async with cloud(running.address) as client:
            assert (await client.health()).status == 1


@pytest.fixture
def certificate(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=bridge",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


async def test_tls_serves_tcp_with_the_token_and_refuses_plaintext(bridge_settings, certificate) -> None:
    cert, key = certificate
    settings = dataclasses.replace(bridge_settings, tls_cert=str(cert), tls_key=str(key))
    bearer = ("-H", f"authorization: Bearer {TOKEN}")
    async with running_bridge(settings) as running:
        secured = await grpcurl(running.address, "list", flags=("-cacert", str(cert), *bearer))
        assert secured.returncode == 0 and b"mentra.livekit.bridge.LiveKitBridge" in secured.stdout, secured.stderr
        assert (await grpcurl(running.address, "list", flags=("-plaintext", *bearer))).returncode != 0
        untrusted = await grpcurl(running.address, "list", flags=bearer)  # the system's CAs do not know it
        assert untrusted.returncode != 0 and b"certificate" in untrusted.stderr

        # `tree` reaches it over TLS with the token, trusting the certificate (it needs no key).
        port = running.address.rsplit(":", 1)[1]
        environment = dict(os.environ, PORT=port, BRIDGE_TLS_CERT=str(cert), LOG_LEVEL="warning")
        shown = await tree_command(env=dict(environment, BRIDGE_AUTH_TOKEN=TOKEN))
        assert shown.returncode == 0 and shown.stdout.startswith(b"bridge  (0 StreamAudio calls open)"), shown.stderr
        refused = await tree_command(env=environment)
        assert refused.returncode == 1
        assert b"answered UNAUTHENTICATED" in refused.stderr and b"set BRIDGE_AUTH_TOKEN" in refused.stderr
        assert b"Traceback" not in refused.stderr


async def test_a_join_and_its_audio_stream_over_tls(bridge_settings, livekit, certificate) -> None:
    cert, key = certificate
    settings = dataclasses.replace(bridge_settings, tls_cert=str(cert), tls_key=str(key))
    trusting = ssl.create_default_context(cafile=str(cert))
    trusting.set_alpn_protocols(["h2"])
    async with running_bridge(settings) as running, \
            cloud(running.address, {"authorization": f"Bearer {TOKEN}"}, tls=trusting) as client, \
            phone_in_room(livekit, "over-tls") as phone:
        joined = await client.join(join_request(livekit, "over-tls"))
        assert joined.success, joined.error
        async with client.audio_stream("over-tls") as stream, trio.open_nursery() as nursery:
            nursery.start_soon(phone.keep_talking)
            with trio.fail_after(20):
                chunk = await stream.recv()
            assert chunk.user_id == "over-tls" and chunk.pcm_data == pcm_packet(chunk.pcm_data[0])
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("environment, named", [
    ({"BRIDGE_TLS_CERT": "/etc/hostname"}, "go together"),
    ({"BRIDGE_TLS_CERT": "/nonexistent.pem", "BRIDGE_TLS_KEY": "/etc/hostname"}, "BRIDGE_TLS_CERT='/nonexistent.pem'"),
])
def test_tls_settings_are_checked_at_start_up(environment: dict, named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        BridgeSettings.load(environment).check_for_serving()
    assert named in str(caught.value)
