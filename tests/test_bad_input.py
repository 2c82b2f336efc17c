"""Every bad input gets a clear status; no other user's audio is harmed."""

from __future__ import annotations

import grpclib.const
import pytest
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from trio_asyncio import aio_as_trio

from bridge_harness import bridge_identity, cloud, expect_status, join_request, phone_in_room, token
from proto.mentra.livekit import bridge as pb


async def test_bad_requests_get_clear_statuses_while_another_user_keeps_streaming(bridge, livekit) -> None:
    async with cloud(bridge.address) as client, phone_in_room(livekit, "bystander") as phone:
        assert (await client.join(join_request(livekit, "bystander"))).success
        async with client.audio_stream("bystander") as bystander_stream, trio.open_nursery() as nursery:
            heard: list[bytes] = []

            async def listen() -> None:
                while (chunk := await bystander_stream.recv()) is not None:
                    heard.append(chunk.pcm_data)

            nursery.start_soon(listen)
            nursery.start_soon(phone.keep_talking, 0.05)

            # JoinRoom
            message = await expect_status(Status.INVALID_ARGUMENT, client.join(join_request(livekit, "")))
            assert "user_id" in message
            assert "token" in await expect_status(
                Status.INVALID_ARGUMENT, client.join(join_request(livekit, "x", token="")))
            assert "not a ws://" in await expect_status(
                Status.INVALID_ARGUMENT, client.join(join_request(livekit, "x", livekit_url="ftp://example")))
            assert "not a LiveKit access token" in await expect_status(
                Status.INVALID_ARGUMENT, client.join(join_request(livekit, "forged", token="not-a-jwt")))
            # LeaveRoom, GetStatus
            await expect_status(Status.INVALID_ARGUMENT, client.leave(""))
            await expect_status(Status.INVALID_ARGUMENT, client.status(""))
            # StopAudio: unknown user; nothing playing is no error
            await expect_status(Status.NOT_FOUND, client.unary(
                "StopAudio", pb.StopAudioRequest(user_id="nobody"), pb.StopAudioResponse))
            idle = await client.unary("StopAudio", pb.StopAudioRequest(user_id="bystander", track_id=-1),
                                      pb.StopAudioResponse)
            assert idle.success and idle.stopped_request_id == ""
            # StreamAudio: no user, unknown user
            async with client.audio_stream("") as stream:
                assert await stream.status() == Status.INVALID_ARGUMENT
            async with client.audio_stream("nobody") as stream:
                assert await stream.status() == Status.NOT_FOUND

            with trio.fail_after(10):
                before = len(heard)
                while len(heard) < before + 5:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


USER = "tokened"


@pytest.mark.parametrize("token_of, overrides, named", [
    (lambda lk: token(lk, bridge_identity(USER), "room-other"), {},
     ["grants room 'room-other'", "room_name is 'room-tokened'"]),
    (lambda lk: token(lk, bridge_identity(USER), f"room-{USER}", room_join=False), {},
     ["roomJoin false or missing", f"identity '{bridge_identity(USER)}'"]),
    (lambda lk: token(lk, "", f"room-{USER}"), {}, ["identity (sub) is empty", f"'{bridge_identity(USER)}'"]),
    (lambda lk: token(lk, bridge_identity(USER), ""), {"room_name": ""}, ["grants room '' (none)"]),
    (lambda lk: token(lk, USER, f"room-{USER}"), {}, [f"identity '{USER}' is the target_identity '{USER}'"]),
    (lambda lk: "a.b", {}, ["not a LiveKit access token", "3 dot-separated parts"]),
    (lambda lk: "a.!!!.c", {}, ["not a LiveKit access token", "not base64url-encoded JSON"]),
    (lambda lk: "a.WzFd.c", {}, ["not a LiveKit access token", "not a JSON object"]),  # the payload [1]
], ids=["wrong-room", "no-room-join", "empty-identity", "no-room", "the-phones-identity", "not-a-jwt",
        "payload-not-base64-json", "payload-not-an-object"])
async def test_a_join_token_that_cannot_be_right_is_refused_before_any_session_and_never_logged(
        bridge, livekit, log_lines, token_of, overrides, named) -> None:
    request = join_request(livekit, USER, token=token_of(livekit), **overrides)
    async with cloud(bridge.address) as client:
        message = await expect_status(Status.INVALID_ARGUMENT, client.join(request))
        assert all(part in message for part in named), message
        assert f"session:{USER}" not in str(await client.actor_tree())
    assert [line for line in log_lines if "JoinRoom failed" in line and USER in line], log_lines
    assert not [line for line in log_lines if request.token in line]


@pytest.mark.parametrize("chunk, why", [
    (pb.AudioChunk(pcm_data=b"\0" * 640, sample_rate=12345), "sample_rate 12345"),
    (pb.AudioChunk(pcm_data=b"\0" * 640, sample_rate=16000, channels=3), "channels 3"),
    (pb.AudioChunk(pcm_data=b"\0" * 641, sample_rate=16000, channels=1), "641 bytes"),
    (pb.AudioChunk(pcm_data=b"\0" * 640, sample_rate=16000, track_id=-1), "track_id -1"),
    (pb.AudioChunk(pcm_data=b"\0" * 640, user_id="someone-else"), "belongs to user"),
])
async def test_bad_audio_chunks_end_only_their_stream(bridge, livekit, chunk, why) -> None:
    async with cloud(bridge.address) as client:
        assert (await client.join(join_request(livekit, "sender"))).success
        async with client.audio_stream("sender") as stream:
            await stream.send(chunk)
            with pytest.raises(GRPCError) as caught:
                while await stream.recv() is not None:
                    pass
            assert caught.value.status == Status.INVALID_ARGUMENT
            assert why in caught.value.message
        assert (await client.status("sender")).connected


async def test_a_track_keeps_its_first_format(bridge, livekit) -> None:
    async with cloud(bridge.address) as client:
        assert (await client.join(join_request(livekit, "switcher"))).success
        async with client.audio_stream("switcher") as stream:
            await stream.send(pb.AudioChunk(pcm_data=b"\0" * 3200, sample_rate=16000, channels=1))
            await stream.send(pb.AudioChunk(pcm_data=b"\0" * 4800, sample_rate=24000, channels=1))
            with trio.fail_after(10):
                assert await stream.status() == Status.INVALID_ARGUMENT
        assert (await client.status("switcher")).connected


async def test_messages_over_10_mib_are_refused(bridge, livekit) -> None:
    async with cloud(bridge.address) as client:
        huge = join_request(livekit, "huge", room_name="r" * (10 * 1024 * 1024 + 1))
        message = await expect_status(Status.RESOURCE_EXHAUSTED, client.join(huge))
        assert "exceeds" in message
        just_under = join_request(livekit, "big", "big", target_identity="t" * (9 * 1024 * 1024))
        assert (await client.join(just_under)).success


async def test_phone_packets_of_every_shape_are_counted_in_the_actor_tree(bridge, livekit) -> None:
    async with cloud(bridge.address) as client, phone_in_room(livekit, "shapes") as phone:
        assert (await client.join(join_request(livekit, "shapes"))).success
        async with client.audio_stream("shapes") as stream:
            await trio.sleep(0.3)
            send = phone.room.local_participant.publish_data
            await aio_as_trio(send)(b"", reliable=True)              # empty: skipped
            await aio_as_trio(send)(bytes([0]), reliable=True)       # sequence byte only: nothing to forward
            await aio_as_trio(send)(bytes([1]) + b"ab", reliable=True)  # sequence 1, two PCM bytes
            await aio_as_trio(send)(b"cdef", reliable=True)          # even: all PCM, no sequence byte
            await aio_as_trio(send)(bytes([5]) + b"gh", reliable=True)  # sequence 5: 2, 3, 4 were lost
            received = []
            with trio.fail_after(10):
                while len(received) < 3:
                    received.append((await stream.recv()).pcm_data)
            assert received == [b"ab", b"cdef", b"gh"]
            tree = await client.actor_tree()
        [supervisor] = tree["children"]
        [session] = [node for node in supervisor["children"] if node["name"] == "session:shapes"]
        counters = session["counters"]
        assert counters["mic_packets_lost"] == 3
        assert counters["mic_packets_empty"] == 2
        assert counters["mic_packets_received"] >= 5
        assert session["state"] == "running" and session["mailbox"]["capacity"] > 0


class RawBytes:
    """A message that is whatever bytes it is given, to send what no protobuf library would encode."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 (the protobuf method grpclib calls)
        return self.data


@pytest.mark.parametrize("raw, why", [
    (b"\x2a\x02\xff\xfe", "UTF-8"),          # user_id that is not UTF-8
    (b"\x0a\x05ab", "malformed AudioChunk"),  # pcm_data cut short
])
async def test_malformed_audio_chunks_are_refused_as_protobuf_refuses_them(bridge, livekit, raw, why) -> None:
    async with cloud(bridge.address) as client:
        assert (await client.join(join_request(livekit, "garbler"))).success

        async def send_raw() -> None:
            async with client.channel.request("/mentra.livekit.bridge.LiveKitBridge/StreamAudio",
                                              grpclib.const.Cardinality.STREAM_STREAM, RawBytes,
                                              pb.AudioChunk) as call:
                await call.send_message(RawBytes(raw))
                await call.recv_message()

        message = await expect_status(Status.INVALID_ARGUMENT, aio_as_trio(send_raw)())
        assert why in message
        assert (await client.status("garbler")).connected
