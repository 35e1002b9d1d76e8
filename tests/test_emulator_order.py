"""The strict emulator's event order on a real socket: transcript deltas paced with the
audio, and on a barge-in speech_started before the cut response's audio.done."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
from websockets.asyncio.client import connect

from agent.emulator.script import Script
from agent.emulator.server import Emulator
from agent.navtalk.settings import EmulatorSettings

TIMEOUT = 20.0
GREETING = "Welcome to the emulated hotel. We are very glad to see you here today, my friend."


def voice_frames() -> list[str]:
    rng = np.random.default_rng(1)
    t = np.arange(24000) / 24000
    voice = 8000 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    pcm = bytes(9600) + (voice + rng.normal(0, 500, t.size)).astype("<i2").tobytes()
    pcm += bytes(48000)
    return [
        json.dumps({"type": "realtime.input_audio_buffer.append",
                    "data": {"audio": base64.b64encode(pcm[i : i + 3072]).decode()}})
        for i in range(0, len(pcm), 3072)
    ]  # fmt: skip


async def frames_until(ws: Any, kind: str) -> list[str]:
    seen: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while not seen or seen[-1] != kind:
            seen.append(json.loads(await ws.recv())["type"])
    return seen


async def test_transcript_is_paced_and_barge_in_order_is_real() -> None:
    settings = EmulatorSettings(port=0, webrtc=False, strict_fail=True, recognizer="order")
    async with Emulator(settings, script=Script(greeting=GREETING, fallback="Sorry?")) as emu:
        async with connect(f"{emu.base_url}?license=abc&name=Leo") as ws:
            seen = await frames_until(ws, "realtime.response.audio.delta")
            # some audio has gone out; more transcript deltas are still to come
            seen += await frames_until(ws, "realtime.response.audio_transcript.delta")
            first = seen.index("realtime.response.audio_transcript.delta")
            assert "realtime.response.audio.delta" in seen[first:]
            for frame in voice_frames():  # the guest talks over the greeting
                await ws.send(frame)
            seen = await frames_until(ws, "realtime.input_audio_buffer.speech_stopped")
            started = seen.index("realtime.input_audio_buffer.speech_started")
            assert "realtime.response.audio.done" in seen[started:], seen
            assert "realtime.response.audio.done" not in seen[:started], seen
            assert "realtime.response.audio_transcript.done" not in seen  # cut, not finished
        assert emu.violations == []
