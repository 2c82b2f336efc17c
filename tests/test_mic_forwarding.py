"""Phone microphone -> LiveKit data packets -> bridge -> cloud (real livekit-server)."""

from __future__ import annotations

import contextlib

import pytest
import trio

from bridge_harness import PACKET_PCM_BYTES, cloud, join_request, pcm_packet, phone_in_room


@pytest.mark.parametrize("phone_first", [True, False], ids=["phone-joins-first", "phone-joins-last"])
async def test_200_packets_arrive_exactly_and_in_order(bridge, livekit, phone_first: bool) -> None:
    """When the phone joins last, the bridge hears it before LiveKit tells it
    the phone is there (participant updates come in 3 s batches): the packets
    still count as the phone's."""
    room = f"alice-{'phone-first' if phone_first else 'phone-last'}"  # a fresh room: its batching clock starts now
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(cloud(bridge.address))
        if phone_first:
            phone = await stack.enter_async_context(phone_in_room(livekit, "alice", room))
        joined = await client.join(join_request(livekit, "alice", room))
        assert joined.success, joined.error
        assert joined.participant_id == "cloud-agent:alice"
        assert joined.participant_count == (2 if phone_first else 1)
        stream = await stack.enter_async_context(client.audio_stream("alice"))
        if not phone_first:
            await trio.sleep(1.0)  # well inside the room's first 3 s batching interval
            phone = await stack.enter_async_context(phone_in_room(livekit, "alice", room))
        received: list[bytes] = []
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                async def receive() -> None:
                    while len(received) < 200:
                        chunk = await stream.recv()
                        assert chunk is not None
                        assert (chunk.sample_rate, chunk.channels, chunk.user_id) == (16000, 1, "alice")
                        assert chunk.timestamp_ms > 0
                        received.append(chunk.pcm_data)
                nursery.start_soon(receive)
                await trio.sleep(0.2)  # the phone's own connection settles before it talks
                # 100 ms packets sent a little faster than real time, over the
                # 3.4 s that span one batching interval of participant updates.
                for index in range(200):
                    await phone.send_mic(index, pcm_packet(index))
                    await trio.sleep(0.017)
        assert [len(pcm) for pcm in received] == [PACKET_PCM_BYTES] * 200
        assert received == [pcm_packet(index) for index in range(200)]
