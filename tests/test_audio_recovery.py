"""Audio devices that go away and come back: the mic and the speaker reopen them on their
own, without a process restart. A private PulseAudio server (scripts/virtual-audio.sh in a
directory of the test's own) is stopped and started again under the running service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from agent import topics
from agent.audio.settings import MicSettings, SpeakerSettings
from agent.config import BusSettings, Settings, default_settings
from agent.messages import AudioFrame, SpeakerState
from hardware.audio import SoundDeviceInput, SoundDeviceOutput
from services import mic, speaker
from tests.conftest import MakeBus, running_service
from tests.test_speaker import _publish_paced, _tone, _wait_for

ROOT = Path(__file__).resolve().parent.parent
BACK_WITHIN_S = 5.0


class PrivatePulse:
    """A PulseAudio server of this test's own, to stop and start at will."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="nt-pa-")  # short: unix socket paths are limited
        self.server = f"unix:{self.dir}/pulse/native"

    def _script(self, cmd: str) -> None:
        env = dict(os.environ, NAVTALK_VAUDIO_DIR=self.dir)
        subprocess.run(
            [str(ROOT / "scripts" / "virtual-audio.sh"), cmd],
            env=env,
            check=True,
            capture_output=True,
            timeout=30,
        )

    def start(self) -> None:
        self._script("start")

    def stop(self) -> None:
        self._script("stop")
        # `pulseaudio --kill` returns at once: wait until the socket is gone
        socket = Path(self.dir) / "pulse" / "native"
        deadline = time.monotonic() + 10
        while socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a file the daemon removes as it exits


@pytest.fixture
def private_pulse(pulse_audio: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivatePulse]:
    """``pulse_audio``: PortAudio lists the "pulse" device; it connects to $PULSE_SERVER when
    a stream opens, so this process's streams go to the private server."""
    if shutil.which("pulseaudio") is None:
        pytest.skip("pulseaudio is not installed")
    pa = PrivatePulse()
    pa.start()
    monkeypatch.setenv("PULSE_SERVER", pa.server)
    try:
        yield pa
    finally:
        with contextlib.suppress(Exception):
            pa.stop()
        shutil.rmtree(pa.dir, ignore_errors=True)


class LogWatch(logging.Handler):
    """Wake the test when a record whose message contains ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.INFO)
        self.text = text
        self.seen = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.loop.call_soon_threadsafe(self.seen.set)

    async def wait(self, timeout: float) -> None:
        await asyncio.wait_for(self.seen.wait(), timeout)


@contextlib.contextmanager
def watching(*texts: str) -> Iterator[list[LogWatch]]:
    watches = [LogWatch(t) for t in texts]
    logger = logging.getLogger("hardware.reopen")
    old = logger.level
    logger.setLevel(logging.INFO)
    for w in watches:
        logger.addHandler(w)
    try:
        yield watches
    finally:
        for w in watches:
            logger.removeHandler(w)
        logger.setLevel(old)


def _settings(bus_settings: BusSettings) -> Settings:
    return msgspec.structs.replace(
        default_settings(),
        bus=bus_settings,
        speaker=SpeakerSettings(period_ms=10),
        mic=MicSettings(vad_enabled=False),
    )


async def _outage(pa: PrivatePulse, gone: LogWatch, away_s: float = 1.0) -> float:
    """Stop the server, wait until the service noticed, keep it away ``away_s``, start it
    again; returns when it was back (monotonic)."""
    await asyncio.to_thread(pa.stop)
    await gone.wait(10)
    await asyncio.sleep(away_s)  # the outage's length: part of the scenario
    await asyncio.to_thread(pa.start)
    return time.monotonic()


async def test_the_speaker_reopens_its_device_when_pulseaudio_comes_back(
    private_pulse: PrivatePulse, bus_settings: BusSettings, make_bus: MakeBus
) -> None:
    test = await make_bus("display", topics.SPEAKER_STATE, media_queue=10_000)
    device = SoundDeviceOutput("pulse", period_ms=10)
    with watching("speaker device is gone", "speaker device is back") as (gone, back):
        async with running_service(
            "speaker", speaker.run, _settings(bus_settings), device=device
        ) as task:
            await _wait_for(test, lambda d: isinstance(d.msg, SpeakerState))
            returned = await _outage(private_pulse, gone)
            await back.wait(BACK_WITHIN_S + 5)
            took = time.monotonic() - returned
            assert took < BACK_WITHIN_S, f"reopened {took:.1f} s after the server came back"
            assert not task.done()
            before = device.callbacks
            # the voice plays again: speaker.state says playing (driven by the device's pulls)
            tone = asyncio.create_task(
                _publish_paced(test, topics.AUDIO_OUT, _tone(440, 1.0, 48_000, 2), 48_000, 2)
            )
            await _wait_for(test, lambda d: isinstance(d.msg, SpeakerState) and d.msg.playing)
            await tone
            assert device.callbacks > before
            print(f"speaker device back {took:.2f} s after PulseAudio")


async def test_the_mic_reopens_its_device_when_pulseaudio_comes_back(
    private_pulse: PrivatePulse, bus_settings: BusSettings, make_bus: MakeBus
) -> None:
    test = await make_bus("session", topics.AUDIO_MIC, media_queue=10_000)
    device = SoundDeviceInput("pulse", frame_ms=20)
    with watching("mic device is gone", "mic device is back") as (gone, back):
        async with running_service("mic", mic.run, _settings(bus_settings), device=device) as task:
            await _wait_for(test, lambda d: isinstance(d.msg, AudioFrame))
            returned = await _outage(private_pulse, gone)
            await back.wait(BACK_WITHIN_S + 5)
            took = time.monotonic() - returned
            assert took < BACK_WITHIN_S, f"reopened {took:.1f} s after the server came back"
            after_ns = time.monotonic_ns()
            frame = await _wait_for(
                test,
                lambda d: isinstance(d.msg, AudioFrame) and d.msg.capture_mono_ns > after_ns,
            )
            assert len(frame.payload[0]) == 24_000 * 20 // 1000 * 2
            assert not task.done()
            assert np.frombuffer(frame.payload[0], "<i2").size == 480
            print(f"mic device back {took:.2f} s after PulseAudio")
