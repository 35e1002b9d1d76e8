"""The session service against the emulator over loopback, on the real bus.

Real parts only: the bus proxy (conftest), the session service, the emulator
(websockets + aiortc + webrtcvad + espeak-ng), a tools stub in its own process,
and an aiortc peer standing in for the display.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent import topics
from agent.bus import Bus, Delivery
from agent.config import BusSettings, Settings, default_settings
from agent.emulator.script import Script
from agent.emulator.server import Emulator
from agent.messages import (
    AssistantTranscript,
    AudioFrame,
    Heartbeat,
    RobotCommand,
    SdpMessage,
    ServerSpeech,
    SessionPhase,
    SessionState,
    TextInput,
    ToolCall,
    ToolResult,
    UserTranscript,
)
from agent.navtalk.history import ConversationStore, Role
from agent.navtalk.settings import EmulatorSettings, NavTalkSettings, SessionSettings
from services import session as session_service
from tests.conftest import running_service
from tests.supervisor_helpers import spawn_tools, tools_config

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).parent / "fixtures" / "navtalk"
LICENSE = "Lic-SECRET-4f9a2c7e"  # must never show up in logs or on the bus
TIMEOUT = 20.0


class Recorder:
    """Every message on the bus (both planes), with waiting helpers."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seen: list[Delivery] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for d in self.bus:
            async with self._changed:
                self.seen.append(d)
                self._changed.notify_all()

    async def wait_for(
        self, pred: Callable[[Delivery], bool], *, after: int = 0, timeout: float = TIMEOUT
    ) -> Delivery:
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for d in self.seen[after:]:
                    if pred(d):
                        return d
                await self._changed.wait()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def is_state(phase: SessionPhase) -> Callable[[Delivery], bool]:
    return lambda d: isinstance(d.msg, SessionState) and d.msg.phase is phase


def make_settings(bus: BusSettings, emu: Emulator, tmp: Path, **session: Any) -> Settings:
    base = dict(
        history_db_path=str(tmp / "history.sqlite3"),
        reconnect_initial_s=0.05,
        reconnect_max_s=0.2,
        state_interval_s=0.2,
        catalog_wait_ms=3000,
        preroll_ms=0,
    )
    base.update(session)
    return msgspec.structs.replace(
        default_settings(),
        bus=bus,
        navtalk=NavTalkSettings(url=emu.base_url, name="navtalk.Leo"),
        session=SessionSettings(**base),
    )


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    script = Script.load(FIXTURES / "e2e_script.toml")
    emu = Emulator(EmulatorSettings(port=0, pace=4.0), script=script)
    await emu.start()
    yield emu
    await emu.close()


@pytest.fixture
def tools_stub(bus_settings: BusSettings) -> Any:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    proc = subprocess.Popen(
        [sys.executable, str(FIXTURES / "tools_stub.py"), msgspec.json.encode(bus_settings)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "tools stub ready"
    yield proc
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(10)


async def speak_into_mic(bus: Bus, pcm: bytes, *, speed: float = 4.0) -> None:
    """Publish PCM as 20 ms audio.mic frames, paced at ``speed`` x real time (the media
    plane's HWM is small; the emulator's VAD runs on the audio's own clock)."""
    frame = 960
    for i in range(0, len(pcm), frame):
        bus.publish(topics.AUDIO_MIC, AudioFrame(sample_rate_hz=24000), pcm[i : i + frame])
        await asyncio.sleep(0.020 / speed)  # pacing a producer, not waiting for a result


SILENCE = b"\x00\x00" * 24000  # 1 s


def no_license_anywhere(recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert LICENSE not in text, f"license leaked in log: {record.name}"
    for d in recorder.seen:
        blob = msgspec.msgpack.encode(d.msg) + b"".join(bytes(p) for p in d.payload)
        assert LICENSE.encode() not in blob, f"license leaked on {d.topic}"


@pytest.fixture
async def rec(make_bus: Any, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Recorder]:
    """Every message on the bus (logs at DEBUG); afterwards, the license was in none of
    them nor in any log record."""
    caplog.set_level(logging.DEBUG)
    recorder = Recorder(await make_bus("external", ""))  # "" = every topic on both planes
    try:
        yield recorder
    finally:
        await recorder.stop()
    no_license_anywhere(recorder, caplog)


async def test_full_conversation(
    emulator: Emulator,
    bus_settings: BusSettings,
    make_bus: Any,
    tools_stub: Any,
    tmp_path: Path,
    rec: Recorder,
) -> None:
    settings = make_settings(bus_settings, emulator, tmp_path)
    with ConversationStore(settings.session.history_db_path) as store:
        store.add(Role.USER, "I booked a room last week", wall_s=time.time())
        store.add(Role.ASSISTANT, "Welcome back", wall_s=time.time())
        store.add(Role.USER, "My name is Smith", wall_s=time.time() + 1)
    mic = await make_bus("mic")
    display = await make_bus("display", topics.WEBRTC_REMOTE_OFFER)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await rec.wait_for(is_state(SessionPhase.READY))
        sess = emulator.sessions[0]
        # a new visit starts fresh: earlier guests' stored turns are never replayed
        assert sess.stats.history == []
        assert sess.stats.declared_tools == {
            "get_current_time",
            "lookup_reservation",
            "slow_tool",
        }

        # WebRTC: the server's offer reaches the display; its answer reaches the server
        offer = await display.recv()
        assert isinstance(offer.msg, SdpMessage) and "a=candidate" in offer.msg.sdp
        pc, drains = await answer_offer(display, offer.msg.sdp)

        # 1) speech -> server VAD -> transcript -> tool call -> tools stub -> reply
        speech = await emulator.tts.synthesize("What time is it?")
        mark = len(rec.seen)
        await speak_into_mic(mic, SILENCE[:9600] + speech + SILENCE)
        await rec.wait_for(lambda d: isinstance(d.msg, ServerSpeech) and d.msg.started,
                           after=mark)  # fmt: skip
        await rec.wait_for(lambda d: d.topic == topics.CONTROL_BARGE_IN, after=mark)
        user = await rec.wait_for(lambda d: isinstance(d.msg, UserTranscript), after=mark)
        assert isinstance(user.msg, UserTranscript) and user.msg.text == "What time is it?"
        call = await rec.wait_for(lambda d: isinstance(d.msg, ToolCall), after=mark)
        assert isinstance(call.msg, ToolCall) and call.msg.name == "get_current_time"
        result = await rec.wait_for(
            lambda d: isinstance(d.msg, ToolResult) and d.sender == "tools", after=mark
        )
        assert isinstance(result.msg, ToolResult) and result.msg.ok
        final = await rec.wait_for(
            lambda d: isinstance(d.msg, AssistantTranscript) and d.msg.final, after=mark
        )
        assert isinstance(final.msg, AssistantTranscript)
        assert final.msg.text == "It is Monday 1 January 2024, 12:00."
        assert sess.stats.audio_bytes > len(speech)  # the mic audio reached the server

        # 2) a tool that never answers: explicit error output after its 300 ms timeout
        speech = await emulator.tts.synthesize("Please run the slow thing.")
        mark = len(rec.seen)
        await speak_into_mic(mic, speech + SILENCE)
        err = await rec.wait_for(
            lambda d: isinstance(d.msg, ToolResult) and d.sender == "session", after=mark
        )
        assert isinstance(err.msg, ToolResult) and not err.msg.ok
        assert err.msg.error is not None and err.msg.error.category.value == "timeout"
        final = await rec.wait_for(
            lambda d: isinstance(d.msg, AssistantTranscript) and d.msg.final, after=mark
        )
        assert isinstance(final.msg, AssistantTranscript)
        assert final.msg.text.startswith("Sorry, that did not work: tool 'slow_tool'")

        # 3) typed text: a user item + response.create
        mark = len(rec.seen)
        mic.publish(topics.INPUT_TEXT, TextInput(text="hello"))
        final = await rec.wait_for(
            lambda d: isinstance(d.msg, AssistantTranscript) and d.msg.final, after=mark
        )
        assert isinstance(final.msg, AssistantTranscript) and final.msg.text == "Hi there."

        assert "connected" in sess.rtc_states
        assert sess.stats.order_violations == []
        await pc.close()
        for t in drains:
            t.cancel()
    with ConversationStore(settings.session.history_db_path) as store:
        turns = [(t.role, t.text) for t in store.turns()]
    assert (Role.USER, "What time is it?") in turns
    assert (Role.ASSISTANT, "It is Monday 1 January 2024, 12:00.") in turns
    assert (Role.USER, "hello") in turns


async def answer_offer(display: Bus, sdp: str) -> tuple[Any, list[asyncio.Task[None]]]:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from agent.video.peer import restrict_ice_host

    restrict_ice_host("127.0.0.1")
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    drains: list[asyncio.Task[None]] = []

    @pc.on("track")
    def on_track(track: Any) -> None:
        async def drain() -> None:
            with contextlib.suppress(Exception):
                while True:
                    await track.recv()

        drains.append(asyncio.create_task(drain()))

    await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    display.publish(
        topics.WEBRTC_LOCAL_ANSWER, SdpMessage(sdp_type="answer", sdp=pc.localDescription.sdp)
    )
    return pc, drains


async def test_drop_then_reconnect_and_replay(
    emulator: Emulator,
    bus_settings: BusSettings,
    make_bus: Any,
    tmp_path: Path,
    rec: Recorder,
) -> None:
    license = LICENSE + "-drop1"  # the emulator drops every session after 1 s
    settings = make_settings(bus_settings, emulator, tmp_path, catalog_wait_ms=0)
    with ConversationStore(settings.session.history_db_path) as store:
        store.add(Role.USER, "an earlier guest's words", wall_s=time.time())
    typist = await make_bus("console")
    async with running_service("session", session_service.run, settings, license=license):
        await rec.wait_for(is_state(SessionPhase.READY))
        typist.publish(topics.INPUT_TEXT, TextInput(text="remember me", reply=False))
        lost = await rec.wait_for(
            lambda d: is_state(SessionPhase.CLOSED)(d) and d.msg.retry_in_ms is not None
        )
        assert isinstance(lost.msg, SessionState) and "dropped" in lost.msg.detail
        second = await emulator.wait_sessions(2, TIMEOUT)
        await rec.wait_for(is_state(SessionPhase.READY), after=rec.seen.index(lost))
        # this visit's turn is replayed after the reconnect; the stored one never is
        assert emulator.sessions[0].stats.history == ["remember me"]
        assert second.stats.history == ["remember me"]


@pytest.mark.parametrize("fault", ["reject", "nobalance"])
async def test_permanent_failure_does_not_retry(
    fault: str,
    emulator: Emulator,
    bus_settings: BusSettings,
    tmp_path: Path,
    rec: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(bus_settings, emulator, tmp_path, catalog_wait_ms=0)
    async with running_service(
        "session", session_service.run, settings, license=f"{fault}-{LICENSE}"
    ):
        failed = await rec.wait_for(is_state(SessionPhase.FAILED))
        assert isinstance(failed.msg, SessionState)
        # a retry would come within reconnect_max_s (0.2 s); watch three more periodic
        # session.state messages (state_interval_s = 0.2 s) and the emulator's sessions
        after = rec.seen.index(failed)
        for _ in range(3):
            d = await rec.wait_for(lambda d: isinstance(d.msg, SessionState), after=after + 1)
            after = rec.seen.index(d)
            assert isinstance(d.msg, SessionState) and d.msg.phase is SessionPhase.FAILED
        assert len(emulator.sessions) == 1
    assert any(
        "not retrying" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records
    )


HANGING_TOOLS = """
import json, threading
from agent import topics
from agent.messages import RobotCommand
from agent.tools import ToolContext, tool

@tool(timeout_s=60)
def slow_tool(ctx: ToolContext) -> None:
    \"\"\"Block until the process dies.\"\"\"
    ctx.publish(topics.ROBOT_COMMAND, RobotCommand(action="entered", params_json="{}"))
    threading.Event().wait()
"""


async def test_calls_held_by_a_dead_tools_process_are_answered_at_once(
    emulator: Emulator,
    bus_settings: BusSettings,
    make_bus: Any,
    tmp_path: Path,
    rec: Recorder,
) -> None:
    """The tools process dies with a call running (60 s timeout); the supervisor starts a
    new one. The session sees the new pid in its heartbeats and answers the call with an
    error at once, and the model speaks it."""
    module = tmp_path / "hanging_tools.py"
    module.write_text(HANGING_TOOLS)
    config = tools_config(tmp_path / "tools.toml", bus_settings, module)
    log = tmp_path / "tools.log"
    settings = make_settings(bus_settings, emulator, tmp_path)
    kiosk = await make_bus("kiosk")
    proc = spawn_tools(config, log)
    try:
        async with running_service("session", session_service.run, settings, license=LICENSE):
            await rec.wait_for(is_state(SessionPhase.READY))
            assert "slow_tool" in emulator.sessions[0].stats.declared_tools
            await rec.wait_for(
                lambda d: isinstance(d.msg, Heartbeat) and d.sender == "tools.runtime"
            )
            mark = len(rec.seen)
            kiosk.publish(topics.INPUT_TEXT, TextInput(text="Please run the slow thing."))
            await rec.wait_for(lambda d: isinstance(d.msg, RobotCommand), after=mark)
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
            killed = time.monotonic()
            proc = spawn_tools(config, log)  # the supervisor's part
            err = await rec.wait_for(
                lambda d: isinstance(d.msg, ToolResult) and d.sender == "session", after=mark
            )
            assert isinstance(err.msg, ToolResult) and err.msg.error is not None
            assert err.msg.error.category.value == "unavailable"
            assert "the tools process died" in err.msg.error.message
            assert time.monotonic() - killed < 15, "answered at the restart, not the timeout"
            final = await rec.wait_for(
                lambda d: isinstance(d.msg, AssistantTranscript) and d.msg.final, after=mark
            )
            assert isinstance(final.msg, AssistantTranscript)
            assert final.msg.text.startswith("Sorry, that did not work: the tools process died")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 10)
