"""The mic service with the software echo canceller on real devices: the speaker plays into the
PulseAudio null sink, the mic listens to its monitor (the echo, with the real devices' latencies
and the speaker's play stamps on audio.played)."""

from __future__ import annotations

import asyncio
import shutil

import msgspec
import numpy as np
import pytest

from agent import topics
from agent.audio import room
from agent.audio.settings import MicSettings, SpeakerSettings
from agent.bus import Delivery
from agent.config import BusSettings, default_settings
from agent.messages import AudioFrame, SpeakerState, VadState
from hardware.audio import SoundDeviceInput, SoundDeviceOutput
from services import mic, speaker
from tests.conftest import MakeBus, running_service

RATE = 24_000
FRAME = 480
PULSE = "pulse"
CONVERGED_S = 3.0  # the canceller's first seconds (docs/aec.md) are not judged

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is needed")
_NOT_YET = pytest.mark.xfail(
    strict=False,
    reason="real time on PulseAudio is not reliable yet: audio.played reaches the mic barely in "
    "time (with the 20 ms lookahead, the echo coming ~12 ms before its play stamp, ~20 % of "
    "frames lack part of their reference) and SpeexDSP converges in 8-12 s or not at all; "
    "the mic must wait for its reference (docs/aec.md, not done)",
)


async def _speaker_into_mic(
    bus_settings: BusSettings, make_bus: MakeBus
) -> tuple[list[VadState], float]:
    """Play three avatar lines; (the VAD changes, the echo reduction in dB after 3 s)."""
    settings = msgspec.structs.replace(
        default_settings(),
        bus=bus_settings,
        mic=MicSettings(echo_mode="software_aec"),
        speaker=SpeakerSettings(period_ms=10),
    )
    played = np.concatenate([room.speech(line) for line in room.AVATAR_LINES[:3]])
    pcm = np.clip(np.rint(played * 0.5 * 32768), -32768, 32767).astype("<i2")
    test = await make_bus(
        "display", topics.AUDIO_MIC, topics.VAD_STATE, topics.SPEAKER_STATE, media_queue=10_000
    )
    frames: list[Delivery] = []
    vad: list[VadState] = []
    playing: list[tuple[bool, int]] = []  # speaker.state changes
    heard_tail = asyncio.Event()  # a mic frame captured 500 ms after the speaker went idle
    up = asyncio.Event()  # a mic frame and a speaker state seen: both services run

    async def collect() -> None:
        while True:
            d = await test.recv()
            if isinstance(d.msg, SpeakerState):
                if not playing or playing[-1][0] != d.msg.playing:
                    playing.append((d.msg.playing, d.mono_ns))
            elif isinstance(d.msg, VadState):
                vad.append(d.msg)
            elif isinstance(d.msg, AudioFrame) and d.topic == topics.AUDIO_MIC:
                frames.append(d)
                if playing:
                    up.set()
                if len(playing) >= 2 and not playing[-1][0] and playing[-2][0]:
                    if d.msg.capture_mono_ns > playing[-1][1] + 500_000_000:
                        heard_tail.set()

    async with (
        running_service(
            "speaker", speaker.run, settings, device=SoundDeviceOutput(PULSE, period_ms=10)
        ),
        running_service("mic", mic.run, settings, device=SoundDeviceInput(PULSE)),
    ):
        collector = asyncio.create_task(collect())
        try:
            async with asyncio.timeout(10):
                await up.wait()
            for i in range(0, len(pcm), FRAME):
                test.publish(
                    topics.AUDIO_OUT,
                    AudioFrame(sample_rate_hz=RATE, stream_id="a"),
                    pcm[i : i + FRAME].tobytes(),
                )
                await asyncio.sleep(0.02)  # pacing the source like a WebRTC track
            async with asyncio.timeout(10):
                await heard_tail.wait()
        finally:
            collector.cancel()
    started = [ns for on, ns in playing if on]
    assert started, "the speaker never reported playing"
    started_ns = started[-1]
    judged_from = started_ns + int(CONVERGED_S * 1e9)
    judged_to = started_ns + int(len(pcm) / RATE * 1e9)
    # frames of exact silence are the mic muting itself before convergence: not judged
    judged = [
        np.frombuffer(f.payload[0], "<i2").astype(np.float64)
        for f in frames
        if judged_from <= f.msg.capture_mono_ns < judged_to  # type: ignore[attr-defined]
    ]
    cleaned = np.concatenate([x for x in judged if np.any(x)] or [np.zeros(0)])
    assert len(cleaned) > RATE, "less than a second of cancelled (unmuted) audio to judge"
    a = int(CONVERGED_S * RATE)
    echo_energy = float(np.mean(np.square(pcm[a:].astype(np.float64))))
    reduction_db = 10 * np.log10(echo_energy / max(float(np.mean(np.square(cleaned))), 1e-9))
    return vad, float(reduction_db)


@_NOT_YET
@pytest.mark.usefixtures("pulse_audio")
async def test_software_aec_never_lets_the_avatar_interrupt_itself(
    bus_settings: BusSettings, make_bus: MakeBus
) -> None:
    vad, _reduction_db = await _speaker_into_mic(bus_settings, make_bus)
    assert not any(v.speaking for v in vad), f"the avatar's echo started a turn: {vad}"


@_NOT_YET
@pytest.mark.usefixtures("pulse_audio")
async def test_software_aec_cancels_the_speakers_echo(
    bus_settings: BusSettings, make_bus: MakeBus
) -> None:
    _vad, reduction_db = await _speaker_into_mic(bus_settings, make_bus)
    assert reduction_db >= 20, f"echo only {reduction_db:.1f} dB down"
