"""The standalone image (Dockerfile), built and run with podman: what it
holds, that its defaults start and its health turns SERVING, that the cloud's
own client hears a phone through it, and that `podman stop` drains it.

Part of `just test` (`just image-test` runs them alone); `just image-tools`
installs podman and mmdebstrap and makes the Debian base and the wheelhouse
first (tests/containers.py). The containers share the tests' loopback-only
namespace (--network=host).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Mapping

import pytest
import trio
import trio_asyncio
from grpclib.const import Status

import containers
from actors.livekit.dev_server import free_port  # (outside the ephemeral range)
from bridge_harness import bridge_identity, cloud, join_request, list_participants, numbered_pcm, phone_in_room

HERE = pathlib.Path(__file__).resolve().parent
NODE_CLIENT = HERE / "node_cloud"
PROTO = HERE.parent / "proto" / "livekit_bridge.proto"
IMAGE = "localhost/livekit-bridge:test"
#: The user the image runs as (Dockerfile), who must be able to create the socket in the mounted folder.
IMAGE_UID = 10001
#: The stop timeout the deploy guide asks for; the drain takes a few seconds of it.
STOP_TIMEOUT = 30

pytestmark = pytest.mark.image


@pytest.fixture(scope="module")
def image() -> str:
    """The Dockerfile built on a bookworm base made with mmdebstrap, from the wheelhouse, with no network."""
    base = containers.debian_base(containers.PYTHON_RUNTIME)
    containers.wheelhouse()
    return containers.build_image(IMAGE, build_args={"BASE_IMAGE": base})


@contextlib.asynccontextmanager
async def bridge_container(image: str, tmp_path: pathlib.Path, env: Mapping[str, str] | None = None
                           ) -> AsyncIterator[tuple[str, pathlib.Path]]:
    """The image run with its defaults (and ``env``), its socket folder
    mounted from the host; yields the container's name and the socket's path.
    Removed at the end, whatever happened."""
    folder = tmp_path / f"socket-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    os.chown(folder, IMAGE_UID, IMAGE_UID)
    name = f"livekit-bridge-test-{uuid.uuid4().hex[:10]}"
    await trio.to_thread.run_sync(lambda: containers.run(
        image, name=name, env=env, volumes=[f"{folder}:/run/livekit-bridge"], detach=True, remove=False,
        extra=["--stop-timeout", str(STOP_TIMEOUT)], timeout=120))
    try:
        yield name, folder / "bridge.sock"
    finally:
        await trio.to_thread.run_sync(containers.remove_container, name)


async def until_healthy(name: str, seconds: float = 60) -> None:
    """Run the image's HEALTHCHECK (podman healthcheck run) until it passes."""
    with trio.fail_after(seconds):
        while True:
            check = await trio.to_thread.run_sync(
                lambda: containers.podman("healthcheck", "run", name, check=False, timeout=60))
            if check.returncode == 0:
                return
            state = await trio.to_thread.run_sync(lambda: container_state(name))
            assert state["Running"], f"the container stopped: {state}\n{logs(name)}"
            await trio.sleep(0.5)


def container_state(name: str) -> dict:
    return json.loads(containers.podman("inspect", "--format", "{{json .State}}", name).stdout)


def logs(name: str) -> str:
    done = containers.podman("logs", name, check=False)
    return done.stdout + done.stderr


def test_the_image_runs_the_bridge_as_a_user_with_health_and_a_graceful_stop(image: str) -> None:
    [inspected] = json.loads(containers.podman("image", "inspect", image).stdout)
    config = inspected["Config"]
    assert config["User"] == "livekit-bridge"
    assert "9090/tcp" in config["ExposedPorts"]
    env = dict(variable.split("=", 1) for variable in config["Env"])
    assert (env["PORT"], env["LOG_LEVEL"], env["LIVEKIT_GRPC_SOCKET"]) == (
        "9090", "info", "/run/livekit-bridge/bridge.sock")
    assert "BRIDGE_INSECURE" not in env and "BRIDGE_AUTH_TOKEN" not in env
    assert config["StopSignal"] in ("SIGTERM", "15")
    assert inspected["Healthcheck"]["Test"] == ["CMD", "livekit-bridge", "health"]
    assert config["Entrypoint"] == ["livekit-bridge"] and config["Cmd"] == ["serve"]
    # A runtime: no compiler, headers, pip, apt lists or caches.
    leftovers = containers.run(image, "-c", "for path in /usr/bin/gcc /usr/bin/cc /usr/bin/make /usr/include/python3.11 "
                               "/opt/livekit-bridge/bin/pip /root/.cache /var/lib/apt/lists/*.gz /wheelhouse /src; "
                               "do [ -e \"$path\" ] && echo \"$path\"; done; true", extra=["--entrypoint", "sh"])
    assert leftovers.stdout == "", leftovers.stdout
    whoami = containers.run(image, "-c", "id -u; python3 -c 'import opuslib, av, soxr, livekit.rtc; print(\"ok\")'",
                            extra=["--entrypoint", "sh"])
    assert whoami.stdout.split() == [str(IMAGE_UID), "ok"], whoami
    size = containers.image_size(image)
    print(f"\nimage {image}: {size / 1e6:.0f} MB")


async def test_its_defaults_start_on_the_socket_and_health_turns_serving(image: str, livekit, tmp_path) -> None:
    async with bridge_container(image, tmp_path, {"LIVEKIT_URL": livekit.url}) as (name, socket_path):
        await until_healthy(name)
        assert socket_path.is_socket()
        probe = await trio.to_thread.run_sync(lambda: containers.podman("exec", name, "livekit-bridge", "health"))
        assert probe.stdout == "SERVING\n"


async def test_over_tcp_it_needs_a_token_and_its_health_carries_it(image: str, tmp_path) -> None:
    port = str(free_port())
    tcp = {"LIVEKIT_GRPC_SOCKET": "", "PORT": port}
    refused = await trio.to_thread.run_sync(lambda: containers.run(image, env=tcp, check=False, timeout=120))
    assert refused.returncode == 2 and "without BRIDGE_AUTH_TOKEN" in refused.stderr, refused
    async with bridge_container(image, tmp_path, {**tcp, "BRIDGE_AUTH_TOKEN": "image-test-token"}) as (name, _):
        await until_healthy(name)
        # The probe found the bridge on TCP with the container's token; without it the bridge says no.
        without = await trio.to_thread.run_sync(lambda: containers.podman(
            "exec", "--env", "BRIDGE_AUTH_TOKEN=", name, "livekit-bridge", "health", check=False))
        assert without.returncode == 1 and "UNAUTHENTICATED" in without.stderr, without


async def test_the_clouds_grpc_js_client_hears_the_phone_through_the_container(image: str, livekit, tmp_path) -> None:
    user = "image-user"
    request = join_request(livekit, user)
    users = json.dumps([{"user_id": user, "room": request.room_name, "token": request.token}])
    async with trio_asyncio.open_loop(), \
            bridge_container(image, tmp_path, {"LIVEKIT_URL": livekit.url}) as (name, socket_path), \
            phone_in_room(livekit, user) as phone:
        await until_healthy(name)

        async def talk() -> None:
            for counter in range(1_000_000):
                await phone.send_mic(counter, numbered_pcm(counter))
                await trio.sleep(0.05)

        async with trio.open_nursery() as talking:
            talking.start_soon(talk)
            with trio.fail_after(120):
                done = await trio.run_process(
                    ["node", "cloud.mjs", f"unix:{socket_path}", str(PROTO), "rejoin"], cwd=NODE_CLIENT,
                    env=dict(os.environ, USERS=users, LIVEKIT_URL=livekit.url, WANT="10"), capture_stdout=True,
                    check=False)
            talking.cancel_scope.cancel()
    assert done.returncode == 0, done
    result = json.loads(done.stdout)
    assert result["joins"][0]["success"] and result["joins"][0]["participant_id"] == bridge_identity(user), result
    heard = result["received"][user]
    assert len(heard) >= 10 and heard == sorted(heard) and len(set(heard)) == len(heard), heard


async def test_podman_stop_drains_the_bridge_before_its_timeout(image: str, livekit, tmp_path) -> None:
    user = "image-drained"
    async with trio_asyncio.open_loop(), \
            bridge_container(image, tmp_path, {"LIVEKIT_URL": livekit.url}) as (name, socket_path), \
            phone_in_room(livekit, user) as phone:
        await until_healthy(name)
        async with trio.open_nursery() as talking, cloud(f"unix:{socket_path}") as client:
            talking.start_soon(phone.keep_talking)
            assert (await client.join(join_request(livekit, user))).success
            assert bridge_identity(user) in await list_participants(livekit, f"room-{user}")
            async with client.audio_stream(user) as stream:
                with trio.fail_after(20):
                    assert await stream.recv() is not None  # the phone's audio flows
                started = time.monotonic()
                stopping = await trio.lowlevel.open_process(containers.podman_command("stop", name),
                                                          stdout=subprocess.DEVNULL)
                with trio.fail_after(STOP_TIMEOUT):
                    assert await stream.status() == Status.UNAVAILABLE
                    assert await stopping.wait() == 0
            talking.cancel_scope.cancel()
        stopped_after = time.monotonic() - started
        state = await trio.to_thread.run_sync(lambda: container_state(name))
        # Exit 0: the drain ended it; the kill after STOP_TIMEOUT would have said 137.
        assert (state["Status"], state["ExitCode"]) == ("exited", 0), (state, logs(name))
        assert stopped_after < STOP_TIMEOUT
        assert bridge_identity(user) not in await list_participants(livekit, f"room-{user}")
        assert "SIGTERM received; draining" in logs(name)
        print(f"\npodman stop: drained and exited 0 in {stopped_after:.1f} s")
