"""The session service against hostile or broken NavTalk servers (issue 15).

Each server is a real websockets server on 127.0.0.1 written here, doing one bad thing;
the session runs on the real bus (conftest's proxy). No mocks, no sleeps as sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.server import ServerConnection, serve

from agent import topics
from agent.bus import Bus
from agent.config import BusSettings, Settings, default_settings
from agent.messages import (
    AssistantTranscript,
    AudioFrame,
    IceCandidate,
    OtherEvent,
    SdpMessage,
    SessionPhase,
    SessionState,
    TextInput,
    ToolCall,
    ToolCatalog,
    ToolResult,
    ToolSpec,
)
from agent.navtalk.settings import NavTalkSettings, SessionSettings
from services import session as session_service
from tests.conftest import running_service
from tests.test_session_e2e import LICENSE, Recorder, is_state, no_license_anywhere

TIMEOUT = 10.0
_server_log = logging.getLogger("hostile.server")  # logs the request line (license and all)
_server_log.propagate = False

Script = Callable[["Hostile", ServerConnection, int], Awaitable[None]]


class Hostile:
    """A NavTalk server that runs ``script(server, ws, n)`` for its n-th connection (0-based)
    and records every frame the client sends (parsed JSON, with the connection number)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.frames: list[tuple[int, dict[str, Any]]] = []
        self.connections = 0
        self.closed: list[int] = []  # connection numbers whose socket is closed
        self._changed = asyncio.Condition()
        self.url = ""
        self._server: Any = None

    async def start(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", 0, max_size=None, logger=_server_log)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/wss/v2/realtime-chat"

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, ws: ServerConnection) -> None:
        n = self.connections
        self.connections += 1
        await self._notify()

        async def read() -> None:
            with contextlib.suppress(Exception):
                async for text in ws:
                    self.frames.append((n, json.loads(text)))
                    await self._notify()

        reader = asyncio.create_task(read())
        script = asyncio.create_task(self.script(self, ws, n))
        try:
            await reader  # until the socket closes, whoever closes it
        finally:
            script.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await script
            self.closed.append(n)
            await self._notify()

    async def wait(self, pred: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(pred)

    def sent(self, type_: str, conn: int | None = None) -> list[dict[str, Any]]:
        return [f for n, f in self.frames if f.get("type") == type_ and conn in (None, n)]

    def outputs(self, call_id: str) -> list[dict[str, Any]]:
        return [
            f
            for f in self.sent("conversation.item.create")
            if f.get("item", {}).get("type") == "function_call_output"
            and f["item"].get("call_id") == call_id
        ]


async def send(ws: ServerConnection, type_: str, **data: Any) -> None:
    await ws.send(json.dumps({"type": type_, "data": data}))


async def handshake(ws: ServerConnection, *, updated: bool = True) -> None:
    await send(ws, "conversation.connected.success", sessionId="s1", iceServers=[])
    await send(ws, "realtime.session.created")
    if updated:
        await send(ws, "realtime.session.updated")


async def call(ws: ServerConnection, call_id: str, name: str, arguments: str = "{}") -> None:
    await send(
        ws,
        "realtime.response.function_call_arguments.done",
        call_id=call_id,
        name=name,
        arguments=arguments,
    )


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Script], Awaitable[Hostile]]]:
    made: list[Hostile] = []

    async def factory(script: Script) -> Hostile:
        h = Hostile(script)
        await h.start()
        made.append(h)
        return h

    yield factory
    for h in made:
        await h.close()


def settings_for(bus: BusSettings, url: str, tmp: Path, **session: Any) -> Settings:
    base: dict[str, Any] = dict(
        history_db_path=str(tmp / "history.sqlite3"),
        reconnect_initial_s=0.05,
        reconnect_max_s=0.2,
        state_interval_s=0.2,
        catalog_wait_ms=0,
        preroll_ms=0,
        ping_interval_s=0.0,
    )
    base.update(session)
    return msgspec.structs.replace(
        default_settings(),
        bus=bus,
        navtalk=NavTalkSettings(url=url, name="navtalk.Leo"),
        session=SessionSettings(**base),
    )


@pytest.fixture
async def rec(make_bus: Any, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Recorder]:
    caplog.set_level(logging.DEBUG)
    recorder = Recorder(await make_bus("external", ""))
    try:
        yield recorder
    finally:
        await recorder.stop()
    no_license_anywhere(recorder, caplog)


async def hold_open(ws: ServerConnection) -> None:
    await ws.wait_closed()


# --- a server that never speaks ----------------------------------------------------------------


async def test_silent_server_is_given_up_on_and_retried(
    server: Any, bus_settings: BusSettings, tmp_path: Path, rec: Recorder, caplog: Any
) -> None:
    async def silent(h: Hostile, ws: ServerConnection, n: int) -> None:
        await hold_open(ws)

    h = await server(silent)
    settings = settings_for(bus_settings, h.url, tmp_path, handshake_timeout_s=0.5)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        closed = await rec.wait_for(
            lambda d: is_state(SessionPhase.CLOSED)(d) and "handshake" in d.msg.detail
        )
        await h.wait(lambda: h.connections >= 2 and 0 in h.closed)  # closed, then retried
    assert isinstance(closed.msg, SessionState) and closed.msg.retry_in_ms is not None
    lines = [r.getMessage() for r in caplog.records if "handshake timed out" in r.getMessage()]
    assert lines and "realtime.session.updated" in lines[0] and "state connecting" in lines[0]


async def test_created_but_never_updated_is_given_up_on_and_retried(
    server: Any, bus_settings: BusSettings, tmp_path: Path, rec: Recorder, caplog: Any
) -> None:
    """session.created, then nothing: no audio may ever flow, so the same deadline holds."""

    async def half(h: Hostile, ws: ServerConnection, n: int) -> None:
        await handshake(ws, updated=False)
        await hold_open(ws)

    h = await server(half)
    settings = settings_for(bus_settings, h.url, tmp_path, handshake_timeout_s=0.5)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await rec.wait_for(is_state(SessionPhase.CREATED))
        closed = await rec.wait_for(
            lambda d: is_state(SessionPhase.CLOSED)(d) and "handshake" in d.msg.detail
        )
        await h.wait(lambda: h.connections >= 2 and 0 in h.closed)  # closed, then retried
    assert isinstance(closed.msg, SessionState) and closed.msg.retry_in_ms is not None
    lines = [r.getMessage() for r in caplog.records if "handshake timed out" in r.getMessage()]
    assert lines and "state created" in lines[0]


# --- function calls ----------------------------------------------------------------------------


async def test_huge_argument_deltas_are_refused_not_accumulated(
    server: Any, bus_settings: BusSettings, tmp_path: Path, rec: Recorder
) -> None:
    piece = "x" * 8192

    async def flood(h: Hostile, ws: ServerConnection, n: int) -> None:
        await handshake(ws)
        for _ in range(200):  # 1.6 MB for one call
            await send(
                ws, "realtime.response.function_call_arguments.delta", call_id="c1", delta=piece
            )
        await call(ws, "c1", "get_time", "")
        await call(ws, "c2", "get_time", '{"zone": "UTC"}')
        await hold_open(ws)

    h = await server(flood)
    settings = settings_for(bus_settings, h.url, tmp_path)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await h.wait(lambda: bool(h.outputs("c1")))
        out = json.loads(h.outputs("c1")[0]["item"]["output"])
        assert out["error"]["category"] == "invalid_arguments"
        tc = await rec.wait_for(lambda d: isinstance(d.msg, ToolCall))
        assert isinstance(tc.msg, ToolCall) and tc.msg.call_id == "c2"  # c1 never ran
        assert tc.msg.arguments_json == '{"zone": "UTC"}'


class FakeTools:
    """The tools service on the bus (sender "tools"): answers tool.describe with its catalog
    and every tool.call with ok (unless ``answer`` is False)."""

    def __init__(self, bus: Bus, cat: ToolCatalog, *, answer: bool = True) -> None:
        self.bus, self.catalog, self.answer = bus, cat, answer
        self.answered = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for d in self.bus:
            if d.topic == topics.TOOL_DESCRIBE:
                self.bus.publish(topics.TOOL_CATALOG, self.catalog)
            elif isinstance(d.msg, ToolCall) and self.answer:
                msg = d.msg
                r = ToolResult(call_id=msg.call_id, name=msg.name, ok=True, output_json='"ok"')
                self.bus.publish(topics.TOOL_RESULT, r)
                self.answered.set()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def fake_tools(make_bus: Any) -> AsyncIterator[FakeTools]:
    bus = await make_bus("tools", topics.TOOL_DESCRIBE, topics.TOOL_CALL)
    tools = FakeTools(bus, catalog("get_time"))
    yield tools
    await tools.stop()


def catalog(*names: str) -> ToolCatalog:
    return ToolCatalog(
        tools=[
            ToolSpec(name=n, description=n, parameters_json="{}", timeout_ms=2000) for n in names
        ]
    )


async def test_duplicate_call_id_is_answered_once(
    server: Any, bus_settings: BusSettings, fake_tools: FakeTools, tmp_path: Path, rec: Recorder
) -> None:
    async def dup(h: Hostile, ws: ServerConnection, n: int) -> None:
        await handshake(ws)
        await call(ws, "c1", "get_time")
        await h.wait(lambda: bool(h.outputs("c1")))
        await call(ws, "c1", "get_time")  # the same call again, after it was answered
        await call(ws, "c1", "get_time")
        await call(ws, "c2", "get_time")  # a marker: processed after the duplicates
        await hold_open(ws)

    h = await server(dup)
    settings = settings_for(bus_settings, h.url, tmp_path, catalog_wait_ms=3000)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await h.wait(lambda: bool(h.outputs("c2")))
        assert len(h.outputs("c1")) == 1
        calls = [d.msg.call_id for d in rec.seen if isinstance(d.msg, ToolCall)]
        assert calls == ["c1", "c2"]


async def test_calls_before_session_created_are_answered_once(
    server: Any, bus_settings: BusSettings, fake_tools: FakeTools, tmp_path: Path, rec: Recorder
) -> None:
    async def early(h: Hostile, ws: ServerConnection, n: int) -> None:
        await send(ws, "conversation.connected.success", sessionId="s1", iceServers=[])
        await call(ws, "early-known", "get_time")
        await call(ws, "early-unknown", "no_such_tool")
        await fake_tools.answered.wait()  # the tool's result is in before session.created
        await send(ws, "realtime.session.created")
        await hold_open(ws)

    h = await server(early)
    kiosk = rec.bus  # started, subscribed: a bus to publish test input from
    settings = settings_for(bus_settings, h.url, tmp_path, catalog_wait_ms=3000)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await h.wait(lambda: bool(h.outputs("early-known") and h.outputs("early-unknown")))
        await rec.wait_for(is_state(SessionPhase.CREATED))
        # a marker round trip: everything the session had to send is sent
        kiosk.publish(topics.INPUT_TEXT, TextInput(text="marker", reply=False))
        await h.wait(lambda: any("marker" in json.dumps(f) for _, f in h.frames))
    assert len(h.outputs("early-known")) == 1
    assert len(h.outputs("early-unknown")) == 1
    unknown = json.loads(h.outputs("early-unknown")[0]["item"]["output"])
    assert unknown["error"]["category"] == "unknown_tool"


async def test_spoofed_catalog_does_not_replace_the_tools(
    server: Any,
    bus_settings: BusSettings,
    make_bus: Any,
    fake_tools: FakeTools,
    tmp_path: Path,
    rec: Recorder,
) -> None:
    go = asyncio.Event()

    async def script(h: Hostile, ws: ServerConnection, n: int) -> None:
        await handshake(ws)
        await go.wait()
        await call(ws, "c1", "get_time")
        await hold_open(ws)

    h = await server(script)
    intruder = await make_bus("intruder")
    settings = settings_for(bus_settings, h.url, tmp_path, catalog_wait_ms=3000)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await h.wait(lambda: bool(h.sent("realtime.input_function_call")))
        intruder.publish(topics.TOOL_CATALOG, ToolCatalog(tools=[]))
        marker = TextInput(text="after the spoof", reply=False)
        intruder.publish(topics.INPUT_TEXT, marker)  # same sender, same plane: in order
        await h.wait(lambda: any("after the spoof" in json.dumps(f) for _, f in h.frames))
        go.set()
        await h.wait(lambda: bool(h.outputs("c1")))
    assert json.loads(h.outputs("c1")[0]["item"]["output"]) == "ok"  # ran, not unknown_tool
    assert len(h.sent("realtime.input_function_call")) == 1  # not re-declared empty


async def test_tools_declared_once_per_connection_and_again_on_change(
    server: Any, bus_settings: BusSettings, fake_tools: FakeTools, tmp_path: Path, rec: Recorder
) -> None:
    async def script(h: Hostile, ws: ServerConnection, n: int) -> None:
        await handshake(ws)
        await hold_open(ws)

    h = await server(script)
    tools = fake_tools.bus
    settings = settings_for(bus_settings, h.url, tmp_path, catalog_wait_ms=3000)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await rec.wait_for(is_state(SessionPhase.READY))
        for _ in range(3):  # the same catalog again (a describe, a restart of tools)
            tools.publish(topics.TOOL_CATALOG, catalog("get_time"))
        tools.publish(topics.INPUT_TEXT, TextInput(text="m1", reply=False))
        await h.wait(lambda: any("m1" in json.dumps(f) for _, f in h.frames))
        assert len(h.sent("realtime.input_function_call")) == 1
        tools.publish(topics.TOOL_CATALOG, catalog("get_time", "open_door"))
        await h.wait(lambda: len(h.sent("realtime.input_function_call")) == 2)
    decl = json.loads(h.sent("realtime.input_function_call")[1]["data"]["content"])
    assert [f["name"] for f in decl] == ["get_time", "open_door"]


# --- secrets -----------------------------------------------------------------------------------


async def test_license_echoed_by_the_server_reaches_neither_bus_nor_sqlite(
    server: Any, bus_settings: BusSettings, tmp_path: Path, rec: Recorder
) -> None:
    escaped = "".join(f"\\u{ord(ch):04x}" for ch in LICENSE)

    async def echo(h: Hostile, ws: ServerConnection, n: int) -> None:
        await handshake(ws)
        await send(
            ws,
            "realtime.conversation.item.input_audio_transcription.completed",
            content=f"my license is {LICENSE}",
        )
        await ws.send(
            '{"type": "realtime.response.audio_transcript.done", "data": {"id": "r1",'
            f' "content": "you said {escaped}"}}}}'
        )
        await send(ws, "vendor.debug", url=f"wss://x/?license={LICENSE}", lic=LICENSE)
        await send(ws, "conversation.connected.warning", message=f"license {LICENSE} in use")
        await send(ws, "realtime.response.audio_transcript.done", id="r2", content="end")
        await hold_open(ws)

    h = await server(echo)
    settings = settings_for(bus_settings, h.url, tmp_path)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await rec.wait_for(lambda d: isinstance(d.msg, AssistantTranscript) and d.msg.text == "end")
        assert any(isinstance(d.msg, OtherEvent) and d.msg.type == "vendor.debug" for d in rec.seen)
    db = sqlite3.connect(tmp_path / "history.sqlite3")
    rows = [r[0] for r in db.execute("SELECT text FROM turns")]
    db.close()
    assert rows and all(LICENSE not in r for r in rows), rows
    assert "my license is ***" in rows
    # rec's teardown checks every bus message and log record for the license


# --- how a connection ends ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "expect"),
    [
        (1000, "bye", "normal close (code 1000, 'bye')"),
        (4001, "kicked", "closed by the server with code 4001, 'kicked'"),
    ],
)
async def test_close_code_and_reason_are_logged(
    code: int,
    reason: str,
    expect: str,
    server: Any,
    bus_settings: BusSettings,
    tmp_path: Path,
    rec: Recorder,
    caplog: Any,
) -> None:
    async def closer(h: Hostile, ws: ServerConnection, n: int) -> None:
        await handshake(ws)
        if n == 0:
            await ws.close(code, reason)
        else:
            await hold_open(ws)

    h = await server(closer)
    settings = settings_for(bus_settings, h.url, tmp_path)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        lost = await rec.wait_for(is_state(SessionPhase.CLOSED))
        await h.wait(lambda: h.connections >= 2)
    assert isinstance(lost.msg, SessionState) and expect in lost.msg.detail
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert expect in text
    assert "dropped" not in lost.msg.detail


async def test_backoff_and_attempts_reset_after_a_healthy_session(
    server: Any, bus_settings: BusSettings, tmp_path: Path, rec: Recorder
) -> None:
    """Every session is healthy (session.created) and then lost: with max_attempts = 2 the
    session must keep reconnecting, since no two failures are consecutive."""

    async def flaky(h: Hostile, ws: ServerConnection, n: int) -> None:
        await handshake(ws)
        await ws.close(1011, "server restart")

    h = await server(flaky)
    settings = settings_for(
        bus_settings,
        h.url,
        tmp_path,
        reconnect_max_attempts=2,
        reconnect_initial_s=0.02,
        reconnect_max_s=5.0,
        reconnect_factor=10.0,
        reconnect_jitter=0.0,
    )
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await h.wait(lambda: h.connections >= 5)
    states = [d.msg for d in rec.seen if isinstance(d.msg, SessionState)]
    assert all(s.phase is not SessionPhase.FAILED for s in states)
    delays = [s.retry_in_ms for s in states if s.retry_in_ms is not None]
    assert delays and max(delays) == 20  # never grew: reset after each healthy session


# --- signaling, audio, bad frames --------------------------------------------------------------


async def test_bad_ice_frames_log_one_line_and_the_session_goes_on(
    server: Any, bus_settings: BusSettings, tmp_path: Path, rec: Recorder, caplog: Any
) -> None:
    async def bad_ice(h: Hostile, ws: ServerConnection, n: int) -> None:
        await handshake(ws)
        for i in range(300):
            await send(
                ws,
                "webrtc.signaling.iceCandidate",
                candidate={"candidate": f"candidate:{i}", "sdpMid": "0", "sdpMLineIndex": 2**70},
            )
            await send(ws, "webrtc.signaling.iceCandidate", candidate=[1, 2, 3])
        await send(
            ws,
            "webrtc.signaling.iceCandidate",
            candidate={"candidate": "candidate:good", "sdpMid": "0", "sdpMLineIndex": 0},
        )
        await hold_open(ws)

    h = await server(bad_ice)
    settings = settings_for(bus_settings, h.url, tmp_path)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        good = await rec.wait_for(
            lambda d: isinstance(d.msg, IceCandidate) and d.msg.candidate == "candidate:good"
        )
    assert isinstance(good.msg, IceCandidate) and good.msg.sdp_mline_index == 0
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any(r.exc_info for r in noisy), "a traceback was logged"
    assert len(noisy) <= 5, [r.getMessage() for r in noisy]


async def test_offer_is_latched_for_a_late_display_and_stale_answers_are_dropped(
    server: Any, bus_settings: BusSettings, make_bus: Any, tmp_path: Path, rec: Recorder
) -> None:
    async def offer(h: Hostile, ws: ServerConnection, n: int) -> None:
        await handshake(ws)
        await send(ws, "webrtc.signaling.offer", sdp={"type": "offer", "sdp": "v=0 offer"})
        await hold_open(ws)

    h = await server(offer)
    settings = settings_for(bus_settings, h.url, tmp_path)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await rec.wait_for(lambda d: isinstance(d.msg, SdpMessage))
        display = await make_bus("display", topics.WEBRTC_REMOTE_OFFER)  # comes up late
        got = await asyncio.wait_for(display.recv(), TIMEOUT)
        assert isinstance(got.msg, SdpMessage) and got.msg.sdp == "v=0 offer"
        conn_id = got.msg.connection_id
        assert conn_id
        stale = SdpMessage(sdp_type="answer", sdp="v=0 stale", connection_id="old-connection")
        display.publish(topics.WEBRTC_LOCAL_ANSWER, stale)
        good = SdpMessage(sdp_type="answer", sdp="v=0 answer", connection_id=conn_id)
        display.publish(topics.WEBRTC_LOCAL_ANSWER, good)
        await h.wait(lambda: bool(h.sent("webrtc.signaling.answer")))
        answers = [f["data"]["sdp"]["sdp"] for f in h.sent("webrtc.signaling.answer")]
        assert answers == ["v=0 answer"]
        # answered: a display starting now gets no offer
        late = await make_bus("display2", topics.WEBRTC_REMOTE_OFFER)
        with pytest.raises(TimeoutError):  # bounded wait for an absence
            await asyncio.wait_for(late.recv(), 0.5)


async def test_audio_deltas_always_reach_the_bus(
    server: Any, bus_settings: BusSettings, tmp_path: Path, rec: Recorder
) -> None:
    async def speak(h: Hostile, ws: ServerConnection, n: int) -> None:
        await handshake(ws)
        await send(ws, "realtime.response.audio.delta", delta="AAABAA==", response_id="r1")
        await hold_open(ws)

    h = await server(speak)
    settings = settings_for(bus_settings, h.url, tmp_path, audio_only=False)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        d = await rec.wait_for(lambda d: d.topic == topics.NAVTALK_AUDIO_DELTA)
    assert isinstance(d.msg, AudioFrame) and bytes(d.payload[0]) == b"\x00\x00\x01\x00"


async def test_oversized_bus_messages_are_not_forwarded(
    server: Any, bus_settings: BusSettings, make_bus: Any, tmp_path: Path, rec: Recorder
) -> None:
    async def script(h: Hostile, ws: ServerConnection, n: int) -> None:
        await handshake(ws)
        await hold_open(ws)

    h = await server(script)
    kiosk = await make_bus("kiosk")
    settings = settings_for(bus_settings, h.url, tmp_path)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        await rec.wait_for(is_state(SessionPhase.READY))
        kiosk.publish(topics.INPUT_TEXT, TextInput(text="x" * 200_000, reply=False))
        kiosk.publish(topics.AUDIO_MIC, AudioFrame(sample_rate_hz=24000), b"\x00" * 500_000)
        kiosk.publish(topics.INPUT_TEXT, TextInput(text="small", reply=False))
        await h.wait(lambda: any("small" in json.dumps(f) for _, f in h.frames))
    assert max(len(json.dumps(f)) for _, f in h.frames) < 100_000
    assert not h.sent("realtime.input_audio_buffer.append")


async def test_a_huge_server_frame_closes_the_socket_not_the_memory(
    server: Any, bus_settings: BusSettings, tmp_path: Path, rec: Recorder, caplog: Any
) -> None:
    async def huge(h: Hostile, ws: ServerConnection, n: int) -> None:
        await handshake(ws)
        if n == 0:
            await send(ws, "vendor.blob", blob="b" * (6 * 1024 * 1024))
        await hold_open(ws)

    h = await server(huge)
    settings = settings_for(bus_settings, h.url, tmp_path)
    async with running_service("session", session_service.run, settings, license=LICENSE):
        lost = await rec.wait_for(is_state(SessionPhase.CLOSED))
        await h.wait(lambda: h.connections >= 2)  # and it reconnects
    assert isinstance(lost.msg, SessionState)
    assert "closed by this client with code 1009" in lost.msg.detail
    assert not any(isinstance(d.msg, OtherEvent) and d.msg.type == "vendor.blob" for d in rec.seen)
