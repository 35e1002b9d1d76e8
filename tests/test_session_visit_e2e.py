"""The kiosk's visits end to end: the session service on the real bus, the emulator as
NavTalk over loopback, a bus peer standing in for the mic (vad.state, the pre-roll it is
asked for, live frames), checked at the emulator."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from agent import topics
from agent.bus import Bus
from agent.config import BusSettings
from agent.emulator.script import Script
from agent.emulator.server import Emulator
from agent.messages import (
    AssistantTranscript,
    AudioFrame,
    PreRoll,
    PreRollRequest,
    SessionControl,
    SessionPhase,
    SessionState,
    TextInput,
    UserTranscript,
    VadState,
)
from agent.navtalk.settings import EmulatorSettings
from services import session as session_service
from tests.conftest import running_service
from tests.test_session_e2e import (
    FIXTURES,
    LICENSE,
    SILENCE,
    TIMEOUT,
    Recorder,
    make_settings,
)
from tests.test_session_e2e import rec as _rec

rec = _rec  # the fixture: every bus message, and no license in any of them nor in the log

pytestmark = pytest.mark.e2e

WRAPUP = "The visit is over: say a short, polite goodbye to the guest."
GOODBYE = "Thank you for visiting. Goodbye!"
FRAME = 960  # 20 ms at 24 kHz, 16-bit mono


@pytest.fixture
async def emulator() -> Any:
    emu = Emulator(
        EmulatorSettings(port=0, pace=4.0), script=Script.load(FIXTURES / "visit_script.toml")
    )
    await emu.start()
    yield emu
    await emu.close()


def visit_is(phase: str) -> Any:
    return lambda d: isinstance(d.msg, SessionState) and d.msg.visit == phase


def final_reply(text: str) -> Any:
    return lambda d: isinstance(d.msg, AssistantTranscript) and d.msg.final and d.msg.text == text


class GuestMic:
    """What the mic service does when a guest starts talking: vad.state at the onset, the
    audio from before the session existed as the pre-roll the session asks for, then the
    rest as live audio.mic frames."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def say(self, pcm: bytes, *, head_ms: int = 500, speed: float = 4.0) -> None:
        self.bus.publish(topics.VAD_STATE, VadState(speaking=True, at_mono_ns=time.monotonic_ns()))
        async with asyncio.timeout(TIMEOUT):
            while True:
                d = await self.bus.recv()
                if isinstance(d.msg, PreRollRequest):
                    break
        pcm = SILENCE[:9600] + pcm  # the room before the first word (as in a real pre-roll)
        n = min(len(pcm), head_ms * 48) // 2 * 2
        end_ns = time.monotonic_ns()
        self.bus.publish(
            topics.MIC_PREROLL,
            PreRoll(request_id=d.msg.request_id, sample_rate_hz=24000, end_mono_ns=end_ns),
            pcm[:n],
        )
        rest = pcm[n:] + SILENCE
        for k, i in enumerate(range(0, len(rest), FRAME)):
            at = end_ns + k * 20_000_000
            frame = AudioFrame(sample_rate_hz=24000, capture_mono_ns=at)
            self.bus.publish(topics.AUDIO_MIC, frame, rest[i : i + FRAME])
            await asyncio.sleep(0.020 / speed)  # pacing a producer, not waiting for a result
        self.bus.publish(topics.VAD_STATE, VadState(speaking=False, at_mono_ns=time.monotonic_ns()))


async def test_two_guests_two_visits_nothing_shared(
    emulator: Emulator, bus_settings: BusSettings, make_bus: Any, tmp_path: Path, rec: Recorder
) -> None:
    settings = make_settings(
        bus_settings,
        emulator,
        tmp_path,
        catalog_wait_ms=0,
        declare_tools=False,
        start_triggers=("voice", "button"),
        preroll_ms=500,
        voice_cooldown_s=0.0,  # guest B is simulated right after A; the default is 0.5 s
    )
    mic = GuestMic(await make_bus("mic", topics.MIC_PREROLL_REQUEST))
    console = await make_bus("console")
    speech_a = await emulator.tts.synthesize("Please run the slow thing.")
    speech_b = await emulator.tts.synthesize("What time is it?")
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await rec.wait_for(visit_is("idle"))
        assert emulator.sessions == []  # voice trigger: nothing opens before a guest speaks

        # guest A
        mark = len(rec.seen)
        await mic.say(speech_a)
        heard = await rec.wait_for(lambda d: isinstance(d.msg, UserTranscript), after=mark)
        assert isinstance(heard.msg, UserTranscript)
        assert heard.msg.text == "Please run the slow thing."  # whole
        await rec.wait_for(final_reply("Done."), after=mark)
        a = emulator.sessions[0]
        console.publish(topics.CONTROL_SESSION, SessionControl(action="end", reason="left"))
        await asyncio.wait_for(a.closed.wait(), TIMEOUT)
        idle = await rec.wait_for(visit_is("idle"), after=rec.seen.index(heard))
        ready_s = time.monotonic() - (a.closed_mono or 0.0)
        assert ready_s < 1.0, f"ready for the next guest {ready_s:.2f} s after the close"
        assert isinstance(idle.msg, SessionState) and idle.msg.phase is SessionPhase.IDLE

        # guest B
        mark = len(rec.seen)
        await mic.say(speech_b)
        heard = await rec.wait_for(lambda d: isinstance(d.msg, UserTranscript), after=mark)
        assert isinstance(heard.msg, UserTranscript) and heard.msg.text == "What time is it?"
        await rec.wait_for(final_reply("It is noon."), after=mark)
        assert len(emulator.sessions) == 2
        b = emulator.sessions[1]
        assert a.closed_mono is not None and a.closed_mono < b.opened_mono  # none in between
        # B's session got nothing of A: no replayed turn, no audio beyond B's own words
        assert b.stats.history == []
        assert b.stats.heard == ["What time is it?"]
        assert b.stats.audio_bytes <= len(speech_b) + 9600 + len(SILENCE)
        assert a.stats.heard == ["Please run the slow thing."]


async def test_idle_timeout_says_goodbye_then_closes(
    emulator: Emulator, bus_settings: BusSettings, make_bus: Any, tmp_path: Path, rec: Recorder
) -> None:
    settings = make_settings(
        bus_settings,
        emulator,
        tmp_path,
        catalog_wait_ms=0,
        declare_tools=False,
        start_triggers=("button",),
        idle_timeout_s=1.0,
        wrapup_text=WRAPUP,
    )
    button = await make_bus("gpio")
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await rec.wait_for(visit_is("idle"))
        assert emulator.sessions == []
        button.publish(topics.CONTROL_SESSION, SessionControl(action="start", reason="button"))
        await rec.wait_for(visit_is("engaged"))
        ready = time.monotonic()
        s = await emulator.wait_sessions(1, TIMEOUT)
        await asyncio.wait_for(s.closed.wait(), TIMEOUT)
        assert s.closed_mono is not None and s.closed_mono - ready >= 1.0
        assert s.close_code == 1000
        assert s.stats.history == [WRAPUP]  # the wrap-up was asked for...
        assert s.stats.replies == [GOODBYE]  # ...and said, in full, before the close
        assert s.sent.count("realtime.response.audio.done") == 1, s.sent
        await rec.wait_for(final_reply(GOODBYE))
        await rec.wait_for(visit_is("idle"), after=len(rec.seen) - 1)
        assert len(emulator.sessions) == 1  # and no new session


async def test_maximum_length_wraps_up_mid_conversation(
    emulator: Emulator, bus_settings: BusSettings, make_bus: Any, tmp_path: Path, rec: Recorder
) -> None:
    settings = make_settings(
        bus_settings,
        emulator,
        tmp_path,
        catalog_wait_ms=0,
        declare_tools=False,
        start_triggers=("button",),
        max_session_s=2.0,
        wrapup_text=WRAPUP,
    )
    kiosk = await make_bus("kiosk")
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await rec.wait_for(visit_is("idle"))
        pressed = time.monotonic()
        kiosk.publish(topics.CONTROL_SESSION, SessionControl(action="start"))
        await rec.wait_for(visit_is("engaged"))
        kiosk.publish(topics.INPUT_TEXT, TextInput(text="What time is it?"))
        await rec.wait_for(final_reply("It is noon."))
        s = emulator.sessions[0]
        await asyncio.wait_for(s.closed.wait(), TIMEOUT)
        assert s.closed_mono is not None and s.closed_mono - pressed >= 2.0
        assert s.stats.history == ["What time is it?", WRAPUP]
        assert s.stats.replies == ["It is noon.", GOODBYE]
        # both responses were spoken to their end before the close
        assert s.sent.count("realtime.response.audio.done") == 2, (s.sent, s.stats.errors_sent)
        await rec.wait_for(visit_is("idle"), after=len(rec.seen) - 1)


@pytest.mark.parametrize("period", ["daily", "monthly"])
async def test_a_spent_budget_closes_and_refuses_after_a_restart(
    emulator: Emulator,
    bus_settings: BusSettings,
    make_bus: Any,
    tmp_path: Path,
    rec: Recorder,
    period: str,
) -> None:
    settings = make_settings(
        bus_settings,
        emulator,
        tmp_path,
        catalog_wait_ms=0,
        declare_tools=False,
        start_triggers=("button",),
        **{f"budget_{period}_minutes": 0.02},  # 1.2 s
        budget_path=str(tmp_path / "budget.json"),
        wrapup_text=WRAPUP,
    )
    button = await make_bus("gpio")
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await rec.wait_for(visit_is("idle"))
        button.publish(topics.CONTROL_SESSION, SessionControl(action="start"))
        s = await emulator.wait_sessions(1, TIMEOUT)
        await asyncio.wait_for(s.closed.wait(), TIMEOUT)
        assert s.stats.history == [WRAPUP] and s.stats.replies == [GOODBYE]
        await rec.wait_for(lambda d: visit_is("idle")(d) and d.msg.visit_detail == "budget spent")
    assert (tmp_path / "budget.json").exists()
    async with running_service("session", session_service.run, settings, license=LICENSE):
        mark = len(rec.seen)
        await rec.wait_for(
            lambda d: visit_is("idle")(d) and d.msg.visit_detail == "budget spent", after=mark
        )
        after = len(rec.seen)
        button.publish(topics.CONTROL_SESSION, SessionControl(action="start"))
        # a start would show as visit "starting" at once; watch three more session.state
        # messages (one at the refusal, then every state_interval_s = 0.2 s)
        for _ in range(3):
            d = await rec.wait_for(lambda d: isinstance(d.msg, SessionState), after=after)
            after = rec.seen.index(d) + 1
            assert isinstance(d.msg, SessionState)
            assert (d.msg.visit, d.msg.visit_detail) == ("idle", "budget spent")
        assert len(emulator.sessions) == 1  # refused: no connection while spent
