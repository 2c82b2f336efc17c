"""A flood of connections opened at once: every one is taken in and answered,
while the users already streaming keep their audio and a JoinRoom goes through.

How long the streaming user's audio pauses meanwhile is measured in the bench
(`python -m bench.flood`), not here."""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import subprocess
import sys

import pytest
import trio

from bridge_harness import cloud, counter_of, join_request, numbered_pcm, phone_in_room, running_bridge
from flood_process import listen_overflows

FLOOD = pathlib.Path(__file__).resolve().parent / "flood_process.py"
#: As the issue tried it: a third idle, a third preface-only, a third Health/Watch streams never read.
CONNECTIONS = 1800
#: Seconds the flood waits for its connections to be answered; a listener whose
#: queue overflows leaves idle connections unanswered for good.
FLOOD_DEADLINE = 60


@pytest.mark.parametrize("listener", ["tcp", "unix"])
async def test_a_flood_of_connections_is_answered_while_a_user_streams(livekit, bridge_settings, listener: str,
                                                                       tmp_path: pathlib.Path) -> None:
    settings = bridge_settings
    if listener == "unix":
        settings = dataclasses.replace(settings, unix_socket=str(tmp_path / "bridge.sock"))
    user = f"flood-streamer-{listener}"
    async with running_bridge(settings) as running, cloud(running.address) as client, \
            phone_in_room(livekit, user) as phone:
        assert (await client.join(join_request(livekit, user))).success
        async with client.audio_stream(user) as stream, trio.open_nursery() as nursery:
            heard: list[int] = []
            sent = -1

            async def listen() -> None:
                while (chunk := await stream.recv()) is not None:
                    heard.append(counter_of(chunk))

            async def talk() -> None:
                nonlocal sent
                for counter in itertools.count():
                    with trio.CancelScope(shield=True):  # stopped between packets: `sent` is what went out
                        await phone.send_mic(counter, numbered_pcm(counter))
                    sent = counter
                    await trio.sleep(0.02)

            nursery.start_soon(listen)
            talking, stopped_talking = trio.CancelScope(), trio.Event()

            async def talk_until_told() -> None:
                with talking:
                    await talk()
                stopped_talking.set()

            nursery.start_soon(talk_until_told)
            with trio.fail_after(20):
                while len(heard) < 10:
                    await trio.sleep(0.05)

            overflows = listen_overflows()
            flood = await trio.lowlevel.open_process(
                [sys.executable, str(FLOOD), running.address, str(CONNECTIONS), str(FLOOD_DEADLINE)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            try:
                joined = await client.join(join_request(livekit, f"flood-joiner-{listener}"))  # during the flood
                assert joined.success, joined.error
                with trio.fail_after(FLOOD_DEADLINE + 30):
                    answer = b""
                    while not answer.endswith(b"\n"):
                        answer += await flood.stdout.receive_some(4096)
                flooded = json.loads(answer)
                assert (flooded["answered"], flooded["failed"], flooded["unanswered"]) == (CONNECTIONS, 0, 0), flooded
                if listener == "tcp":  # no connection waited for a retransmit
                    assert listen_overflows() == overflows
                talking.cancel()
                await stopped_talking.wait()  # a send under way when told finishes first, and counts
                last = sent
                with trio.fail_after(10):
                    while not heard or heard[-1] < last:
                        await trio.sleep(0.05)
            finally:
                await flood.stdin.aclose()
                with trio.move_on_after(10):
                    await flood.wait()
                flood.kill()
            # Every packet the phone sent since the stream flowed, once and in order.
            assert heard == list(range(heard[0], last + 1))
            nursery.cancel_scope.cancel()
