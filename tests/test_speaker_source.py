"""Never mute, never double: the real speaker service chooses, per response, between the
WebRTC voice (audio.out) and the WebSocket deltas (navtalk.audio.delta).

Real bus, real speaker, the WAV file output device (real time). Each copy of the voice is
a tone of its own frequency, so the file tells which copy was played, and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import wave
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np

from agent import topics
from agent.audio.settings import MicSettings, SpeakerSettings
from agent.bus import Bus, Delivery
from agent.config import BusSettings, Settings, default_settings
from agent.messages import AudioFrame, ResponseDone, SpeakerState
from hardware.audio import WavFileOutput
from services import speaker
from tests.audio_fixtures import Int16Array
from tests.conftest import MakeBus, running_service
from tests.test_speaker import _publish_paced, _tone, _wait_for, _wait_speaker_up

RATE = 24_000
WINDOW = 480  # 20 ms at 24 kHz: 50 Hz bins


def _settings(bus_settings: BusSettings, wav: Path) -> Settings:
    return msgspec.structs.replace(
        default_settings(),
        bus=bus_settings,
        # a deeper jitter buffer than the default 60 ms: the test's own paced publishing
        # lags on a loaded 2-core machine, and an underrun would read as a gap
        speaker=SpeakerSettings(
            backend="file", wav_path=str(wav), voice_stall_ms=500, jitter_target_ms=200
        ),
        mic=MicSettings(echo_mode="software_aec"),  # audio.played: the tests follow it
    )


def _publish_burst(bus: Bus, pcm: Int16Array, response_id: str, chunk_ms: int = 100) -> None:
    """Deltas as a fast server sends them: all at once, then the response's done."""
    per = RATE * chunk_ms // 1000
    for i in range(0, len(pcm), per):
        bus.publish(
            topics.NAVTALK_AUDIO_DELTA,
            AudioFrame(sample_rate_hz=RATE, channels=1, stream_id=response_id),
            pcm[i : i + per].astype("<i2").tobytes(),
        )
    bus.publish(topics.NAVTALK_AUDIO_DONE, ResponseDone(response_id=response_id))


def _timeline(wav: Path) -> list[int]:
    """The dominant frequency (Hz, rounded to 50) of every 20 ms of the file; 0 = silence."""
    with wave.open(str(wav)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    out = []
    for i in range(0, len(x) - WINDOW + 1, WINDOW):
        win = x[i : i + WINDOW]
        if np.abs(win).max() < 1000:
            out.append(0)
            continue
        spectrum = np.abs(np.fft.rfft(win * np.hanning(WINDOW)))
        out.append(
            int(round(np.fft.rfftfreq(WINDOW, 1 / RATE)[int(np.argmax(spectrum))] / 50)) * 50
        )
    return out


def _runs(timeline: list[int]) -> list[tuple[int, int]]:
    """(frequency, windows) for each run of equal values, silence runs included."""
    runs: list[tuple[int, int]] = []
    for f in timeline:
        if runs and runs[-1][0] == f:
            runs[-1] = (f, runs[-1][1] + 1)
        else:
            runs.append((f, 1))
    return runs


def _audible(timeline: list[int]) -> list[tuple[int, int]]:
    """The runs of sound, with the single windows where a tone starts or stops (mixed
    spectra) merged into their neighbours."""
    return [(f, n) for f, n in _runs(timeline) if f and n > 2]


async def _idle(test: Bus) -> None:
    await _wait_for(test, lambda d: isinstance(d.msg, SpeakerState) and not d.msg.playing, 10)


async def test_without_webrtc_every_delta_is_played(
    bus_settings: BusSettings, make_bus: MakeBus, tmp_path: Path
) -> None:
    """The greeting, before WebRTC is up: all of it, without a gap."""
    wav = tmp_path / "speaker.wav"
    test = await make_bus("session", topics.SPEAKER_STATE, media_queue=10_000)
    device = WavFileOutput(wav, period_ms=20)
    async with running_service("speaker", speaker.run, _settings(bus_settings, wav), device=device):
        await _wait_speaker_up(test)
        _publish_burst(test, _tone(300.0, 1.0, RATE, 1), "greeting")
        await _wait_for(test, lambda d: isinstance(d.msg, SpeakerState) and d.msg.playing)
        await _idle(test)
    sound = _audible(_timeline(wav))
    assert [f for f, _ in sound] == [300], sound
    assert 48 <= sound[0][1] <= 51, f"{sound[0][1] * 20} ms of the 1000 ms greeting"


async def test_with_webrtc_live_the_deltas_are_not_played(
    bus_settings: BusSettings, make_bus: MakeBus, tmp_path: Path
) -> None:
    wav = tmp_path / "speaker.wav"
    test = await make_bus("display", topics.SPEAKER_STATE, media_queue=10_000)
    device = WavFileOutput(wav, period_ms=20)
    webrtc = np.concatenate(
        [np.zeros(48_000 * 2 * 2 // 10, np.int16), _tone(1500.0, 1.0, 48_000, 2)]
    )  # 200 ms of the track's silence, then the reply
    async with running_service("speaker", speaker.run, _settings(bus_settings, wav), device=device):
        await _wait_speaker_up(test)
        track = asyncio.create_task(
            _publish_paced(test, topics.AUDIO_OUT, webrtc, 48_000, 2, stream_id="")
        )
        await asyncio.sleep(0.2)  # pacing the scenario: the reply starts 0.2 s into the track
        _publish_burst(test, _tone(450.0, 1.0, RATE, 1), "r1")  # the same reply, as deltas
        await track
        await _idle(test)
    sound = _audible(_timeline(wav))
    assert [f for f, _ in sound] == [1500], sound
    assert 48 <= sound[0][1] <= 51


class Track:
    """The display's side: a live WebRTC voice on audio.out, one 20 ms frame of 48 kHz stereo
    every 20 ms (silence between what is queued), until ``stop()``."""

    FRAME = 960 * 2  # samples per frame, both channels

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.queued = np.zeros(0, np.int16)
        self._stop_after_queued = False
        self.task = asyncio.create_task(self._run())

    def say(self, pcm: Int16Array, *, then_stop: bool = False) -> None:
        self.queued = np.concatenate([self.queued, pcm])
        self._stop_after_queued = then_stop

    async def _run(self) -> None:
        t0 = time.monotonic()
        k = 0
        while True:
            if len(self.queued):
                frame, self.queued = self.queued[: self.FRAME], self.queued[self.FRAME :]
            elif self._stop_after_queued:
                return  # the link stalls: no frame any more
            else:
                frame = np.zeros(self.FRAME, np.int16)
            self.bus.publish(
                topics.AUDIO_OUT,
                AudioFrame(sample_rate_hz=48_000, channels=2, capture_mono_ns=time.monotonic_ns()),
                frame.astype("<i2").tobytes(),
            )
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * 0.02 - time.monotonic()))  # a track's pace

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def _played(stream_id: str) -> Callable[[Delivery], bool]:
    """audio.played blocks of ``stream_id`` ("" = the WebRTC voice): that copy is heard."""
    return lambda d: (
        d.topic == topics.AUDIO_PLAYED
        and isinstance(d.msg, AudioFrame)
        and d.msg.stream_id == stream_id
        and np.abs(np.frombuffer(d.payload[0], "<i2")).max() > 1000
    )


async def _played_out(test: Bus, stream_id: str) -> None:
    """Until ``stream_id`` has been played (after one of its audible blocks was seen): an
    idle speaker.state published after its last audible audio.played block. (The two ride
    on different planes, so an older idle state may arrive after a newer block: compare
    the publishers' timestamps, not the arrival order.)"""
    last_ns = 0
    heard = _played(stream_id)

    def done(d: Delivery) -> bool:
        nonlocal last_ns
        if heard(d):
            last_ns = max(last_ns, d.mono_ns)
        return bool(last_ns) and _is_idle(d) and d.mono_ns > last_ns

    await _wait_for(test, done, 10)


def _is_idle(d: Delivery) -> bool:
    return isinstance(d.msg, SpeakerState) and not d.msg.playing


async def test_switch_to_webrtc_mid_conversation_neither_doubles_nor_drops(
    bus_settings: BusSettings, make_bus: MakeBus, tmp_path: Path
) -> None:
    """r1 starts on deltas; WebRTC comes up during r1 (carrying r1's rest: held back); r2 is
    played from WebRTC and its deltas are ignored."""
    wav = tmp_path / "speaker.wav"
    test = await make_bus("session", topics.SPEAKER_STATE, topics.AUDIO_PLAYED, media_queue=10_000)
    device = WavFileOutput(wav, period_ms=20)
    async with running_service("speaker", speaker.run, _settings(bus_settings, wav), device=device):
        await _wait_speaker_up(test)
        _publish_burst(test, _tone(300.0, 1.0, RATE, 1), "r1")  # before WebRTC is up
        await _wait_for(test, _played("r1"))
        track = Track(test)  # WebRTC connects during r1, carrying r1's rest
        track.say(_tone(700.0, 0.6, 48_000, 2))
        try:
            await _played_out(test, "r1")
            track.say(_tone(1500.0, 0.5, 48_000, 2))  # r2, on both copies
            _publish_burst(test, _tone(450.0, 0.5, RATE, 1), "r2")
            await _played_out(test, "")
        finally:
            await track.stop()
    sound = _audible(_timeline(wav))
    assert [f for f, _ in sound] == [300, 1500], sound  # no 700 (doubling), no 450 (r2 twice)
    assert 48 <= sound[0][1] <= 51, "r1 was cut"
    assert 23 <= sound[1][1] <= 26, "r2 was cut"


async def test_webrtc_stalling_mid_reply_finishes_the_reply_from_the_deltas(
    bus_settings: BusSettings, make_bus: MakeBus, tmp_path: Path
) -> None:
    """WebRTC plays r1 (1500 Hz) and stops 0.4 s into it; the deltas (300 Hz, all of r1,
    received at once) play the rest, from where WebRTC was: nothing lost, nothing twice."""
    wav = tmp_path / "speaker.wav"
    test = await make_bus("session", topics.SPEAKER_STATE, topics.AUDIO_PLAYED, media_queue=10_000)
    device = WavFileOutput(wav, period_ms=20)
    async with running_service("speaker", speaker.run, _settings(bus_settings, wav), device=device):
        await _wait_speaker_up(test)
        track = Track(test)
        try:
            track.say(_tone(1000.0, 0.3, 48_000, 2))  # an earlier reply: WebRTC is live
            await _played_out(test, "")
            track.say(_tone(1500.0, 0.4, 48_000, 2), then_stop=True)  # r1, then the stall
            _publish_burst(test, _tone(300.0, 1.0, RATE, 1), "r1")
            await _played_out(test, "r1")  # the rest of r1, from the deltas
        finally:
            await track.stop()
    sound = _audible(_timeline(wav))
    assert [f for f, _ in sound] == [1000, 1500, 300], sound
    r1 = sum(n for _, n in sound[1:])
    assert 46 <= r1 <= 54, f"{r1 * 20} ms of the 1000 ms reply"
