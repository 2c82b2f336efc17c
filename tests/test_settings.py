"""One place reads configuration: every setting has its variable and its
flag, --help documents each with its default, and a bad value stops start-up
with a message that names it."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys

import pytest

from actors.operations.configuration import add_flags, declared
from actors.operations.settings import BridgeSettings, SettingsError
from bridge_harness import REPO



def parse(*argv: str, environ: dict[str, str] | None = None) -> BridgeSettings:
    parser = argparse.ArgumentParser()
    add_flags(parser, BridgeSettings)
    return BridgeSettings.load(environ or {}, parser.parse_args(argv))


def test_every_field_is_a_declared_setting() -> None:
    names = {field.name for field, _, _ in declared(BridgeSettings)}
    assert names == {field.name for field in dataclasses.fields(BridgeSettings)}
    variables = [declaration.env for _, declaration, _ in declared(BridgeSettings)]
    assert len(set(variables)) == len(variables)


def test_help_documents_every_setting_with_its_variable_and_default() -> None:
    shown = subprocess.run([sys.executable, "bridge_main.py", "--help"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout
    # An entry: from its flag to the next flag or the group's end, its help folded onto one line.
    entries = {match[1]: " ".join(match[2].split())
               for match in re.finditer(r"^  (--[a-z-]+)[^\n]*?(?:\s+)(.*?)(?=^  --|^\S|\Z)", shown, re.M | re.S)}
    for field, declaration, _ in declared(BridgeSettings):
        if declaration.secret:
            assert f"{declaration.env} (environment only" in shown, field.name
            assert declaration.flag not in entries
            continue
        entry = entries[declaration.flag]
        assert f"env {declaration.env}" in entry, entry
        assert re.search(r"; default \S+\)$", entry), entry
        if field.default in (None, ""):
            assert entry.endswith("; default unset)"), entry
    assert entries["--port"].endswith("default 9090)") and entries["--drain-grace"].endswith("default 0.5)")
    assert entries["--log-level"].endswith("(env LOG_LEVEL or BRIDGE_LOG_LEVEL; default info)")


def test_a_flag_wins_over_its_variable_and_an_empty_variable_is_unset() -> None:
    environ = {"PORT": "7000", "BRIDGE_MAX_CONCURRENT_CONNECTS": "4", "BRIDGE_HOST": "", "BRIDGE_CHAOS": "1",
               "BRIDGE_LOG_LEVEL": "DEBUG", "LOG_FORMAT": "JSON", "BRIDGE_PLAYBACK_REFUSE_PRIVATE": "on"}
    settings = parse("--port", "7001", "--no-chaos", "--track-idle-grace", "0.25", environ=environ)
    assert settings.port == 7001 and settings.chaos_enabled is False and settings.track_idle_grace == 0.25
    assert settings.max_concurrent_connects == 4 and settings.playback_refuse_private is True
    assert settings.host is None  # empty: unset
    assert settings.log_level == "debug" and settings.log_format == "json"  # the older name is read; any case
    assert parse(environ={"LOG_LEVEL": "error", "BRIDGE_LOG_LEVEL": "debug"}).log_level == "error"
    assert parse("--chaos").chaos_enabled is True
    assert parse().port == 9090


def test_secrets_come_from_the_environment_only_and_are_never_shown() -> None:
    settings = parse(environ={"BRIDGE_AUTH_TOKEN": "t0ken-value", "LIVEKIT_API_SECRET": "s3cret-value"})
    assert settings.auth_token == "t0ken-value" and settings.livekit_api_secret == "s3cret-value"
    assert "t0ken-value" not in repr(settings) and "s3cret-value" not in repr(settings)
    with pytest.raises(SystemExit):
        parse("--auth-token", "on-the-command-line")


@pytest.mark.parametrize("argv, environ, named", [
    ((), {"PORT": "ninety"}, "PORT='ninety' is not a whole number"),
    (("--port", "70000"), {}, "--port='70000' is above its maximum, 65535"),
    ((), {"BRIDGE_CONNECT_TIMEOUT": "0"}, "BRIDGE_CONNECT_TIMEOUT='0' is below its minimum"),
    (("--mic-buffer-packets", "1.5"), {}, "--mic-buffer-packets='1.5' is not a whole number"),
    ((), {"BRIDGE_CHAOS": "maybe"}, "BRIDGE_CHAOS='maybe' is not a yes/no value"),
    ((), {"BRIDGE_CONNECT_TIMEOUT": "nan"}, "BRIDGE_CONNECT_TIMEOUT='nan' is not a finite number"),
    (("--idle-session-ttl", "inf"), {}, "--idle-session-ttl='inf' is not a finite number"),
    ((), {"LOG_FORMAT": "xml"}, "LOG_FORMAT='xml' is not one of json, text"),
    ((), {"METRICS_PORT": "0"}, "METRICS_PORT='0' is below its minimum, 1"),
    ((), {"BRIDGE_REJOIN_BACKOFF_INITIAL": "5"}, "BRIDGE_REJOIN_BACKOFF_INITIAL is above BRIDGE_REJOIN_BACKOFF_MAX"),
])
def test_a_bad_value_is_refused_naming_the_setting(argv: tuple, environ: dict, named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse(*argv, environ=environ)
    assert named in str(caught.value)


def test_a_bad_value_stops_start_up_with_a_message_naming_it() -> None:
    started = subprocess.run([sys.executable, "bridge_main.py", "serve", "--max-concurrent-connects", "none"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert started.returncode == 2
    assert started.stderr.startswith("bridge: ") and "--max-concurrent-connects='none' is not a whole number" in \
        started.stderr, started.stderr


@pytest.mark.parametrize("command, environ, host", [
    ("serve", {"BRIDGE_AUTH_TOKEN": "t"}, "0.0.0.0"),  # a deployment is reached from other machines
    ("dev", {}, "127.0.0.1"),  # a server for this machine
    ("serve", {"BRIDGE_HOST": "127.0.0.1"}, "127.0.0.1"),
    ("serve", {"BRIDGE_HOST": "127.9.8.7"}, "127.9.8.7"),
    ("serve", {"BRIDGE_HOST": "::1"}, "::1"),
    ("serve", {"BRIDGE_HOST": "localhost"}, "localhost"),
    ("serve", {"LIVEKIT_GRPC_SOCKET": "/run/bridge.sock"}, "0.0.0.0"),  # no TCP listener at all
    ("serve", {"BRIDGE_INSECURE": "1"}, "0.0.0.0"),
    ("dev", {"BRIDGE_HOST": "0.0.0.0", "BRIDGE_INSECURE": "1"}, "0.0.0.0"),
])
def test_a_listener_starts_on_loopback_a_socket_with_a_token_or_when_told_it_is_insecure(
        command: str, environ: dict, host: str) -> None:
    assert parse(environ=environ).for_command(command).listen_host == host


@pytest.mark.parametrize("command, environ", [
    ("serve", {}),
    ("serve", {"BRIDGE_HOST": "10.0.0.5"}),
    ("serve", {"BRIDGE_HOST": "bridge.internal"}),  # a name may resolve to anything
    ("serve", {"BRIDGE_HOST": "::"}),
    ("dev", {"BRIDGE_HOST": "0.0.0.0"}),
    ("serve", {"BRIDGE_TLS_CERT": "/etc/hostname", "BRIDGE_TLS_KEY": "/etc/hostname"}),  # TLS says not who calls
])
def test_an_open_listener_beyond_loopback_without_a_token_is_refused_naming_the_three_ways_out(
        command: str, environ: dict) -> None:
    with pytest.raises(SettingsError) as caught:
        parse(environ=environ).for_command(command)
    message = str(caught.value)
    assert "without BRIDGE_AUTH_TOKEN" in message and "TLS encrypts but does not say who may call" in message
    assert all(way in message for way in ("set BRIDGE_AUTH_TOKEN", "LIVEKIT_GRPC_SOCKET", "BRIDGE_INSECURE=1"))
