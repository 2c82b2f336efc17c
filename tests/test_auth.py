"""BRIDGE_AUTH_TOKEN: over TCP every call must carry the bearer token; the
Unix socket relies on its file mode; the token is never logged. TLS with
BRIDGE_TLS_CERT and BRIDGE_TLS_KEY."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess

import pytest
from grpclib.const import Status
from prometheus_client import REGISTRY

from actors.operations.settings import BridgeSettings, SettingsError
from bridge_harness import cloud, expect_status, grpcurl, join_request, running_bridge, tree_command

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


@pytest.mark.parametrize("environment, named", [
    ({"BRIDGE_TLS_CERT": "/etc/hostname"}, "go together"),
    ({"BRIDGE_TLS_CERT": "/nonexistent.pem", "BRIDGE_TLS_KEY": "/etc/hostname"}, "BRIDGE_TLS_CERT='/nonexistent.pem'"),
])
def test_tls_settings_are_checked_at_start_up(environment: dict, named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        BridgeSettings.load(environment).check_for_serving()
    assert named in str(caught.value)
