"""A demo a newcomer can watch (`just demo`): audio through the bridge, both ways.

It starts the embedded default, a local livekit-server and the bridge (its
own process, `bridge_main.py serve`), then:

1. a phone joins the user's room and speaks a sentence made with espeak-ng,
   as the app sends it: 100 ms lossy data packets, a sequence byte first;
2. the cloud (a grpclib client) joins the bridge to the room, holds the
   user's StreamAudio and writes what it receives to a WAV file;
3. the cloud plays a spoken reply back through PlayAudio, served by a local
   HTTP server, to a participant listening in the room, which records it;
4. it prints the live actor tree (`bridge_main.py tree`) while the reply
   plays, the latencies it measured, and a few of the bridge's metrics.

It ends by itself and says where its files are. Everything stays on
127.0.0.1.

Usage: python tests/demo.py [--out DIR] [--sentence TEXT] [--reply TEXT]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import wave
from collections.abc import Iterator

import numpy as np
import soxr
import trio
import trio_asyncio

from actors.livekit.dev_server import DevLiveKit, free_port, start_dev_livekit
from actors.session.mic_audio import MIC_SAMPLE_RATE
from bridge_harness import (LISTEN_RATE, Heard, PlayCall, bridge_identity, cloud, join_request, listener_in_room,
                            phone_in_room)
from http_audio import audio_http_server
from proto.mentra.livekit import bridge as pb

REPO = pathlib.Path(__file__).resolve().parent.parent
USER = "demo-user"
PACKET_SECONDS = 0.1
#: RMS above which a 10 ms frame counts as sound, for "first sound" times.
SOUND_LEVEL = 500.0


def speak(text: str, wav_path: pathlib.Path) -> None:
    """Synthesise ``text`` into a WAV file with espeak-ng."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("demo: espeak-ng is missing; `just demo` installs it (apt, as root or with sudo)")
    subprocess.run(["espeak-ng", "-w", str(wav_path), text], check=True)


def read_wav(path: pathlib.Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1, f"{path} is not mono PCM16"
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16), wav.getframerate()


def write_wav(path: pathlib.Path, samples: bytes | np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(samples))


def leading_silence_ms(samples: np.ndarray, rate: int) -> int:
    """How long ``samples`` are silent (10 ms frames under SOUND_LEVEL) before their first sound."""
    frame = rate // 100
    for index in range(len(samples) // frame):
        chunk = samples[index * frame:(index + 1) * frame].astype(np.float64)
        if np.sqrt(np.mean(chunk ** 2)) > SOUND_LEVEL:
            return 10 * index
    return 10 * (len(samples) // frame)


@dataclasses.dataclass
class MicLeg:
    """The microphone's way, phone → LiveKit → bridge → cloud, packet by packet."""

    sent_at: dict[bytes, float] = dataclasses.field(default_factory=dict)
    received: list[tuple[bytes, float]] = dataclasses.field(default_factory=list)

    def latencies_ms(self) -> list[float]:
        return [1000 * (at - self.sent_at[pcm]) for pcm, at in self.received if pcm in self.sent_at]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@contextlib.contextmanager
def bridge_process(livekit: DevLiveKit, out: pathlib.Path) -> Iterator[tuple[int, int]]:
    """The bridge as deployed, configured by flags; its log goes to bridge.log."""
    port, metrics_port = free_port(), free_port()
    with open(out / "bridge.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "bridge_main.py"), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--livekit-url", livekit.url, "--metrics-port", str(metrics_port), "--log-format", "text"],
            # The LiveKit credentials as a deployment gives them (the secret by environment only).
            env=dict(os.environ, LIVEKIT_API_KEY=livekit.api_key, LIVEKIT_API_SECRET=livekit.api_secret),
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield port, metrics_port
        finally:
            process.send_signal(signal.SIGTERM)  # drains, leaves every room, exits
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


async def wait_until_serving(client) -> None:
    with trio.fail_after(30):
        while True:
            try:
                await client.health()
                return
            except OSError:  # not listening yet
                await trio.sleep(0.1)


async def talk(phone, pcm: bytes, mic: MicLeg) -> None:
    """Send ``pcm`` as the phone app does, paced in real time."""
    size = int(MIC_SAMPLE_RATE * PACKET_SECONDS) * 2
    start = trio.current_time()
    for index, offset in enumerate(range(0, len(pcm), size)):
        packet = pcm[offset:offset + size]
        mic.sent_at.setdefault(packet, time.monotonic())  # (a repeated packet is timed by its first copy)
        await phone.send_mic(index, packet)
        await trio.sleep_until(start + (index + 1) * PACKET_SECONDS)


async def hear_the_cloud_stream(stream, mic: MicLeg) -> None:
    while (chunk := await stream.recv()) is not None:
        if chunk.pcm_data:
            mic.received.append((bytes(chunk.pcm_data), time.monotonic()))


def show(title: str) -> None:
    print(f"\n== {title}", flush=True)


async def run_demo(livekit: DevLiveKit, port: int, out: pathlib.Path, said: bytes, reply_wav: bytes) -> dict:
    mic = MicLeg()
    address = f"127.0.0.1:{port}"
    async with cloud(address) as client:
        await wait_until_serving(client)
        show(f"the cloud asks the bridge at {address} to join room-{USER}")
        joined = await client.join(join_request(livekit, USER))
        if not joined.success:
            raise SystemExit(f"demo: JoinRoom failed: {joined.error}")
        print(f"JoinRoom: joined as {bridge_identity(USER)}, {joined.participant_count} in the room")

        async with phone_in_room(livekit, USER) as phone, \
                listener_in_room(livekit, USER, identity=f"{USER}:glasses-speaker") as heard, \
                client.audio_stream(USER) as stream, trio.open_nursery() as nursery:
            nursery.start_soon(hear_the_cloud_stream, stream, mic)
            show(f"the phone speaks {len(said) / 2 / MIC_SAMPLE_RATE:.1f} s of speech in 100 ms lossy packets")
            await trio.sleep(0.5)  # the bridge subscribes to the phone's data as it joins
            await talk(phone, said, mic)
            await trio.sleep(0.5)  # the last packets on their way
            print(f"the cloud received {len(mic.received)} of {len(mic.sent_at)} packets on StreamAudio")

            with audio_http_server() as http:
                url = http.add("reply.wav", reply_wav, "audio/wav")
                show("the cloud plays a spoken reply through PlayAudio")
                call = PlayCall()
                asked_at = time.monotonic()
                nursery.start_soon(client.play, pb.PlayAudioRequest(
                    request_id="demo-reply", audio_url=url, volume=1.0, user_id=USER), call)
                with trio.fail_after(30):
                    await call.started.wait()
                print(f"STARTED after {1000 * (call.started_at - asked_at):.0f} ms; while it plays, the live tree:")
                tree = await trio.run_process([sys.executable, str(REPO / "bridge_main.py"), "tree",
                                               "--port", str(port)], capture_stdout=True, cwd=REPO)
                print(tree.stdout.decode(), end="", flush=True)
                with trio.fail_after(60):
                    await call.done.wait()
                print(f"PlayAudio ended: {', '.join(call.kinds())}")
                await trio.sleep(0.5)  # the end of the reply on its way to the listener
            nursery.cancel_scope.cancel()
        await client.leave(USER, reason="the demo is over")
    return dict(mic=mic, heard=heard, call=call, asked_at=asked_at)


def first_sound_after(heard: dict[str, Heard], since: float) -> float | None:
    arrivals = [track.arrivals[i] for track in heard.values() for i in track.loud(SOUND_LEVEL)
                if track.arrivals[i] >= since]
    return min(arrivals) if arrivals else None


def bridge_metrics(metrics_port: int, prefixes: tuple[str, ...]) -> list[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return [line for line in text.splitlines() if line.startswith(prefixes)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "demo-output" / stamp,
                        help="where the files go (default demo-output/<time>)")
    parser.add_argument("--sentence", default="Hello from the glasses. This sentence went through the bridge.")
    parser.add_argument("--reply", default="And this is the cloud, speaking back through PlayAudio.")
    args = parser.parse_args(argv)
    out: pathlib.Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    speak(args.sentence, out / "espeak-sentence.wav")
    speech, rate = read_wav(out / "espeak-sentence.wav")
    said = soxr.resample(speech, rate, MIC_SAMPLE_RATE).astype(np.int16).tobytes()
    write_wav(out / "phone-said.wav", said, MIC_SAMPLE_RATE)
    speak(args.reply, out / "cloud-reply.wav")
    reply, reply_rate = read_wav(out / "cloud-reply.wav")

    show("starting a local livekit-server and the bridge")
    livekit = start_dev_livekit(out / "livekit", udp_ports=(51000, 51199))
    try:
        print(f"livekit-server at {livekit.url}")
        with bridge_process(livekit, out) as (port, metrics_port):
            print(f"bridge at 127.0.0.1:{port}, metrics at http://127.0.0.1:{metrics_port}/metrics")
            result = trio_asyncio.run(run_demo, livekit, port, out, said,
                                      (out / "cloud-reply.wav").read_bytes())
            metrics = bridge_metrics(metrics_port, ("bridge_mic_packets_total", "bridge_playbacks_total",
                                                    "bridge_joins_total"))
    finally:
        livekit.stop()

    mic: MicLeg = result["mic"]
    write_wav(out / "cloud-heard.wav", b"".join(pcm for pcm, _ in mic.received), MIC_SAMPLE_RATE)
    heard: dict[str, Heard] = result["heard"]
    played = [track for track in heard.values() if track.loud(SOUND_LEVEL)]
    if played:
        write_wav(out / "listener-heard.wav", played[0].samples().astype(np.int16), LISTEN_RATE)

    show("latency")
    latencies = mic.latencies_ms()
    print(f"microphone, phone -> cloud: {len(mic.received)} of {len(mic.sent_at)} packets; "
          f"p50 {percentile(latencies, 50):.1f} ms, p95 {percentile(latencies, 95):.1f} ms, "
          f"max {max(latencies, default=float('nan')):.1f} ms")
    call: PlayCall = result["call"]
    print(f"PlayAudio -> STARTED (fetched, decoded, first frame published): "
          f"{1000 * (call.started_at - result['asked_at']):.0f} ms")
    first_sound = first_sound_after(heard, result["asked_at"])
    silence = leading_silence_ms(reply, reply_rate)
    if first_sound is not None:
        print(f"PlayAudio -> first sound at the listener: {1000 * (first_sound - result['asked_at']):.0f} ms"
              + (f" (the reply itself starts with {silence} ms of silence)" if silence else ""))
    else:
        print("PlayAudio -> the listener heard no sound")
    show("a few of the bridge's metrics")
    print("\n".join(metrics))
    show(f"files in {out}")
    for name, what in [("phone-said.wav", "what the phone sent (16 kHz)"),
                       ("cloud-heard.wav", "what the cloud received on StreamAudio (16 kHz)"),
                       ("cloud-reply.wav", "what the cloud played through PlayAudio"),
                       ("listener-heard.wav", "what the listener in the room heard (48 kHz)"),
                       ("bridge.log", "the bridge's log"),
                       ("livekit/livekit-server.log", "livekit-server's log")]:
        if (out / name).exists():
            print(f"  {name:28} {what}")
    return 0 if latencies and first_sound is not None and call.final.type == pb.PlayAudioEventEventType.COMPLETED \
        else 1


if __name__ == "__main__":
    sys.exit(main())
