"""The drop-in bundle in the cloud image's layout (an image test: part of
`just test`, and of `just image-test`).

A Debian image with no Python of its own holds the bundle built on the host
(deploy/build_bundle.sh, which `just bundle` runs and which keeps a bundle of
the same sources), copied into /app as deploy/Dockerfile.stage's COPY line does,
and runs the cloud's own start.sh unchanged (tests/cloud_image/): it starts
``./livekit-bridge &`` with LIVEKIT_GRPC_SOCKET=/tmp/livekit-bridge.sock,
waits up to 10 s for the socket, starts "the cloud" (a stand-in for bun) and
waits for either to exit. The container's /tmp is a folder of the test's,
so the cloud's real client (grpc-js, tests/node_cloud/cloud.mjs) on the host
reaches the bridge through that socket, and the bridge joins a room on the
test's livekit-server (``--network=host``: the test namespace's loopback).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pathlib
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio
import trio_asyncio

from audio_fixtures import tone, wav
from bridge_harness import bridge_identity, cloud, join_request
from containers import build_image, debian_base, podman, remove_container, run
from http_audio import audio_http_server
from test_node_cloud import NODE_CLIENT, run_node_cloud

REPO = pathlib.Path(__file__).resolve().parent.parent
BUNDLE = REPO / "build" / "bundle" / "livekit-bridge"
CLOUD_IMAGE = REPO / "tests" / "cloud_image"
IMAGE = "localhost/livekit-bridge-dropin-test:latest"
#: start.sh's socket, as the cloud's Dockerfile sets LIVEKIT_GRPC_SOCKET; /tmp is the test's folder.
SOCKET_IN_CONTAINER = "/tmp/livekit-bridge.sock"
_names = itertools.count()

pytestmark = pytest.mark.image


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The cloud-like image with the bundle in /app (built anew: the bundle may have changed)."""
    # (Built by `just bundle` in `just setup`; built here again only if the sources changed since.)
    subprocess.run([REPO / "deploy" / "build_bundle.sh"], check=True, timeout=900)
    if not os.path.isdir(os.path.join(NODE_CLIENT, "node_modules")) or shutil.which("node") is None:
        pytest.fail("the cloud's client needs node and tests/node_cloud/node_modules (`just node-client`)")
    context = tmp_path_factory.mktemp("cloud-image")
    shutil.copytree(BUNDLE, context / "livekit-bridge", symlinks=True)
    for name in ("Dockerfile", "start.sh", "bun"):
        shutil.copy2(CLOUD_IMAGE / name, context / name)
    return build_image(IMAGE, context=context, build_args={"BASE": debian_base(())})


@dataclass
class CloudContainer:
    name: str
    #: The bridge's socket, as the host sees it.
    socket: pathlib.Path

    def exec(self, script: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, "bash", "-c", script, check=False, timeout=60)

    def logs(self) -> str:
        done = podman("logs", self.name, check=False, timeout=60)
        return done.stdout + done.stderr

    def processes(self) -> dict[int, dict]:
        """pid -> its parent, executable and arguments, read from the container's /proc."""
        listing = self.exec('for d in /proc/[0-9]*; do printf "%s\\t%s\\t%s\\t%s\\n" "${d#/proc/}" '
                            '"$(grep ^PPid: $d/status | cut -f2)" "$(readlink $d/exe)" '
                            '"$(tr "\\0" " " < $d/cmdline)"; done 2>/dev/null').stdout
        found = {}
        for line in listing.splitlines():
            pid, ppid, exe, command = line.split("\t")
            if ppid:
                found[int(pid)] = {"ppid": int(ppid), "exe": exe, "argv": command.split()}
        return found

    def environ(self, pid: int) -> dict[str, str]:
        text = self.exec(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def wait(self, seconds: float) -> int:
        """The container's exit code, once it exits (within ``seconds``)."""
        return int(podman("wait", self.name, timeout=seconds).stdout.strip())


@contextlib.contextmanager
def cloud_container(image: str, tmp_path: pathlib.Path, *, env: dict[str, str] | None = None,
                    cpus: str | None = None) -> Iterator[CloudContainer]:
    """The image running start.sh, its /tmp the test's folder; removed afterwards."""
    shared_tmp = tmp_path / f"container-tmp-{next(_names)}"
    shared_tmp.mkdir()
    name = f"dropin-test-{os.getpid()}-{next(_names)}"
    container = CloudContainer(name, shared_tmp / os.path.basename(SOCKET_IN_CONTAINER))
    run(image, name=name, env=env, volumes=[f"{shared_tmp}:/tmp"], detach=True, remove=False,
        extra=["--cpus", cpus] if cpus else [])
    try:
        yield container
    finally:
        remove_container(name)


async def until_listening(container: CloudContainer) -> None:
    """Until start.sh has seen the socket and started the cloud (it gives the bridge 10 s)."""
    with trio.fail_after(30):
        while "Both services started successfully" not in container.logs():
            await trio.sleep(0.1)
    assert stat.S_ISSOCK(container.socket.stat().st_mode)


async def sdk_workers(address: str, count: int) -> list[dict]:
    """The SDK worker actors of the bridge's tree, once ``count`` of them run."""
    async with cloud(address) as client:
        with trio.fail_after(30):
            while True:
                workers = _of_kind(await client.actor_tree(), "SdkWorker")
                if len(workers) == count and all(worker["state"] == "running" for worker in workers):
                    return workers
                await trio.sleep(0.1)


def _of_kind(node: dict, kind: str) -> list[dict]:
    found = [node] if node.get("kind") == kind else []
    for child in node.get("children", []):
        found += _of_kind(child, kind)
    return found


def the_bridge(processes: dict[int, dict]) -> int:
    (pid,) = [pid for pid, process in processes.items() if process["argv"] == ["./livekit-bridge"]]
    return pid


async def test_the_cloud_reaches_the_bundle_through_start_sh_and_hears_the_phone(image, livekit, tmp_path) -> None:
    user = "dropin-user"
    request = join_request(livekit, user)
    env = {"BRIDGE_SDK_WORKERS": "2", "BRIDGE_AUTH_TOKEN": "not-for-workers", "LOG_FORMAT": "json"}
    with cloud_container(image, tmp_path, env=env) as container:
        async with trio_asyncio.open_loop():
            await until_listening(container)
            address = f"unix:{container.socket}"
            found = container.exec("command -v python3 python3.11 python; ls /usr/bin /usr/local/bin | grep python")
            assert found.returncode != 0 and found.stdout == "", found  # no Python of the image's own

            # The SDK workers run from the bundle's executable, children of the bridge, without its secrets.
            workers = await sdk_workers(address, 2)
            processes = container.processes()
            bridge = the_bridge(processes)
            assert processes[bridge]["exe"] == "/app/livekit-bridge"
            for worker in workers:
                process = processes[worker["details"]["pid"]]
                assert process["exe"] == "/app/livekit-bridge" and process["ppid"] == bridge, process
                assert process["argv"][:2] == ["/app/livekit-bridge", "__sdk_worker_process__"], process
                assert "BRIDGE_AUTH_TOKEN" not in container.environ(worker["details"]["pid"])
            assert container.environ(bridge)["BRIDGE_AUTH_TOKEN"] == "not-for-workers"
            # The bundle's other commands (their imports are found by PyInstaller too).
            health = container.exec("./livekit-bridge health")
            assert (health.returncode, health.stdout) == (0, "SERVING\n"), health

            # The cloud's own client: join, the phone's audio, a playback (PyAV in the bundle), leave.
            with audio_http_server() as server:
                audio_url = server.add("dropin.wav", wav(tone(16_000, 0.5, 440.0), 16_000, channels=1), "audio/wav")
                node_env = dict(os.environ, USER_ID=user, ROOM=request.room_name, JOIN_TOKEN=request.token,
                                LIVEKIT_URL=livekit.url, AUDIO_URL=audio_url)
                done = await run_node_cloud(_Address(address), livekit, user, request.room_name, node_env)
        assert done.returncode == 0, (done, container.logs()[-3000:])
        result = json.loads(done.stdout)
        assert result["join"]["success"] and result["join"]["participant_id"] == bridge_identity(user), result["join"]
        audio = result["audio_stream"]
        assert audio["code"] == "RECEIVED" and audio["received"], audio
        assert all(chunk == {"bytes": 3200, "sample_rate": 16000, "user_id": user} for chunk in audio["received"])
        events = result["play"]["events"]
        assert events[0]["type"] == "STARTED" and events[-1]["type"] == "COMPLETED", result["play"]
        assert result["leave"] == {"success": True, "error": ""}

        # SIGTERM to the container: start.sh's trap signals both, removes the
        # socket and exits at once, and with it the container: the bridge's
        # drain is cut short (its workers never get to leave their rooms).
        stopped = time.monotonic()
        podman("kill", "--signal", "TERM", container.name, timeout=60)
        assert container.wait(30) == 1
        took = time.monotonic() - stopped
        logs = container.logs()
        assert "Cleaning up processes" in logs
        assert "the bridge closed the connection; leaving every room" not in logs, (took, logs[-2000:])


@pytest.mark.parametrize("cpus", ["1", "2"])
async def test_the_default_number_of_workers_follows_the_containers_cpus(image, tmp_path, cpus) -> None:
    # The container may run on every core of the machine (its affinity): only the quota says --cpus.
    expected = int(cpus) if int(cpus) > 1 and len(os.sched_getaffinity(0)) >= int(cpus) else 0
    with cloud_container(image, tmp_path, cpus=cpus) as container:
        async with trio_asyncio.open_loop():
            await until_listening(container)
            workers = await sdk_workers(f"unix:{container.socket}", expected)
        processes = container.processes()
        assert sorted(worker["details"]["pid"] for worker in workers) == sorted(
            pid for pid, process in processes.items() if "__sdk_worker_process__" in process["argv"])

        # The cloud dies: start.sh's `wait -n` returns its status (143, killed by SIGTERM), which `set -e`
        # makes the script's own at once (its cleanup does not run); the container exits with it,
        # and the bridge with the container.
        (stand_in,) = [pid for pid, process in processes.items() if process["argv"] == ["sleep", "infinity"]]
        container.exec(f"kill {stand_in}")
        assert container.wait(30) == 143


@dataclass
class _Address:
    """What run_node_cloud needs of a bridge: where to reach it."""
    address: str
