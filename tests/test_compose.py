"""compose.yaml as Compose reads it (podman-compose's `config`): the bridge
starts once livekit-server is healthy, with the image's defaults and a stop
timeout long enough to drain. (Not run here: no registry serves the
livekit-server image; docs/deploy.md says so.)"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
PODMAN_COMPOSE = pathlib.Path(sys.executable).parent / "podman-compose"


def config(**env: str) -> subprocess.CompletedProcess:
    clean = {name: value for name, value in os.environ.items()
             if not name.startswith(("LIVEKIT_", "BRIDGE_")) and name != "LOG_LEVEL"}
    return subprocess.run([str(PODMAN_COMPOSE), "-f", str(REPO / "compose.yaml"), "config"], capture_output=True,
                          text=True, env=clean | env, cwd=REPO, timeout=60)


def test_the_bridge_starts_once_livekit_is_healthy_and_has_time_to_drain() -> None:
    rendered = config(LIVEKIT_API_KEY="key", LIVEKIT_API_SECRET="secret")
    assert rendered.returncode == 0, rendered.stderr
    services = yaml.safe_load(rendered.stdout)["services"]
    livekit, bridge = services["livekit"], services["bridge"]
    assert bridge["depends_on"] == {"livekit": {"condition": "service_healthy"}}
    assert livekit["healthcheck"]["test"][-1] == "http://127.0.0.1:7880/"
    assert livekit["environment"]["LIVEKIT_KEYS"] == "key: secret"
    assert yaml.safe_load(livekit["environment"]["LIVEKIT_CONFIG"])["port"] == 7880
    assert bridge["environment"]["LIVEKIT_URL"] == "ws://127.0.0.1:7880"
    # The image's own defaults: the socket in the shared volume, no token to set, never BRIDGE_INSECURE.
    assert not {"BRIDGE_INSECURE", "LIVEKIT_GRPC_SOCKET"} & set(bridge["environment"])
    assert bridge["volumes"] == ["bridge-socket:/run/livekit-bridge"]
    assert bridge["stop_grace_period"] == "30s"
    assert bridge["build"]["args"] == ["BASE_IMAGE=debian:bookworm-slim"]
    # The same livekit-server as the tests run (justfile's livekit_version).
    version = re.search(r'^livekit_version := "(.+)"$', (REPO / "justfile").read_text(), re.M).group(1)
    assert livekit["image"] == f"livekit/livekit-server:v{version}"


def test_it_will_not_start_livekit_without_its_keys() -> None:
    missing = config(LIVEKIT_API_SECRET="secret")
    assert missing.returncode != 0 and "set LIVEKIT_API_KEY" in missing.stderr, missing
