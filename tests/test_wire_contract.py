"""The .proto is the contract with the cloud: the committed betterproto code
must match it, and encode exactly as google.protobuf does."""

from __future__ import annotations

import filecmp
import importlib
import pathlib
import sys

import pytest
from grpc_tools import protoc

from proto import generate, runtime_messages
from proto.mentra.livekit import bridge as pb

PROTO_DIR = pathlib.Path(generate.__file__).parent


def test_committed_generated_code_matches_the_proto_files(tmp_path: pathlib.Path) -> None:
    generate.generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for pattern in ("*.py", generate.DESCRIPTOR_SET)
                   for p in tmp_path.rglob(pattern))
    assert fresh, "protoc generated nothing"
    stale = [str(path) for path in fresh if not filecmp.cmp(tmp_path / path, PROTO_DIR / path, shallow=False)]
    assert not stale, f"generated code is stale, run `just proto`: {stale}"


@pytest.fixture(scope="module")
def google_pb(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("google_pb")
    assert protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", "livekit_bridge.proto"]) == 0
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("livekit_bridge_pb2")
    finally:
        sys.path.remove(str(out))


SAMPLES = {
    "AudioChunk": dict(pcm_data=b"\x01\x02\xff", sample_rate=16000, channels=1, timestamp_ms=1_700_000_000_123,
                       user_id="u@example", track_id=2),
    "JoinRoomRequest": dict(user_id="u", room_name="r", token="t.o.k", livekit_url="wss://lk", target_identity="u"),
    "JoinRoomResponse": dict(success=True, error="e", participant_id="cloud-agent:u", participant_count=3,
                             metadata={"a": "b", "c": ""}),
    "LeaveRoomRequest": dict(user_id="u", reason="bye"),
    "LeaveRoomResponse": dict(success=False, error="session not found"),
    "PlayAudioRequest": dict(request_id="q", audio_url="http://127.0.0.1/a.mp3", volume=0.5, stop_other=True,
                             user_id="u", track_id=1),
    "PlayAudioEvent": dict(type=3, request_id="q", duration_ms=1234, position_ms=567, error="boom",
                           metadata={"k": "v"}),
    "StopAudioRequest": dict(user_id="u", request_id="q", reason="r", track_id=2),
    "StopAudioResponse": dict(success=True, error="", stopped_request_id="q"),
    "HealthCheckRequest": dict(service="s"),
    "HealthCheckResponse": dict(status=1, active_sessions=7, active_streams=6, uptime_seconds=99,
                                metadata={"x": "y"}),
    "BridgeStatusRequest": dict(user_id="u"),
    "BridgeStatusResponse": dict(connected=True, participant_id="p", participant_count=2,
                                 last_disconnect_at=1_700_000_000_000, last_disconnect_reason="SERVER_SHUTDOWN",
                                 server_version="0.1.0"),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_betterproto_and_google_protobuf_agree_both_ways(google_pb, name: str) -> None:
    fields = SAMPLES[name]
    google_message = getattr(google_pb, name)(**fields)
    ours = getattr(pb, name)().parse(google_message.SerializeToString())
    for field, value in fields.items():
        got = getattr(ours, field)
        if isinstance(value, float):
            assert got == pytest.approx(value)
        else:
            assert got == value, field
    back = getattr(google_pb, name)()
    back.ParseFromString(bytes(ours))
    assert back == google_message


def test_service_methods_and_enum_numbers_match_the_contract(google_pb) -> None:
    service = google_pb.DESCRIPTOR.services_by_name["LiveKitBridge"]
    assert service.full_name == "mentra.livekit.bridge.LiveKitBridge"
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {
        "StreamAudio": (True, True), "JoinRoom": (False, False), "LeaveRoom": (False, False),
        "PlayAudio": (False, True), "StopAudio": (False, False), "HealthCheck": (False, False),
        "GetStatus": (False, False),
    }
    assert [e.value for e in pb.PlayAudioEventEventType] == [0, 1, 2, 3]
    assert pb.HealthCheckResponseServingStatus.SERVICE_UNKNOWN == 3


def test_the_audio_paths_runtime_message_is_the_contracts_audio_chunk(google_pb) -> None:
    fields = SAMPLES["AudioChunk"]
    encoded = google_pb.AudioChunk(**fields).SerializeToString()
    assert runtime_messages.AudioChunk(**fields).SerializeToString() == encoded
    decoded = runtime_messages.AudioChunk.FromString(encoded)
    assert {field: getattr(decoded, field) for field in fields} == fields


# (Today the runtime message is protobuf's own class, built from proto/descriptors.binpb; these
# hold the audio path to protobuf's refusals should it ever be decoded another way.)
@pytest.mark.parametrize("malformed", [b"\x2a\x02\xff\xfe", b"\x0a\x05ab", b"\x10\xff\xff", b"\x0f", b"\x00\x01"],
                         ids=["user_id that is not UTF-8", "pcm_data cut short", "sample_rate varint cut short",
                              "wire type 7", "field number 0"])
def test_the_audio_paths_runtime_message_refuses_what_protobuf_refuses(google_pb, malformed: bytes) -> None:
    with pytest.raises(Exception) as google_refusal:
        google_pb.AudioChunk.FromString(malformed)
    with pytest.raises(type(google_refusal.value)):
        runtime_messages.AudioChunk.FromString(malformed)
