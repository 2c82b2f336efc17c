"""No JoinRoom token in any output of the bridge's process family.

The bridge runs as the deployment runs it (``bridge_main.py serve``, its
stdout and stderr captured whole, its lines shipped to an ingest server),
with the SDK in worker processes (the default) and in process
(BRIDGE_SDK_WORKERS=0), with the SDK core's log at RUST_LOG's default (warn)
and at info. It is sent a JoinRoom whose token is signed with the wrong
secret and one whose token names an API key LiveKit does not know (both
refused by LiveKit, whose refusal the SDK core's log quotes with the token),
one that is accepted and then left, and one whose room is left as the bridge
stops. Nothing it wrote or shipped may hold any of the tokens, their
payloads or their signatures; and the SDK core's line about the refused
token must be there, redacted, so the test cannot pass merely because
nothing was logged.

Below it, the redactor and its relay alone (actors/operations/stderr_redaction.py):
tokens however the writes cut them, overlong lines, a child's last words
after it aborted, a stderr that takes nothing, and the worker's actor that
ends only once its process's last lines are out.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import trio
import trio_asyncio
from livekit import api

from actors.operations.log_records import REDACTED, Redactor
from actors.operations.settings import BridgeSettings
from actors.operations.stderr_redaction import (MAX_LINE, PIPE_BYTES, WRITE_PATIENCE, LineRedactor,
                                                open_child_stderr)
from actors.sdk_workers import worker as sdk_worker
from actors.sdk_workers.worker import SdkWorker, WorkerGone, WorkerSlot
from bridge_harness import REPO, bridge_identity, cloud, join_once_listening, join_request
from ingest_server import INGEST_TOKEN

#: How long a test waits for a relay to write what is left: a generous bound on a loaded machine, not
#: the bridge's own DRAIN_SECONDS.
RELAY_PATIENCE = 30.0
#: Built, so that no source line shows it whole.
WRONG_SECRET = "-".join(["not", "the", "servers", "secret", "5be0c7a94d1e"])
#: The SDK core's own line (env_logger's "LEVEL target" prefix) about a refused token, redacted.
SDK_REFUSAL = re.compile(r"(?:WARN|ERROR)\s+livekit\S*::\S+.*invalid token.*" + re.escape(REDACTED))


def minted(identity: str, room: str, api_key: str, api_secret: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True, can_publish_data=True)
    return api.AccessToken(api_key, api_secret).with_identity(identity).with_grants(grants).to_jwt()


@pytest.mark.parametrize("rust_log", [None, "info"], ids=["rust-log-default", "rust-log-info"])
@pytest.mark.parametrize("sdk_workers", ["2", "0"], ids=["sdk-in-workers", "sdk-in-process"])
async def test_no_join_token_payload_or_signature_reaches_stdout_stderr_or_the_shipped_lines(
        livekit, ingest, tmp_path, sdk_workers, rust_log) -> None:
    socket_path = tmp_path / "secrecy.sock"
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("RUST_LOG", "LOG_FORMAT")}
    environment.update(LIVEKIT_GRPC_SOCKET=str(socket_path), LIVEKIT_URL=livekit.url, BRIDGE_DRAIN_GRACE="0.2",
                       BETTERSTACK_SOURCE_TOKEN=INGEST_TOKEN, BETTERSTACK_INGESTING_HOST=ingest.host,
                       BRIDGE_LOG_SHIP_INTERVAL="0.1")
    environment["BRIDGE_SDK_WORKERS"] = sdk_workers  # (2: the default on two cores, whatever this machine has)
    if rust_log is not None:
        environment["RUST_LOG"] = rust_log
    tokens = {
        "wrong-signer": minted(bridge_identity("wrong-signer"), "room-wrong-signer", livekit.api_key, WRONG_SECRET),
        "unknown-key": minted(bridge_identity("unknown-key"), "room-unknown-key", "APIunknownKey7f3",
                              livekit.api_secret),
        "accepted": join_request(livekit, "accepted").token,
        "held": join_request(livekit, "held").token,  # its room is left as the bridge stops
    }
    stdout_path, stderr_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        process = subprocess.Popen([sys.executable, os.path.join(REPO, "bridge_main.py"), "serve"],
                                   env=environment, cwd=REPO, stdout=stdout, stderr=stderr)
    try:
        async with trio_asyncio.open_loop(), cloud(f"unix:{socket_path}") as client:
            for user in ("wrong-signer", "unknown-key"):
                refused = await join_once_listening(client, join_request(livekit, user, token=tokens[user]))
                assert not refused.success and "refused" in refused.error, refused
            assert (await client.join(join_request(livekit, "accepted", token=tokens["accepted"]))).success
            assert (await client.leave("accepted")).success
            assert (await client.join(join_request(livekit, "held", token=tokens["held"]))).success
        process.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(lambda: process.wait(timeout=30)) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = {"stdout": stdout_path.read_bytes().decode(errors="replace"),
              "stderr": stderr_path.read_bytes().decode(errors="replace"),
              "shipped": b"\n".join(ingest.bodies).decode(errors="replace")}
    for user, token in tokens.items():
        _, payload, signature = token.split(".")
        for part, secret in (("token", token), ("payload", payload), ("signature", signature)):
            for where, text in output.items():
                assert secret not in text, f"the {user} token's {part} is on {where}"
    # The SDK core did log the refusals, on stderr (not through the bridge's loguru), with the token taken out.
    assert len(SDK_REFUSAL.findall(output["stderr"])) >= 2, output["stderr"]
    if rust_log == "info":  # and what it logs as the bridge stops is out too
        assert 'Disconnected from room "room-held"' in output["stderr"], output["stderr"]
    assert ingest.received(lambda line: line["message"].startswith("JoinRoom failed")), ingest.lines


# -- the redactor and its relay, alone ------------------------------------------------------------------------

TOKEN = minted("someone", "some-room", "APIkey", WRONG_SECRET)
HEADER, PAYLOAD, SIGNATURE = TOKEN.split(".")


def feed_in_pieces(data: bytes, size: int) -> bytes:
    redactor = LineRedactor()
    return b"".join(redactor.feed(data[start:start + size]) for start in range(0, len(data), size)) + redactor.flush()


def test_a_token_its_payload_and_its_signature_are_redacted_however_the_writes_cut_them() -> None:
    text = (f"[WARN  livekit::rtc_engine] invalid token: {TOKEN}, again ?access_token={TOKEN}&x=1\n"
            f"payload alone {PAYLOAD}; payload and signature {PAYLOAD}.{SIGNATURE}\n"
            f"kept: ws://127.0.0.1:7880/rtc/v1 livekit 1.2.1 livekit_ffi::room_apis::server::room\n"
            f"unfinished {TOKEN}").encode()
    expected = (f"[WARN  livekit::rtc_engine] invalid token: {REDACTED}, again ?access_token={REDACTED}&x=1\n"
                f"payload alone {REDACTED}; payload and signature {REDACTED}\n"
                f"kept: ws://127.0.0.1:7880/rtc/v1 livekit 1.2.1 livekit_ffi::room_apis::server::room\n"
                f"unfinished {REDACTED}").encode()
    for size in (1, 2, 7, 64, len(text)):
        assert feed_in_pieces(text, size) == expected, size


def test_the_bridges_own_lines_lose_a_tokens_payload_and_signature_too() -> None:
    redactor = Redactor()
    assert redactor.text(f"claims {PAYLOAD} and signed {PAYLOAD}.{SIGNATURE}: {TOKEN}") == \
        f"claims {REDACTED} and signed {REDACTED}: {REDACTED}"


def test_an_overlong_line_goes_out_in_parts_never_cut_inside_a_token() -> None:
    # The token straddles MAX_LINE, where a cut at a fixed length would fall inside it.
    head = b"x" * (MAX_LINE - len(TOKEN) // 2)
    line = head + b" " + TOKEN.encode() + b" then " + b"z " * MAX_LINE + PAYLOAD.encode() + b"\n"
    run = b"A" * (MAX_LINE * 2) + b"." + SIGNATURE.encode() + b" the end\n"  # one run of token characters
    marker = REDACTED.encode()
    for size in (1000, 4096, 65536):
        assert feed_in_pieces(line + run, size) == \
            head + b" " + marker + b" then " + b"z " * MAX_LINE + marker + b"\n" + marker + b" the end\n", size


def test_the_last_words_of_a_child_that_aborts_are_relayed_after_it_is_gone(tmp_path) -> None:
    """A worker's crash: a line (unfinished) on fd 2, then abort(); the parent's relay reads it to the end."""
    out = tmp_path / "stderr"
    with open(out, "wb") as sink:
        stderr, relay = open_child_stderr("aborting child", sink.fileno())
        try:
            child = subprocess.Popen([sys.executable, "-c", "import os, sys; "
                                      f"os.write(2, b'[ERROR livekit] invalid token: {TOKEN}\\npanicked at '); "
                                      "os.abort()"], stderr=stderr)
        finally:
            os.close(stderr)
        assert child.wait(timeout=30) == -signal.SIGABRT
        relay.join(RELAY_PATIENCE)
        assert not relay.is_alive()
    assert out.read_bytes() == f"[ERROR livekit] invalid token: {REDACTED}\npanicked at ".encode()


def test_this_processs_own_stderr_is_filtered_its_own_log_lines_are_not_and_the_rest_goes_out_at_exit() -> None:
    script = ("import os, sys\n"
              "from actors.operations.stderr_redaction import filter_own_stderr\n"
              "own = filter_own_stderr()\n"
              f"own.write('own line, not filtered: {PAYLOAD}\\n')\n"  # (loguru's lines are redacted already)
              f"print('a traceback quoting {TOKEN}', file=sys.stderr)\n"
              f"os.write(2, b'unfinished {PAYLOAD}.{SIGNATURE}')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=30)
    assert done.returncode == 0 and done.stdout == b""
    lines = done.stderr.decode()
    assert f"own line, not filtered: {PAYLOAD}\n" in lines
    assert f"a traceback quoting {REDACTED}\n" in lines and lines.endswith(f"unfinished {REDACTED}")


def test_a_stderr_that_takes_nothing_holds_the_writer_up_no_longer_than_the_patience() -> None:
    """The real stderr stuck (a full pipe nobody reads): the relay drops what
    it reads, so the SDK's writes go on; once stderr takes lines again, the
    first says how much was dropped."""
    stuck_read, stuck = os.pipe()
    os.set_blocking(stuck, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(stuck, b"x" * 65536)
    os.set_blocking(stuck, True)
    stderr, relay = open_child_stderr("stuck", stuck)
    os.set_blocking(stderr, False)  # (so that a relay that blocks fails the test instead of hanging it)
    line = b"an SDK line " + b"y" * 100 + b"\n"
    started = time.monotonic()
    for _ in range(8 * PIPE_BYTES // len(line)):  # far more than the pipe and the stuck stderr hold
        while True:
            try:
                os.write(stderr, line)
                break
            except BlockingIOError:
                assert time.monotonic() - started < WRITE_PATIENCE + 10, "the SDK's writes were held up"
                time.sleep(0.001)
    held_up = time.monotonic() - started
    taken = bytearray()
    reader = threading.Thread(target=lambda: [taken.extend(data) for data in iter(
        lambda: os.read(stuck_read, 1 << 20), b"")])
    reader.start()  # stderr takes lines again
    time.sleep(0.2)
    os.set_blocking(stderr, True)
    os.write(stderr, b"after\n")
    os.close(stderr)
    relay.join(RELAY_PATIENCE)
    assert not relay.is_alive()  # (else closing its stderr below would pull it from under it)
    os.close(stuck)
    reader.join(5)
    assert held_up < WRITE_PATIENCE + 5 and relay.dropped == 0
    assert re.fullmatch(rb"x*\[stderr relay: \d+ bytes of the log dropped, stderr took nothing for 1 s\]\n"
                        rb"(an SDK line y+\n)*after\n", bytes(taken)), bytes(taken[-300:])


async def test_an_sdk_worker_is_reported_gone_only_once_its_last_lines_are_out(monkeypatch, capfd) -> None:
    """The bridge reads a worker process's stderr to its end before the
    worker's actor ends (and is restarted, or the bridge exits). Here the
    process exits before it is ready, and a child of its own holds its fd 2
    for 0.5 s more and writes last."""
    last_words = f"import os, time; time.sleep(0.5); os.write(2, b'last words {TOKEN}')"
    script = f"import os, subprocess, sys; subprocess.Popen([sys.executable, '-c', {last_words!r}]); os._exit(3)"
    monkeypatch.setattr(sdk_worker, "worker_command", lambda *arguments: [sys.executable, "-c", script])
    with pytest.raises(BaseExceptionGroup) as raised:
        await SdkWorker(WorkerSlot(1), BridgeSettings()).run()
    assert raised.group_contains(WorkerGone, match="exited before it was ready")
    stderr = capfd.readouterr().err
    assert stderr.endswith(f"last words {REDACTED}") and TOKEN not in stderr, stderr
