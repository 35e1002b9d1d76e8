"""The mic service on real sounddevice (ALSA vrec: exact data path; PulseAudio null sink:
real time, with the speaker's echo), and on its WAV file backend (the demo's guest)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
import soxr

from agent import topics
from agent.audio.settings import MicSettings, SpeakerSettings
from agent.bus import Bus, Delivery, Proxy
from agent.config import BusSettings, Settings, default_settings
from agent.errors import DeviceError
from agent.messages import AudioFrame, PreRoll, PreRollRequest, SpeakerState, VadState
from hardware.audio import AudioInput, SoundDeviceInput, SoundDeviceOutput
from services import mic, speaker
from tests.audio_fixtures import (
    Int16Array,
    VirtualFiles,
    make_speech,
    write_wav,
)
from tests.conftest import MakeBus, ipc_bus_settings, running_service

RATE = 24_000
FRAME = 480
PULSE = "pulse"


def _settings(bus_settings: BusSettings, **mic_fields: object) -> Settings:
    return msgspec.structs.replace(
        default_settings(), bus=bus_settings, mic=MicSettings(**mic_fields)
    )


async def _collect_frames(bus: Bus, n: int, timeout: float = 10.0) -> list[Delivery]:
    frames: list[Delivery] = []
    async with asyncio.timeout(timeout):
        while len(frames) < n:
            d = await bus.recv()
            if d.topic == topics.AUDIO_MIC:
                frames.append(d)
    return frames


def _pcm(frames: list[Delivery]) -> Int16Array:
    return np.frombuffer(b"".join(d.payload[0] for d in frames), "<i2").astype(np.int16)


@pytest.fixture
def big_bus() -> Iterator[BusSettings]:
    """A proxy whose media plane holds a burst: the ALSA file device is not paced."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="nt-")
    settings = ipc_bus_settings(d, media_hwm=100_000)
    with Proxy(settings):
        yield settings
    shutil.rmtree(d, ignore_errors=True)


# --- exact data path: ALSA vrec ---------------------------------------------------------------


async def test_known_wav_in_gives_the_same_speech_on_audio_mic(
    vaudio: VirtualFiles,  # noqa: F811 (the fixture imported above)
    big_bus: BusSettings,
    tmp_path: Path,
) -> None:
    """A WAV (48 kHz stereo) fed to the capture device opened at 48 kHz x 2 -> audio.mic is
    the same speech at 24 kHz mono, 20 ms frames, dated in order."""
    speech = make_speech("Hello, I would like to check in please.")
    voice48 = soxr.resample(speech.samples, RATE, 48_000).astype(np.int16)
    wav = write_wav(tmp_path / "guest48.wav", np.repeat(voice48, 2), rate=48_000, channels=2)
    with __import__("wave").open(str(wav)) as w:  # the known WAV -> the device's input file
        vaudio.set_input(w.readframes(w.getnframes()), rate=48_000, ch=2)
    settings = _settings(big_bus)
    device = SoundDeviceInput("vrec", sample_rate_hz=48_000, channels=2, queue_ms=600_000)
    test = Bus(big_bus, "session", media_queue=100_000)
    test.subscribe(topics.AUDIO_MIC)  # before start(): in place before the mic publishes
    async with test:
        async with running_service("mic", mic.run, settings, device=device):
            n = len(speech.samples) // FRAME + 1
            frames = await _collect_frames(test, n)
    for d in frames:
        assert isinstance(d.msg, AudioFrame)
        assert (d.msg.sample_rate_hz, d.msg.channels, len(d.payload[0])) == (RATE, 1, 960)
    stamps = [d.msg.capture_mono_ns for d in frames]  # type: ignore[attr-defined]
    assert stamps == sorted(stamps)
    got = _pcm(frames)[: len(speech.samples)].astype(np.float64)
    corr = float(np.corrcoef(got, speech.samples.astype(np.float64))[0, 1])
    assert corr > 0.999, f"correlation {corr:.5f}"
    assert [d.seq for d in frames] == list(range(1, n + 1)), "no frame lost"


# --- the WAV file backend, real time -----------------------------------------------------------


async def test_file_guest_paced_with_vad_turns_at_the_labelled_times(
    bus_settings: BusSettings, make_bus: MakeBus, tmp_path: Path
) -> None:
    speech = make_speech("Good morning.")
    lead = RATE // 2
    x = np.concatenate([np.zeros(lead, np.int16), speech.samples, np.zeros(RATE // 2, np.int16)])
    wav = write_wav(tmp_path / "guest.wav", x)
    settings = _settings(bus_settings, backend="file", wav_path=str(wav), pad_silence=True)
    test = await make_bus("session", topics.AUDIO_MIC, topics.VAD_STATE, media_queue=10_000)
    events: list[VadState] = []
    frames: list[Delivery] = []
    async with running_service("mic", mic.run, settings, device=None):
        async with asyncio.timeout(10):
            while len(events) < 2:
                d = await test.recv()
                if isinstance(d.msg, VadState):
                    events.append(d.msg)
                elif d.topic == topics.AUDIO_MIC:
                    frames.append(d)
    t0 = frames[0].msg.capture_mono_ns  # type: ignore[attr-defined]
    assert [e.speaking for e in events] == [True, False]
    onset_ms = (events[0].at_mono_ns - t0) / 1e6 - (lead + speech.voice_start) / RATE * 1000
    offset_ms = (events[1].at_mono_ns - t0) / 1e6 - (lead + speech.voice_end) / RATE * 1000
    assert abs(onset_ms) <= 60 and abs(offset_ms) <= 60, (onset_ms, offset_ms)
    # Paced like a device: 20 ms apart, each published about 20 ms after its first sample.
    stamps = np.array([d.msg.capture_mono_ns for d in frames])  # type: ignore[attr-defined]
    assert set(np.diff(stamps)) == {20_000_000}
    ages_ms = np.array([d.mono_ns - d.msg.capture_mono_ns for d in frames]) / 1e6  # type: ignore[attr-defined]
    assert 19.0 <= float(np.median(ages_ms)) <= 25.0, ages_ms
    assert np.array_equal(
        _pcm(frames)[: len(x) // FRAME * FRAME][: len(x)], x[: len(frames) * FRAME]
    )


async def test_preroll_request_returns_the_last_audio_published(
    bus_settings: BusSettings, make_bus: MakeBus, tmp_path: Path
) -> None:
    ramp = (np.arange(RATE * 2) % 20_000).astype(np.int16)  # every sample tells its position
    wav = write_wav(tmp_path / "ramp.wav", ramp)
    settings = _settings(bus_settings, backend="file", wav_path=str(wav), preroll_ms=1000)
    test = await make_bus("session", topics.AUDIO_MIC, topics.MIC_PREROLL, media_queue=10_000)
    async with running_service("mic", mic.run, settings, device=None):
        frames = await _collect_frames(test, 15)
        test.publish(topics.MIC_PREROLL_REQUEST, PreRollRequest(request_id="r7", duration_ms=200))
        reply = await asyncio.wait_for(
            _first(test, lambda d: isinstance(d.msg, PreRoll)), timeout=5
        )
        async with asyncio.timeout(5):  # the frames published up to the reply
            while True:
                d = await test.recv()
                if d.topic == topics.AUDIO_MIC:
                    frames.append(d)
                if d.seq and frames[-1].msg.capture_mono_ns >= reply.msg.end_mono_ns - 20_000_000:  # type: ignore[attr-defined]
                    break
    assert isinstance(reply.msg, PreRoll)
    assert reply.msg.request_id == "r7" and reply.msg.sample_rate_hz == RATE
    pcm = np.frombuffer(reply.payload[0], "<i2")
    assert len(pcm) == RATE // 5
    end = [f for f in frames if f.msg.capture_mono_ns + 20_000_000 == reply.msg.end_mono_ns]  # type: ignore[attr-defined]
    assert end, "the pre-roll ends at a published frame"
    upto = frames.index(end[0]) + 1
    assert np.array_equal(pcm, _pcm(frames[:upto])[-len(pcm) :])


async def _first(bus: Bus, pred: Callable[[Delivery], bool]) -> Delivery:
    while True:
        d = await bus.recv()
        if pred(d):
            return d


# --- real time, with echo: PulseAudio null sink ------------------------------------------------


@pytest.mark.usefixtures("pulse_audio")
@pytest.mark.parametrize("echo_mode", ["none", "half_duplex"])
async def test_half_duplex_gates_the_speakers_echo(
    echo_mode: str, bus_settings: BusSettings, make_bus: MakeBus
) -> None:
    """The speaker plays speech into the null sink; the mic listens to its monitor (a perfect
    echo). With echo_mode none the avatar's voice comes back as a guest turn; half_duplex
    replaces the frames by silence while the speaker plays (and a tail after) and no turn
    starts."""
    settings = msgspec.structs.replace(
        default_settings(),
        bus=bus_settings,
        mic=MicSettings(echo_mode=echo_mode, echo_tail_ms=200),  # type: ignore[arg-type]
        speaker=SpeakerSettings(period_ms=10),
    )
    speech = make_speech("Welcome to the hotel. How can I help you?")
    test = await make_bus(
        "display", topics.AUDIO_MIC, topics.VAD_STATE, topics.SPEAKER_STATE, media_queue=10_000
    )
    frames: list[Delivery] = []
    vad: list[VadState] = []
    states: list[tuple[bool, int]] = []
    mic_device: AudioInput = SoundDeviceInput(PULSE)
    async with (
        running_service(
            "speaker", speaker.run, settings, device=SoundDeviceOutput(PULSE, period_ms=10)
        ),
        running_service("mic", mic.run, settings, device=mic_device),
    ):
        await _first(test, lambda d: d.topic == topics.AUDIO_MIC)
        await _first(test, lambda d: isinstance(d.msg, SpeakerState))
        for i in range(0, len(speech.samples), FRAME):
            test.publish(
                topics.AUDIO_OUT,
                AudioFrame(sample_rate_hz=RATE, stream_id="a"),
                speech.samples[i : i + FRAME].astype("<i2").tobytes(),
            )
            await asyncio.sleep(0.02)  # pacing the source like a WebRTC track
        async with asyncio.timeout(10):
            while not states or states[-1][0] or len(states) < 2:
                d = await test.recv()
                if isinstance(d.msg, SpeakerState) and (
                    not states or states[-1][0] != d.msg.playing
                ):
                    states.append((d.msg.playing, d.mono_ns))
                elif isinstance(d.msg, VadState):
                    vad.append(d.msg)
                elif d.topic == topics.AUDIO_MIC:
                    frames.append(d)
            end = time.monotonic_ns() + 300_000_000
            while time.monotonic_ns() < end:  # the tail and a little more
                d = await test.recv()
                if isinstance(d.msg, VadState):
                    vad.append(d.msg)
                elif d.topic == topics.AUDIO_MIC:
                    frames.append(d)
    (on, started_ns), (off, stopped_ns) = states[-2], states[-1]
    assert on and not off
    during = [f for f in frames if started_ns <= f.msg.capture_mono_ns < stopped_ns]  # type: ignore[attr-defined]
    assert len(during) > 50
    echo_heard = max(int(np.abs(np.frombuffer(f.payload[0], "<i2")).max()) for f in during)
    if echo_mode == "none":
        assert echo_heard > 5000, "the speech came back through the monitor"
        assert any(v.speaking for v in vad), "the echo started a guest turn"
    else:
        assert echo_heard == 0, "frames are silence while the speaker plays"
        assert not any(v.speaking for v in vad), "no guest turn from the echo"


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("alsa_audio")
@pytest.mark.parametrize("spec", ["no-such-microphone", "77"])
async def test_missing_device_is_a_device_error_naming_the_devices(
    bus_settings: BusSettings, spec: str
) -> None:
    settings = _settings(bus_settings, device=spec)
    bus = Bus(settings.bus, "mic")
    try:
        with pytest.raises(DeviceError, match="vrec"):
            await mic.run(settings, bus)
    finally:
        await bus.close()


async def test_null_backend_gives_paced_silence(
    bus_settings: BusSettings, make_bus: MakeBus
) -> None:
    settings = _settings(bus_settings, backend="null", vad_enabled=False)
    test = await make_bus("session", topics.AUDIO_MIC, media_queue=10_000)
    async with running_service("mic", mic.run, settings, device=None):
        frames = await _collect_frames(test, 10)
    assert not _pcm(frames).any()
    stamps = [f.msg.capture_mono_ns for f in frames]  # type: ignore[attr-defined]
    assert set(np.diff(stamps)) == {20_000_000}
