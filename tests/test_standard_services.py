"""Generic gRPC tools work against the bridge: grpcurl lists, describes and
calls through server reflection (over TCP and the Unix socket),
grpc.health.v1 answers SERVING and then NOT_SERVING while draining, and an
unknown service is a well-formed UNIMPLEMENTED for grpc-go clients too."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
from collections.abc import AsyncIterator

import pytest
import trio
import trio_asyncio
from google.protobuf import descriptor_pb2, descriptor_pool
from grpclib.health.check import ServiceStatus

from actors.bridge import RunningBridge, run_bridge
from actors.grpc.standard_services import with_standard_services
from bridge_harness import GRPCURL, grpcurl, running_bridge


async def grpcurl_output(address: str, *words: str, data: str | None = None) -> str:
    """The stdout of a grpcurl call that must succeed."""
    done = await grpcurl(address, *words, data=data)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_grpcurl_lists_describes_and_calls_through_reflection(bridge) -> None:
    services = (await grpcurl_output(bridge.address, "list")).split()
    assert {"mentra.livekit.bridge.LiveKitBridge", "mentra.livekit.bridge.debug.BridgeDebug",
            "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} <= set(services)
    methods = (await grpcurl_output(bridge.address, "list", "mentra.livekit.bridge.LiveKitBridge")).split()
    assert "mentra.livekit.bridge.LiveKitBridge.StreamAudio" in methods
    described = await grpcurl_output(bridge.address, "describe", "mentra.livekit.bridge.AudioChunk")
    assert "bytes pcm_data = 1;" in described and "string user_id = 5;" in described
    answer = json.loads(await grpcurl_output(bridge.address, "mentra.livekit.bridge.LiveKitBridge/HealthCheck",
                                             data="{}"))
    assert answer["status"] == "SERVING"


#: A symbol of each kind grpc-go's reflection answers, for each service served, and what grpcurl's
#: describe says of it.
SYMBOLS = [
    ("mentra.livekit.bridge.LiveKitBridge", "is a service:"),
    ("mentra.livekit.bridge.LiveKitBridge.JoinRoom", "rpc JoinRoom ( .mentra.livekit.bridge.JoinRoomRequest )"),
    ("mentra.livekit.bridge.JoinRoomRequest", "message JoinRoomRequest {"),
    ("mentra.livekit.bridge.JoinRoomRequest.room_name", "string room_name = 2;"),
    ("mentra.livekit.bridge.PlayAudioEvent.EventType", "enum EventType {"),
    ("mentra.livekit.bridge.PlayAudioEvent.EventType.FAILED", "FAILED = 3;"),  # as grpcurl names it
    ("mentra.livekit.bridge.PlayAudioEvent.FAILED", "FAILED = 3;"),  # as protobuf scopes it
    ("mentra.livekit.bridge.JoinRoomResponse.MetadataEntry", "map<string, string> metadata = 5;"),  # nested
    ("mentra.livekit.bridge.debug.BridgeDebug", "is a service:"),
    ("mentra.livekit.bridge.debug.BridgeDebug.WatchActors", "returns ( stream .mentra.livekit.bridge.debug."),
    ("mentra.livekit.bridge.debug.InjectFaultRequest", "message InjectFaultRequest {"),
    ("mentra.livekit.bridge.debug.InjectFaultRequest.kind", "string kind = 2;"),
    ("grpc.health.v1.Health", "is a service:"),
    ("grpc.health.v1.Health.Check", "rpc Check ( .grpc.health.v1.HealthCheckRequest )"),
    ("grpc.health.v1.HealthCheckRequest", "message HealthCheckRequest {"),
    ("grpc.health.v1.HealthCheckRequest.service", "string service = 1;"),
    ("grpc.health.v1.HealthCheckResponse.ServingStatus", "enum ServingStatus {"),
    ("grpc.health.v1.HealthCheckResponse.ServingStatus.NOT_SERVING", "NOT_SERVING = 2;"),
    ("grpc.reflection.v1.ServerReflection", "is a service:"),
    ("grpc.reflection.v1.ServerReflection.ServerReflectionInfo", "rpc ServerReflectionInfo ( stream "),
    ("grpc.reflection.v1.ServerReflectionRequest", "message ServerReflectionRequest {"),
    ("grpc.reflection.v1.ServerReflectionRequest.file_containing_symbol", "string file_containing_symbol = 4;"),
    ("grpc.reflection.v1.ServerReflectionRequest.message_request", "oneof message_request {"),
]


@pytest.fixture(params=["tcp", "unix"])
async def reachable_bridge(request, bridge_settings, tmp_path: pathlib.Path) -> AsyncIterator[RunningBridge]:
    """The bridge on a loopback TCP port, then on a Unix socket."""
    if request.param == "unix":
        bridge_settings = dataclasses.replace(bridge_settings, unix_socket=str(tmp_path / "bridge.sock"))
    async with running_bridge(bridge_settings) as running:
        yield running


async def test_grpcurl_describes_every_kind_of_symbol_and_lists_each_services_methods(reachable_bridge) -> None:
    address = reachable_bridge.address
    for symbol, said in SYMBOLS:
        described = await grpcurl_output(address, "describe", symbol)
        assert said in described, (symbol, described)
    for service, method in [("mentra.livekit.bridge.LiveKitBridge", "GetStatus"),
                            ("mentra.livekit.bridge.debug.BridgeDebug", "DescribeActors"),
                            ("grpc.health.v1.Health", "Watch"),
                            ("grpc.reflection.v1.ServerReflection", "ServerReflectionInfo")]:
        assert f"{service}.{method}" in (await grpcurl_output(address, "list", service)).split()


def test_a_file_is_answered_with_the_files_it_imports() -> None:
    """None of the files served imports another today; grpc-go sends a file's
    imports with it, and so does the bridge once one does."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto(name="base.proto", package="t", message_type=[{"name": "Base"}]))
    pool.Add(descriptor_pb2.FileDescriptorProto(
        name="top.proto", package="t", dependency=["base.proto"],
        message_type=[{"name": "Top", "field": [{"name": "base", "number": 1, "type": 11, "type_name": ".t.Base",
                                                 "label": 1}]}]))
    reflection = with_standard_services([], ServiceStatus())[-2]
    reflection._pool = pool
    answer = reflection._file_containing_symbol_response("t.Top.base")
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw).name
             for raw in answer.file_descriptor_response.file_descriptor_proto]
    assert files == ["top.proto", "base.proto"]


async def test_health_is_serving_then_not_serving_while_draining(bridge) -> None:
    async def health(service: str) -> str:
        request = json.dumps({"service": service})
        return json.loads(await grpcurl_output(bridge.address, "grpc.health.v1.Health/Check", data=request))["status"]

    assert await health("") == "SERVING"
    assert await health("mentra.livekit.bridge.LiveKitBridge") == "SERVING"
    await bridge.front_door.drain(timeout=1)
    assert await health("") == "NOT_SERVING"
    assert await health("mentra.livekit.bridge.LiveKitBridge") == "NOT_SERVING"


async def test_health_watch_sees_the_drain_and_ends_when_the_bridge_stops(bridge_settings) -> None:
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        running = await nursery.start(run_bridge, bridge_settings)
        watch = await trio.lowlevel.open_process(
            [str(GRPCURL), "-plaintext", "-d", '{"service": ""}', running.address, "grpc.health.v1.Health/Watch"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        seen = b""

        async def read_until(status: str) -> None:
            nonlocal seen
            with trio.fail_after(20):
                while f'"status": "{status}"'.encode() not in seen:
                    chunk = await watch.stdout.receive_some()
                    assert chunk, f"Watch ended before {status}: {seen!r}"
                    seen += chunk

        try:
            await read_until("SERVING")
            await running.front_door.drain(timeout=1)
            await read_until("NOT_SERVING")
            nursery.cancel_scope.cancel()  # the bridge stops: the open Watch must not hold it
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(20) as waited:
                await watch.wait()
            if waited.cancelled_caught:
                watch.kill()
    assert not waited.cancelled_caught, "Watch stayed open after the bridge stopped"


async def test_reflection_works_over_the_unix_socket(bridge_settings, tmp_path: pathlib.Path) -> None:
    settings = dataclasses.replace(bridge_settings, unix_socket=str(tmp_path / "bridge.sock"))
    async with running_bridge(settings) as running:
        assert "mentra.livekit.bridge.LiveKitBridge" in (await grpcurl_output(running.address, "list")).split()


async def test_an_unknown_service_is_a_well_formed_unimplemented(bridge, tmp_path: pathlib.Path) -> None:
    """grpc-go (grpcurl) is strict: without the gRPC content-type on the
    answer it reports a malformed header instead of the status."""
    (tmp_path / "nothing.proto").write_text(
        'syntax = "proto3"; package nothing; message E {} service Nothing { rpc Here(E) returns (E); }')
    done = await grpcurl(bridge.address, "nothing.Nothing/Here", data="{}",
                         flags=("-plaintext", "-import-path", str(tmp_path), "-proto", "nothing.proto"))
    assert done.returncode != 0
    answer = done.stderr.decode()
    assert "Code: Unimplemented" in answer, answer
    assert "malformed header" not in answer
