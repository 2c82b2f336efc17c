"""`just demo` works: run as a newcomer runs it, it carries speech both ways
and shows the live tree, the latency and the metrics it promises."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import wave

import numpy as np

from bridge_harness import PACKET_PCM_BYTES, REPO



def pcm(path: pathlib.Path) -> bytes:
    with wave.open(str(path)) as wav:
        return wav.readframes(wav.getnframes())


def test_the_demo_carries_speech_both_ways_and_shows_tree_latency_and_metrics(tmp_path: pathlib.Path) -> None:
    # The bridge process inherits LOG_LEVEL: at debug, its log shows the most it could leak.
    run = subprocess.run([sys.executable, str(REPO / "tests" / "demo.py"), "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=180, env=dict(os.environ, LOG_LEVEL="debug"))
    assert run.returncode == 0, run.stdout + run.stderr
    shown = run.stdout

    # The cloud received the phone's speech packet for packet, in order (a lossy packet may be lost).
    said, received = pcm(tmp_path / "phone-said.wav"), pcm(tmp_path / "cloud-heard.wav")
    packets = [said[i:i + PACKET_PCM_BYTES] for i in range(0, len(said), PACKET_PCM_BYTES)]
    position = 0
    for offset in range(0, len(received), PACKET_PCM_BYTES):
        chunk = received[offset:offset + PACKET_PCM_BYTES]
        position = packets.index(chunk, position) + 1
    assert len(received) >= 0.9 * len(said) and len(said) > 2 * 16000 * 2

    # The listener in the room heard the reply: seconds of sound, not a blip.
    heard = np.frombuffer(pcm(tmp_path / "listener-heard.wav"), dtype=np.int16).astype(np.float64)
    frames = heard[:len(heard) // 480 * 480].reshape(-1, 480)
    assert (np.sqrt((frames ** 2).mean(axis=1)) > 500).sum() >= 150  # 1.5 s of 10 ms frames

    # The live tree, printed by `bridge_main.py tree` while the reply played.
    assert re.search(r"^    session:demo-user  UserSession  running .* in \d+  out \d+  lost 0", shown, re.M), shown
    assert re.search(r"^      playback:demo-reply  Playback  running .*played_ms \d+.*format wav/pcm_s16le 22050 Hz 1 ch",
                     shown, re.M), shown
    assert re.search(r"PlayAudio ended: STARTED, (PROGRESS, )*COMPLETED", shown), shown
    assert re.search(r"microphone, phone -> cloud: \d+ of \d+ packets; p50 [\d.]+ ms, p95 [\d.]+ ms", shown), shown
    assert re.search(r"PlayAudio -> first sound at the listener: \d+ ms", shown), shown
    assert 'bridge_playbacks_total{outcome="completed"} 1.0' in shown
    assert f"files in {tmp_path}" in shown

    # The bridge's own log says which user each line is about, and holds no token or secret.
    log = (tmp_path / "bridge.log").read_text()
    assert re.search(r"user_id=demo-user room=room-demo-user .* joined room room-demo-user", log), log
    assert "| DEBUG    |" in log
    [secret] = re.findall(r"^  devkey: (\S+)$", (tmp_path / "livekit" / "livekit.yaml").read_text(), re.M)
    assert secret not in log and "eyJ" not in log  # (every JWT starts with eyJ: base64 of '{"')
