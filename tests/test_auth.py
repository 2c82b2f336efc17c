"""BRIDGE_AUTH_TOKEN: over TCP every call must carry the bearer token; the
Unix socket relies on its file mode; the token is never logged. TLS with
BRIDGE_TLS_CERT and BRIDGE_TLS_KEY."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest
import trio
import trio_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from prometheus_client import REGISTRY

from actors.bridge import run_bridge
from actors.settings import BridgeSettings, SettingsError
from bridge_harness import GRPCURL, cloud, join_request

TOKEN = "s3cret-bridge-token-7f2c"
ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def bridge_settings(bridge_settings):
    return dataclasses.replace(bridge_settings, auth_token=TOKEN)


@pytest.mark.parametrize("metadata", [None, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}],
                         ids=["none", "wrong-token", "no-bearer-prefix"])
async def test_calls_without_the_token_are_unauthenticated_and_counted(bridge, livekit, metadata) -> None:
    def refused(method: str) -> float:
        return REGISTRY.get_sample_value("bridge_rpc_seconds_count",
                                         {"method": method, "code": "UNAUTHENTICATED"}) or 0.0

    before = {method: refused(method) for method in ("HealthCheck", "JoinRoom")}
    async with cloud(bridge.address, metadata) as client:
        for call in (client.health(), client.join(join_request(livekit, "intruder"))):
            with pytest.raises(GRPCError) as caught:
                await call
            assert caught.value.status == Status.UNAUTHENTICATED
            assert "authorization: Bearer" in caught.value.message
    assert {method: refused(method) - count for method, count in before.items()} == {"HealthCheck": 1,
                                                                                     "JoinRoom": 1}
    async with cloud(bridge.address, {"authorization": f"Bearer {TOKEN}"}) as client:
        assert "session:intruder" not in str(await client.actor_tree())


async def test_calls_with_the_token_work_and_the_token_is_never_logged(bridge, livekit, log_lines) -> None:
    async with cloud(bridge.address, {"authorization": f"Bearer {TOKEN}"}) as client:
        assert (await client.join(join_request(livekit, "trusted"))).success
        async with client.audio_stream("trusted"):
            assert (await client.status("trusted")).connected
        await client.leave("trusted")
    done = await trio.run_process(
        [str(GRPCURL), "-plaintext", "-H", f"authorization: Bearer {TOKEN}", bridge.address, "list"],
        capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0 and b"grpc.health.v1.Health" in done.stdout, done.stderr
    assert log_lines, "the run logged nothing to look at"
    assert not [line for line in log_lines if TOKEN in line]
    assert TOKEN not in repr(bridge.front_door._settings)


async def test_the_unix_socket_needs_no_token(bridge_settings, livekit, tmp_path: pathlib.Path) -> None:
    settings = dataclasses.replace(bridge_settings, unix_socket=str(tmp_path / "bridge.sock"))
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        running = await nursery.start(run_bridge, settings)
        async with cloud(running.address) as client:
            assert (await client.health()).status == 1
        nursery.cancel_scope.cancel()


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
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        running = await nursery.start(run_bridge, settings)

        async def grpcurl(*flags: str) -> subprocess.CompletedProcess:
            return await trio.run_process([str(GRPCURL), "-max-time", "20", *flags, running.address, "list"],
                                          capture_stdout=True, capture_stderr=True, check=False)

        secured = await grpcurl("-cacert", str(cert), "-H", f"authorization: Bearer {TOKEN}")
        assert secured.returncode == 0 and b"mentra.livekit.bridge.LiveKitBridge" in secured.stdout, secured.stderr
        assert (await grpcurl("-plaintext", "-H", f"authorization: Bearer {TOKEN}")).returncode != 0
        untrusted = await grpcurl("-H", f"authorization: Bearer {TOKEN}")  # the system's CAs do not know it
        assert untrusted.returncode != 0 and b"certificate" in untrusted.stderr

        # `tree` reaches it over TLS with the token, trusting the certificate (it needs no key).
        port = running.address.rsplit(":", 1)[1]
        environment = dict(os.environ, PORT=port, BRIDGE_TLS_CERT=str(cert), LOG_LEVEL="warning")
        shown = await trio.run_process([sys.executable, str(ROOT / "bridge_main.py"), "tree"], capture_stdout=True,
                                       capture_stderr=True, check=False,
                                       env=dict(environment, BRIDGE_AUTH_TOKEN=TOKEN))
        assert shown.returncode == 0 and shown.stdout.startswith(b"bridge  (0 StreamAudio calls open)"), shown.stderr
        refused = await trio.run_process([sys.executable, str(ROOT / "bridge_main.py"), "tree"], capture_stdout=True,
                                         capture_stderr=True, check=False, env=environment)
        assert refused.returncode == 1
        assert b"answered UNAUTHENTICATED" in refused.stderr and b"set BRIDGE_AUTH_TOKEN" in refused.stderr
        assert b"Traceback" not in refused.stderr
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("environment, named", [
    ({"BRIDGE_TLS_CERT": "/etc/hostname"}, "go together"),
    ({"BRIDGE_TLS_CERT": "/nonexistent.pem", "BRIDGE_TLS_KEY": "/etc/hostname"}, "BRIDGE_TLS_CERT='/nonexistent.pem'"),
])
def test_tls_settings_are_checked_at_start_up(environment: dict, named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        BridgeSettings.load(environment).check_for_serving()
    assert named in str(caught.value)
