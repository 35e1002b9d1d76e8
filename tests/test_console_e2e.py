"""Console commands against the real session service talking to the real emulator:
``say`` gets the avatar's reply, ``session end`` closes the session at the emulator,
``session start`` opens a new one; a recorded mic replayed drives the session."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent import topics
from agent.apps.console import Link
from agent.apps.recording import read_recording, record, record_prefixes, replay
from agent.config import BusSettings, default_settings
from agent.emulator.brain import Script
from agent.emulator.server import Emulator
from agent.messages import (
    AssistantTranscript,
    AudioFrame,
    SessionPhase,
    SessionState,
    UserTranscript,
)
from agent.navtalk.settings import EmulatorSettings, NavTalkSettings, SessionSettings
from services import session as session_service
from tests.conftest import running_service
from tests.supervisor_helpers import ROOT, bus_toml

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).parent / "fixtures" / "navtalk" / "e2e_script.toml"
LICENSE = "Lic-console-e2e-1234567"


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    # no display process here: no WebRTC offer that nobody could answer (offer_unanswered)
    settings = EmulatorSettings(port=0, pace=4.0, webrtc=False)
    emu = Emulator(settings, script=Script.load(SCRIPT))
    await emu.start()
    yield emu
    await emu.close()


def session_settings(emulator: Emulator, bus_settings: BusSettings, tmp: Path) -> Any:
    """The session service's settings against ``emulator``: no tools, no pre-roll."""
    return msgspec.structs.replace(
        default_settings(),
        bus=bus_settings,
        navtalk=NavTalkSettings(url=emulator.base_url, name="navtalk.Leo"),
        session=SessionSettings(
            history_db_path=str(tmp / "h.sqlite3"),
            state_interval_s=0.2,
            catalog_wait_ms=0,
            declare_tools=False,
            preroll_ms=0,
        ),
    )


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_say_and_session_against_the_emulator(
    emulator: Emulator, bus_settings: BusSettings, short_tmp: Path
) -> None:
    cfg = short_tmp / "c.toml"
    cfg.write_text(bus_toml(bus_settings))
    settings = session_settings(emulator, bus_settings, short_tmp)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        code, out, err = await cli("session", "start", "--wait", "30", "-c", str(cfg))
        assert code == 0 and out.splitlines()[-1].startswith("session: ready"), out + err
        code, out, err = await cli("say", "hello", "--wait", "30", "-c", str(cfg))
        assert code == 0, out + err
        assert out.splitlines()[-1] == "avatar: Hi there."
        assert "Hi there." in emulator.sessions[0].stats.replies  # the server made it
        code, out, err = await cli("session", "end", "--wait", "30", "-c", str(cfg))
        assert code == 0 and out.splitlines()[-1].startswith("session: idle"), out + err
        async with asyncio.timeout(10):
            await emulator.sessions[0].closed.wait()
        code, out, err = await cli("session", "start", "--wait", "30", "-c", str(cfg))
        assert code == 0 and out.splitlines()[-1].startswith("session: ready"), out + err
        assert len(emulator.sessions) == 2 and not emulator.sessions[1].closed.is_set()


async def test_a_recorded_mic_replayed_drives_the_session(
    emulator: Emulator, bus_settings: BusSettings, make_bus: Any, short_tmp: Path
) -> None:
    """record --media of a guest's mic, then replay into a running session: the emulator
    hears the utterance and the avatar answers, as with the live mic."""
    settings = session_settings(emulator, bus_settings, short_tmp)
    speech = await emulator.tts.synthesize("What time is it?")
    pcm = b"\x00\x00" * 9600 + speech + b"\x00\x00" * 24000  # 0.4 s, speech, 1 s of silence
    frames = [pcm[i : i + 960] for i in range(0, len(pcm), 960)]
    path = short_tmp / "mic.mcap"
    prefixes = record_prefixes([topics.AUDIO_MIC], media=True)
    async with Link(settings, prefixes, None) as link:  # subscribed once entered
        recording = asyncio.create_task(record(link, path, prefixes, media=True, count=len(frames)))
        mic = await make_bus("mic")
        t0 = time.monotonic()
        for i, frame in enumerate(frames):  # a live mic's pace: one 20 ms frame per 20 ms
            assert mic.publish(topics.AUDIO_MIC, AudioFrame(sample_rate_hz=24000), frame)
            await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))
        async with asyncio.timeout(10):
            await recording
    assert [e.record.payload[0] for e in read_recording(path)] == frames

    watcher = await make_bus("display", topics.SESSION_STATE, "navtalk.transcript.")

    async def next_of(kind: type[Any], pred: Any = lambda m: True) -> Any:
        async with asyncio.timeout(30):
            while True:
                d = await watcher.recv()
                if isinstance(d.msg, kind) and pred(d.msg):
                    return d.msg

    async with running_service("session", session_service.run, settings, license=LICENSE):
        await next_of(SessionState, lambda m: m.phase is SessionPhase.READY)
        assert await replay(settings, path) == 0
        heard = await next_of(UserTranscript)
        assert heard.text == "What time is it?"  # the script's first line: one utterance
        await next_of(AssistantTranscript, lambda m: m.final)
    assert emulator.sessions[0].stats.audio_bytes >= len(speech)
