"""Phone microphone -> LiveKit data packets -> bridge -> cloud (real livekit-server)."""

from __future__ import annotations

import trio

from bridge_harness import PACKET_PCM_BYTES, cloud, join_request, pcm_packet, phone_in_room


async def test_200_packets_arrive_exactly_and_in_order(bridge, livekit) -> None:
    async with cloud(bridge.address) as client, phone_in_room(livekit, "alice") as phone:
        joined = await client.join(join_request(livekit, "alice"))
        assert joined.success, joined.error
        assert joined.participant_id == "cloud-agent:alice"
        assert joined.participant_count == 2
        async with client.audio_stream("alice") as stream:
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
                    await trio.sleep(0.5)  # the stream is attached before the phone talks
                    for index in range(200):
                        await phone.send_mic(index, pcm_packet(index))
                        await trio.sleep(0.005)
        assert [len(pcm) for pcm in received] == [PACKET_PCM_BYTES] * 200
        assert received == [pcm_packet(index) for index in range(200)]
