"""Log shipping to Better Stack, against a real HTTPS ingest server with a CA
of its own (tests/ingest_server.py): what arrives (the runbook's lines and
their fields, the SDK workers' lines, never a secret), what a failing host
costs (nothing to the audio; bounded memory; counted drops), and the last
lines at SIGTERM, within a bound that a hanging host cannot stretch."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trio_asyncio
from grpclib.const import Status
from loguru import logger
from prometheus_client import REGISTRY

from actors.operations import log_shipping
from actors.operations.log_records import Redactor
from actors.operations.settings import BridgeSettings
from bridge_harness import (REPO, bridge_identity, cloud, expect_status, forged, join_once_listening, join_request,
                            phone_in_room, running_bridge, token)
from http_audio import audio_http_server
from ingest_server import INGEST_TOKEN, IngestCA, closed_port, hanging_listener, ingest_server
from proto.mentra.livekit import bridge as pb

# Built, so that no source line (which a traceback could quote) shows them whole.
AUTH_TOKEN = "-".join(["bridge", "auth", "token", "77aa0d"])
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
#: The smallest buffer the settings allow: a flood of lines overflows it.
SMALL_BUFFER = 64 * 1024


def shipping_to(settings: BridgeSettings, host: str, **overrides: Any) -> BridgeSettings:
    return dataclasses.replace(settings, betterstack_source_token=INGEST_TOKEN, betterstack_ingesting_host=host,
                               log_env="staging", log_ship_interval=0.1, **overrides)


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def until(found: Callable[[], Any], seconds: float = 20) -> Any:
    """``found()``'s first truthy answer, asked until ``seconds`` have passed."""
    with trio.fail_after(seconds):
        while not (answer := found()):
            await trio.sleep(0.05)
    return answer


def starting(prefix: str) -> Callable[[dict], bool]:
    return lambda line: line["message"].startswith(prefix)


async def test_a_join_a_replacing_join_failed_joins_and_a_leave_arrive_as_the_runbook_queries_them(
        bridge_settings, livekit, ingest) -> None:
    user, forged_user, refused_user = "shipped", "shipped-forged", "shipped-refused"
    shipped_before = counted("bridge_log_lines_shipped_total")
    async with running_bridge(shipping_to(bridge_settings, ingest.host)) as bridge, \
            phone_in_room(livekit, user), cloud(bridge.address) as client:
        request = join_request(livekit, user)
        assert (await client.join(request)).success
        assert (await client.join(request)).success  # the cloud restarted: it joins again
        forged_token = forged(join_request(livekit, forged_user).token)
        failed = await client.join(join_request(livekit, forged_user, token=forged_token))
        # LiveKit's refusal quotes the token: neither the answer nor the lines carry it.
        assert not failed.success and "refused" in failed.error and forged_token not in failed.error
        await expect_status(Status.INVALID_ARGUMENT, client.join(
            join_request(livekit, refused_user, token=token(livekit, bridge_identity(refused_user), "room-other"))))
        assert (await client.leave(user)).success
        await until(lambda: ingest.received(starting(f"user {user} leaves")))
    assert counted("bridge_log_lines_shipped_total") - shipped_before == len(ingest.lines)

    for line in ingest.lines:
        assert RFC3339_UTC.fullmatch(line["dt"]) and line["service"] == "livekit-bridge" and line["env"] == "staging"
        assert {"level", "message", "user_id", "room_name", "error"} <= line.keys(), line
    joined = ingest.received(starting("Successfully joined room"))
    assert [(line["user_id"], line["room_name"], line["level"]) for line in joined] == \
        [(user, f"room-{user}", "info")] * 2
    assert joined[0]["participant_id"] == bridge_identity(user) and joined[0]["result"] == "joined"
    replacing = ingest.received(starting("Replacing existing bridge session"))
    assert len(replacing) == 1 and replacing[0]["user_id"] == user, replacing
    assert replacing[0]["replacement"] in ("adopted", "rejoined") and replacing[0]["reason"]
    failures = {line["user_id"]: line for line in ingest.received(starting("JoinRoom failed"))}
    assert failures.keys() == {forged_user, refused_user}
    assert failures[forged_user]["grpc_status"] == "OK" and failures[forged_user]["error"] == failed.error
    refused = failures[refused_user]
    assert refused["grpc_status"] == "INVALID_ARGUMENT" and "grants room 'room-other'" in refused["error"]
    assert refused["room_name"] == f"room-{refused_user}" and refused["level"] == "warn"
    assert ingest.wrong_tokens == 0


async def test_the_sdk_worker_processes_lines_arrive(bridge_settings, ingest) -> None:
    settings = shipping_to(dataclasses.replace(bridge_settings, sdk_workers=2), ingest.host)
    from_workers = starting("SDK worker process ready")  # (worker_process.py logs it, in the process)
    async with running_bridge(settings):
        lines = await until(lambda: len(ingest.received(from_workers)) >= 2 and ingest.received(from_workers))
    assert len({line["sdk_worker"] for line in lines}) == 2, lines
    assert all(line["sdk_worker"].startswith("sdk-worker:") and line["env"] == "staging"
               and line["service"] == "livekit-bridge" for line in lines)


async def test_no_token_secret_or_signed_query_reaches_the_ingest_host(bridge_settings, livekit, ingest) -> None:
    user = "secretive"
    settings = shipping_to(bridge_settings, ingest.host, auth_token=AUTH_TOKEN, livekit_api_key=livekit.api_key,
                           livekit_api_secret=livekit.api_secret)
    request = join_request(livekit, user)
    signature = "-".join(["signature", "of", "the", "url", "9d2e"])
    with audio_http_server() as audio:
        signed_url = audio.url(f"/status/404?X-Amz-Credential=AKIA1234&X-Amz-Signature={signature}")
        async with running_bridge(settings) as bridge, \
                cloud(bridge.address, {"authorization": f"Bearer {AUTH_TOKEN}"}) as client:
            assert (await client.join(request)).success
            played = await client.play(pb.PlayAudioRequest(request_id="signed", audio_url=signed_url, user_id=user))
            assert played.events[-1].type == pb.PlayAudioEventEventType.FAILED
            # Lines as a careless call site or a library would write them, in the message, in fields and in an
            # exception, all of which the sink must clean.
            logger.bind(token=request.token, url=signed_url).warning(
                "careless: joined with {} from {} (auth {}; ingest {}; LiveKit secret {})", request.token,
                signed_url, AUTH_TOKEN, INGEST_TOKEN, livekit.api_secret)
            try:
                raise RuntimeError(f"careless: LiveKit said no to {request.token} (Authorization: Bearer {AUTH_TOKEN})")
            except RuntimeError as error:
                logger.opt(exception=error).error("careless: it failed with token={}", request.token)
            assert (await client.leave(user)).success
            careless = await until(lambda: len(ingest.received(starting("careless"))) == 2
                                   and ingest.received(starting("careless")))
    assert ingest.received(starting(f"user {user} leaves"))
    received = b"".join(ingest.bodies)
    for secret in (request.token, AUTH_TOKEN, INGEST_TOKEN, livekit.api_secret, signature):
        assert secret.encode() not in received, secret
    message, failure = careless
    assert message["token"] == "[redacted]" and message["url"] == audio.url("/status/404") + "?[redacted]"
    assert message["message"].count("[redacted]") == 5, message["message"]
    assert failure["error_type"] == "RuntimeError" and "[redacted]" in failure["error"]
    assert "careless: LiveKit said no to [redacted]" in failure["traceback"]


async def test_lines_logged_steadily_go_out_in_paced_requests_not_one_every_batch(bridge_settings, ingest) -> None:
    # 10 lines every 10 ms for a second: BRIDGE_LOG_SHIP_BATCH (10) would start a request every 10 ms, each
    # costing the bridge about 2 ms of CPU (bench/log_shipping.py); paced, each carries what waited.
    async with log_shipping.ship_logs(shipping_to(bridge_settings, ingest.host)):
        for tick in range(100):
            for index in range(10):
                logger.info("steady line {}", tick * 10 + index)
            await trio.sleep(0.01)
    assert len(ingest.received(starting("steady line "))) == 1000
    requests = ingest.answered(202)
    span = requests[-1].at - requests[0].at
    # Requests start at least MIN_REQUEST_GAP apart (the last one at exit excepted); a second of slack for
    # the first request's TLS handshake, which delays its arrival, not its start.
    assert len(requests) <= (span + 1.0) / log_shipping.MIN_REQUEST_GAP + 2, (len(requests), span)


@pytest.mark.parametrize(("text", "left"), [
    ("joined with eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl now", "joined with [redacted] now"),
    ("fetching https://tts.example/a.mp3?X-Amz-Date=20261206 failed",
     "fetching https://tts.example/a.mp3?[redacted] failed"),
    ("wss://livekit.example/rtc?access=abc123def", "wss://livekit.example/rtc?[redacted]"),
    ("header: Bearer abc123def456", "header: Bearer [redacted]"),
    ("PassWord=hunter2hunter2", "PassWord=[redacted]"),
    ("the api key is k3y-of-the-bridge here", "the api key is [redacted] here"),
    ("user u1 joined room room-u1 (participant cloud-agent:u1)",
     "user u1 joined room room-u1 (participant cloud-agent:u1)"),
])
def test_each_kind_of_secret_is_taken_out_of_a_string_holding_no_other(text: str, left: str) -> None:
    # (A string that seems to hold no secret is searched once, not once per kind: each kind alone is still found.)
    assert Redactor(["k3y-of-the-bridge"]).text(text) == left


#: What each failure is counted as, in bridge_log_batches_failed_total.
FAILED_AS = {"down": "unreachable", "hang": "unreachable", "500": "server_error", "429": "rate_limited",
             "413": "too_large", "403": "rejected"}
FLOOD_LINES = 2000


@pytest.mark.parametrize("failure", list(FAILED_AS))
async def test_a_failing_ingest_host_leaves_audio_flowing_memory_bounded_and_drops_counted(
        bridge_settings, livekit, ingest_ca, ingest, failure) -> None:
    user = f"unshipped-{failure}"
    with contextlib.ExitStack() as stack:
        host = {"down": closed_port, "hang": lambda: stack.enter_context(hanging_listener())}.get(
            failure, lambda: ingest.host)()
        ingest.mode = failure
        settings = shipping_to(bridge_settings, host, log_ship_buffer_bytes=SMALL_BUFFER)
        failed_before = counted("bridge_log_batches_failed_total", reason=FAILED_AS[failure])
        dropped_before = {reason: counted("bridge_log_lines_dropped_total", reason=reason)
                          for reason in ("buffer_full", "rejected", "too_large")}

        def dropped(reason: str) -> float:
            return counted("bridge_log_lines_dropped_total", reason=reason) - dropped_before[reason]

        async with running_bridge(settings) as bridge, phone_in_room(livekit, user) as phone, \
                cloud(bridge.address) as client, trio.open_nursery() as nursery:
            shipper = log_shipping._active
            assert shipper is not None and shipper.url == f"https://{host}"
            assert (await client.join(join_request(livekit, user))).success
            nursery.start_soon(phone.keep_talking)
            async with client.audio_stream(user) as stream:
                with trio.fail_after(20):
                    await stream.recv()
                for index in range(FLOOD_LINES):
                    logger.info("flood line {} {}", index, "x" * 200)
                if failure == "413":
                    logger.info("a line too large to ship alone {}", "y" * 4096)
                assert shipper.buffer.bytes <= SMALL_BUFFER
                # The bridge goes on carrying the phone's audio.
                with trio.fail_after(20):
                    for _ in range(10):
                        assert await stream.recv() is not None
                await until(lambda: counted("bridge_log_batches_failed_total", reason=FAILED_AS[failure])
                            > failed_before)
                assert shipper.buffer.bytes <= SMALL_BUFFER
                if failure in ("down", "hang", "500", "429"):
                    # Held back, the lines overflowed the buffer: the oldest went, counted.
                    assert dropped("buffer_full") > 0 and not ingest.lines
                if failure == "413":
                    await until(lambda: ingest.received(starting(f"flood line {FLOOD_LINES - 1} ")))
                    await until(lambda: dropped("too_large") == 1)
                    assert not ingest.received(starting("a line too large"))
                if failure == "403":
                    await until(lambda: dropped("rejected") > 0)
                    assert not ingest.lines and ingest.wrong_tokens == 0
                if failure == "429":
                    first, second = (await until(lambda: len(ingest.answered(429)) >= 2 and ingest.answered(429)))[:2]
                    assert second.at - first.at >= 0.95, "Retry-After: 1 was not waited for"
                if failure in ("500", "429"):
                    ingest.mode = "accept"  # it comes back: what was held goes out
                    await until(lambda: ingest.received(starting(f"flood line {FLOOD_LINES - 1} ")))
                if failure == "down":  # it comes back: what was held goes out
                    back = stack.enter_context(ingest_server(ingest_ca, INGEST_TOKEN, int(host.rsplit(":", 1)[1])))
                    await until(lambda: back.received(starting(f"flood line {FLOOD_LINES - 1} ")))
            nursery.cancel_scope.cancel()


# -- a bridge process at SIGTERM ---------------------------------------------------------------------


def bridge_process(livekit: Any, ca: IngestCA, host: str, socket_path: pathlib.Path, stderr: Any,
                   **environment: str) -> subprocess.Popen:
    """``bridge_main.py serve`` shipping to ``host``, on a Unix socket."""
    env = dict(PATH=os.environ["PATH"], LIVEKIT_GRPC_SOCKET=str(socket_path), LIVEKIT_URL=livekit.url,
               LOG_FORMAT="text", SSL_CERT_FILE=str(ca.ca_file), BETTERSTACK_SOURCE_TOKEN=INGEST_TOKEN,
               BETTERSTACK_INGESTING_HOST=host, NODE_ENV="staging", **environment)
    return subprocess.Popen([sys.executable, str(REPO / "bridge_main.py"), "serve"], cwd=REPO, env=env,
                            stderr=stderr)


@contextlib.contextmanager
def killed_at_the_end(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_sigterm_ships_what_a_bridge_process_buffered(livekit, ingest_ca, ingest, tmp_path) -> None:
    user = "drained-logs"
    socket_path = tmp_path / "bridge.sock"
    # Nothing goes out before the exit: the lines wait for 10,000 of them or an hour.
    with (tmp_path / "stderr.txt").open("w") as stderr, killed_at_the_end(bridge_process(
            livekit, ingest_ca, ingest.host, socket_path, stderr, BRIDGE_LOG_SHIP_INTERVAL="3600",
            BRIDGE_LOG_SHIP_BATCH="10000")) as process:
        async with trio_asyncio.open_loop(), cloud(f"unix:{socket_path}") as client:
            assert (await join_once_listening(client, join_request(livekit, user))).success
        assert not ingest.lines
        process.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(lambda: process.wait(timeout=60)) == 0
    messages = [line["message"] for line in ingest.lines]
    for said in ("shipping log lines at INFO and above to Better Stack",  # logged before listening
                 "gRPC front door listening on", "Successfully joined room room-drained-logs",
                 "SIGTERM received", "SDK worker process ready"):
        assert any(message.startswith(said) for message in messages), (said, messages)
    # A line of the teardown, after the drain: the user's room left.
    signalled_at = ingest.received(starting("SIGTERM received"))[0]["dt"]
    assert ingest.received(lambda line: line["message"].startswith(f"user {user} left room room-{user}")
                           and line["user_id"] == user and line["room_name"] == f"room-{user}"
                           and line["dt"] > signalled_at)
    assert all(line["env"] == "staging" for line in ingest.lines)


async def test_a_host_that_never_answers_does_not_hold_up_the_exit_past_the_bound(
        livekit, ingest_ca, tmp_path) -> None:
    socket_path = tmp_path / "bridge.sock"
    stderr_path = tmp_path / "stderr.txt"
    with hanging_listener() as host, stderr_path.open("w") as stderr, \
            killed_at_the_end(bridge_process(livekit, ingest_ca, host, socket_path, stderr)) as process:
        async with trio_asyncio.open_loop(), cloud(f"unix:{socket_path}") as client:
            with trio.fail_after(30):
                while True:
                    with contextlib.suppress(OSError):
                        assert (await client.health()).active_sessions == 0
                        break
                    await trio.sleep(0.2)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(lambda: process.wait(timeout=60))
        took = time.monotonic() - signalled
    said = stderr_path.read_text()
    assert code == 0, said
    # The drain (well under a second with nobody joined), then at most 2 s for the last lines: a generous
    # bound, far below what waiting for the host (5 s a connect, retried without end) would take.
    assert took < 2 + 6, (took, said)
    assert "were not shipped within 2 s at exit" in said, said
