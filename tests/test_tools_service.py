"""The tools service on the real bus proxy: catalog, calls, built-ins, plugins, shutdown,
and a SIGKILL of the tools process with calls pending."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import msgspec
import numpy as np
import pytest

from agent import topics
from agent.bus import Bus, Delivery
from agent.config import BusSettings, Settings, default_settings
from agent.errors import ErrorCategory
from agent.messages import (
    ImageInput,
    Message,
    RobotCommand,
    SessionControl,
    SessionPhase,
    SessionState,
    SetVolume,
    ToolCall,
    ToolCatalog,
    ToolDescribe,
    ToolResult,
)
from agent.navtalk.pending import PendingCalls
from agent.tools import ToolContext, tool
from agent.tools.registry import ToolRegistry, discover
from agent.tools.settings import ToolsSettings
from agent.video.settings import CameraSettings
from hardware.camera import ImageCamera
from services import tools as tools_service
from tests.supervisor_helpers import spawn_tools, tools_config

ROOT = Path(__file__).resolve().parents[1]
WAIT = 5.0  # seconds: generous bound for one message to arrive
SLOW = 60.0  # seconds: bound on a whole exchange on a loaded machine (a hang, not a pace)


@dataclass
class Harness:
    """The session's side of the bus, with the tools service running."""

    session: Bus
    service: asyncio.Task[None]
    settings: Settings
    backlog: list[Delivery] = dataclasses.field(default_factory=list)

    def call(self, name: str, args: object = None, call_id: str = "c1", **kw: int) -> None:
        text = "" if args is None else json.dumps(args)
        self.session.publish(
            topics.TOOL_CALL, ToolCall(call_id=call_id, name=name, arguments_json=text, **kw)
        )

    async def next(
        self,
        kind: type[Message],
        pred: Callable[[Delivery], bool] = lambda d: True,
        timeout: float = WAIT,
    ) -> Delivery:
        """The first delivery of ``kind`` matching ``pred``; others are kept for later."""
        for i, d in enumerate(self.backlog):
            if isinstance(d.msg, kind) and pred(d):
                return self.backlog.pop(i)
        async with asyncio.timeout(timeout):
            while True:
                d = await self.session.recv()
                if isinstance(d.msg, kind) and pred(d):
                    return d
                self.backlog.append(d)

    async def result(self, call_id: str = "c1") -> ToolResult:
        d = await self.next(ToolResult, lambda d: d.msg.call_id == call_id)  # type: ignore[attr-defined]
        assert isinstance(d.msg, ToolResult)
        return d.msg


def _settings(bus_settings: BusSettings, **tools: object) -> Settings:
    return msgspec.structs.replace(
        default_settings(),
        bus=bus_settings,
        tools=ToolsSettings(**tools),  # type: ignore[arg-type]
    )


@tool(timeout_s=5)
def echo(text: str) -> dict[str, str]:
    """Echo the text."""
    return {"echo": text}


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    image = np.zeros((720, 1280, 3), dtype=np.uint8)
    image[:, :640] = (0, 0, 255)  # left half red (BGR)
    path = tmp_path / "desk.png"
    cv2.imwrite(str(path), image)
    return path


@pytest.fixture
async def harness(bus_settings: BusSettings, photo: Path) -> AsyncIterator[Harness]:
    settings = _settings(bus_settings, timezone="Asia/Tokyo")
    registry = discover(settings.tools, extra=[echo])
    session = Bus(bus_settings, "session")
    session.subscribe(
        topics.TOOL_RESULT,
        topics.TOOL_CATALOG,
        topics.ROBOT_COMMAND,
        topics.INPUT_IMAGE,
        topics.CONTROL_VOLUME,
        topics.CONTROL_SESSION,
    )
    await session.start()
    service = asyncio.create_task(
        tools_service.run(
            settings, Bus(bus_settings, "tools"), registry=registry, camera=ImageCamera(photo)
        )
    )
    h = Harness(session, service, settings)
    await h.next(ToolCatalog)  # the service is up
    yield h
    service.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await service
    await session.close()


async def test_catalog_on_start_describe_and_session_connect(harness: Harness) -> None:
    harness.session.publish(topics.TOOL_DESCRIBE, ToolDescribe())
    d = await harness.next(ToolCatalog)
    assert d.sender == "tools" and isinstance(d.msg, ToolCatalog)
    names = [t.name for t in d.msg.tools]
    assert names == sorted(names) and {"echo", "get_current_time", "take_photo"} <= set(names)
    harness.session.publish(topics.SESSION_STATE, SessionState(phase=SessionPhase.CONNECTED))
    await harness.next(ToolCatalog)
    # the periodic state in the same phase does not repeat the catalog; a new phase does
    harness.session.publish(topics.SESSION_STATE, SessionState(phase=SessionPhase.CONNECTED))
    harness.session.publish(topics.SESSION_STATE, SessionState(phase=SessionPhase.READY))
    harness.session.publish(topics.SESSION_STATE, SessionState(phase=SessionPhase.CONNECTING))
    await harness.next(ToolCatalog)
    harness.session.publish(topics.TOOL_DESCRIBE, ToolDescribe())
    d = await harness.next(ToolCatalog)
    assert d.seq == 5  # start, describe, connected, connecting, describe: nothing more


async def test_calls_get_exactly_one_result(harness: Harness) -> None:
    harness.call("echo", {"text": "hi"}, call_id="a")
    harness.call("echo", {"text": 3}, call_id="b")
    harness.call("no_such_tool", {}, call_id="c")
    c, b, a = [await harness.result(i) for i in "cba"]
    assert a.ok and json.loads(a.output_json) == {"echo": "hi"}
    assert b.error is not None and b.error.category is ErrorCategory.INVALID_ARGUMENTS
    assert "Expected `str`, got `int` - at `$.text`" in b.error.message
    assert c.error is not None and c.error.category is ErrorCategory.UNKNOWN_TOOL
    # the same call id again: the stored result, not a second run
    harness.call("echo", {"text": "hi"}, call_id="a")
    again = await harness.result("a")
    assert again == a
    harness.call("echo", {"text": "end"}, call_id="z")
    await harness.result("z")
    assert harness.session.stats.per_topic[topics.TOOL_RESULT] == 5  # no extra results


async def test_builtin_set_volume_and_end_conversation(harness: Harness) -> None:
    harness.call("set_volume", {"percent": 40}, call_id="v")
    d = await harness.next(SetVolume)
    assert d.topic == topics.CONTROL_VOLUME and d.sender == "tools"
    assert isinstance(d.msg, SetVolume) and d.msg.level == pytest.approx(0.4)
    assert (await harness.result("v")).ok
    harness.call("end_conversation", {"reason": "guest said goodbye"}, call_id="e")
    d = await harness.next(SessionControl)
    assert isinstance(d.msg, SessionControl)
    assert (d.msg.action, d.msg.reason) == ("end_after_speech", "guest said goodbye")
    assert (await harness.result("e")).ok


async def test_builtin_get_current_time_uses_configured_zone(harness: Harness) -> None:
    harness.call("get_current_time", call_id="t")
    out = json.loads((await harness.result("t")).output_json)
    assert out["timezone"] == "Asia/Tokyo" and out["utc_offset"] == "+0900"
    assert out["iso"].endswith("+09:00")


async def test_builtin_take_photo_sends_the_jpeg_first(harness: Harness) -> None:
    harness.call("take_photo", call_id="p")
    image = await harness.next(ImageInput)
    result = await harness.result("p")
    assert isinstance(image.msg, ImageInput) and image.msg.mime_type == "image/jpeg"
    assert image.msg.reply is False  # the tool result triggers the reply
    decoded = cv2.imdecode(np.frombuffer(image.payload[0], np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (540, 960, 3)  # scaled to camera.width = 960, aspect kept
    b, g, r = decoded[270, 100]
    assert r > 200 and b < 50  # the red half is on the left
    assert result.ok and json.loads(result.output_json)["width"] == 960


async def test_image_arrives_before_the_result(bus_settings: BusSettings, photo: Path) -> None:
    settings = _settings(bus_settings, entry_points=False)
    session = Bus(bus_settings, "session")
    session.subscribe(topics.TOOL_RESULT, topics.INPUT_IMAGE, topics.TOOL_CATALOG)
    await session.start()
    service = asyncio.create_task(
        tools_service.run(settings, Bus(bus_settings, "tools"), camera=ImageCamera(photo))
    )
    try:
        async with asyncio.timeout(WAIT):
            assert isinstance((await session.recv()).msg, ToolCatalog)
            session.publish(
                topics.TOOL_CALL, ToolCall(call_id="p", name="take_photo", arguments_json="")
            )
            first, second = await session.recv(), await session.recv()
        assert isinstance(first.msg, ImageInput) and isinstance(second.msg, ToolResult)
    finally:
        service.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await service
        await session.close()


async def test_take_photo_without_camera_is_a_device_error(bus_settings: BusSettings) -> None:
    settings = _settings(bus_settings, entry_points=False)
    assert settings.camera == CameraSettings()  # backend "null"
    session = Bus(bus_settings, "session")
    session.subscribe(topics.TOOL_RESULT, topics.TOOL_CATALOG)
    await session.start()
    service = asyncio.create_task(tools_service.run(settings, Bus(bus_settings, "tools")))
    try:
        async with asyncio.timeout(WAIT):
            await session.recv()
            session.publish(
                topics.TOOL_CALL, ToolCall(call_id="p", name="take_photo", arguments_json="")
            )
            d = await session.recv()
        assert isinstance(d.msg, ToolResult) and d.msg.error is not None
        assert d.msg.error.category is ErrorCategory.DEVICE
        assert "no camera configured" in d.msg.error.message
    finally:
        service.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await service
        await session.close()


async def test_example_plugin_turn_head_publishes_a_robot_command(harness: Harness) -> None:
    if "turn_head" not in discover(ToolsSettings()).declared:
        pytest.skip("examples/reception-tools is not installed (test_tools_registry installs it)")
    harness.call("turn_head", {"direction": "left", "degrees": 45}, call_id="h")
    d = await harness.next(RobotCommand)
    assert isinstance(d.msg, RobotCommand) and d.msg.action == "turn_head"
    assert json.loads(d.msg.params_json) == {"direction": "left", "degrees": 45}
    assert (await harness.result("h")).output_json == '"Turning the head left by 45 degrees"'
    harness.call("lookup_reservation", {"name": "garcia"}, call_id="r")
    out = json.loads((await harness.result("r")).output_json)
    assert out["found"] and out["reservations"][0]["room"] == "204"


async def test_stopping_answers_the_running_calls(bus_settings: BusSettings) -> None:
    # Deterministic under load: nothing here depends on how fast things go. The calls are
    # sent again until each one is seen running (a call that is running already is ignored
    # by the service, so a second copy is harmless): a call published before the tools
    # process's subscription reached this publisher is not a lost test. Every wait is on an
    # event, bounded by SLOW only to turn a hang into a failure.
    all_running = asyncio.Event()
    running: set[str] = set()
    ids = ["w0", "w1", "w2"]

    @tool(timeout_s=60)
    async def wait_long(ctx: ToolContext) -> None:
        """Wait a long time."""
        running.add(ctx.call_id)
        if running == set(ids):  # every call is in the service (not still on its way)
            all_running.set()
        await asyncio.sleep(3600)

    settings = _settings(bus_settings, entry_points=False)
    session = Bus(bus_settings, "session")
    session.subscribe(topics.TOOL_RESULT, topics.TOOL_CATALOG)
    await session.start()
    service = asyncio.create_task(
        tools_service.run(settings, Bus(bus_settings, "tools"), registry=ToolRegistry([wait_long]))
    )
    try:
        async with asyncio.timeout(SLOW):
            first = await session.recv()
            assert isinstance(first.msg, ToolCatalog)
            while not all_running.is_set():
                for call_id in ids:
                    if call_id not in running:
                        session.publish(
                            topics.TOOL_CALL,
                            ToolCall(call_id=call_id, name="wait_long", arguments_json=""),
                        )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await all_running.wait()
            service.cancel()
            got = [await session.recv() for _ in range(3)]
        assert sorted(d.msg.call_id for d in got if isinstance(d.msg, ToolResult)) == ids
        assert all(
            isinstance(d.msg, ToolResult)
            and d.msg.error is not None
            and d.msg.error.category is ErrorCategory.UNAVAILABLE
            for d in got
        )
    finally:
        service.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await service
        await session.close()


# --- the tools process killed with calls pending ----------------------------------------------

SLOW_TOOLS = '''
import json, threading
from agent import topics
from agent.messages import RobotCommand
from agent.tools import ToolContext, tool

@tool(timeout_s=60)
def wait_forever(ctx: ToolContext) -> None:
    """Block until the process dies."""
    entered = RobotCommand(action="entered", params_json=json.dumps(ctx.call_id))
    ctx.publish(topics.ROBOT_COMMAND, entered)
    threading.Event().wait()

@tool
def ping() -> str:
    """Answer at once."""
    return "pong"
'''


@pytest.mark.timeout(60)
async def test_sigkill_with_calls_pending(bus_settings: BusSettings, tmp_path: Path) -> None:
    """Every call gets a result on the bus even though the tools process is SIGKILLed.

    This test plays the session with the session's own pending-call bookkeeping
    (agent.navtalk.pending.PendingCalls); test_session_e2e checks that the session
    service itself answers the calls when the tools process is replaced. The
    restarted process answers new calls.
    """
    module = tmp_path / "slow_tools.py"
    module.write_text(SLOW_TOOLS)
    config = tools_config(tmp_path / "tools.toml", bus_settings, module)
    log = tmp_path / "tools.log"
    session = Bus(bus_settings, "session")
    session.subscribe(topics.TOOL_RESULT, topics.TOOL_CATALOG, topics.ROBOT_COMMAND)
    await session.start()
    observer = Bus(bus_settings, "external")  # counts every tool.result on the bus
    observer.subscribe(topics.TOOL_RESULT)
    await observer.start()
    pending = PendingCalls()
    proc = spawn_tools(config, log)
    try:

        async def next_msg(kind: type[Message]) -> Delivery:
            async with asyncio.timeout(20):
                while True:
                    d = await session.recv()
                    if isinstance(d.msg, kind):
                        return d

        def send(call_id: str, name: str) -> None:
            pending.add(call_id, name, "", now=time.monotonic(), timeout_s=30)
            session.publish(
                topics.TOOL_CALL, ToolCall(call_id=call_id, name=name, arguments_json="")
            )

        await next_msg(ToolCatalog)
        send("ok-1", "ping")
        r = await next_msg(ToolResult)
        assert isinstance(r.msg, ToolResult) and r.msg.ok
        assert pending.resolve(r.msg) is not None
        held = [f"held-{i}" for i in range(3)]
        for call_id in held:
            send(call_id, "wait_forever")
        entered = {
            json.loads((await next_msg(RobotCommand)).msg.params_json)  # type: ignore[attr-defined]
            for _ in held
        }
        assert entered == set(held)  # all three handlers are running in the tools process

        proc.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(proc.wait, 10) == -signal.SIGKILL
        # the session's reaction to a dead tools process: answer what it held
        assert len(pending) == 3
        for completion in pending.fail_all("the tools process died"):
            session.publish(topics.TOOL_RESULT, completion.result)

        proc = spawn_tools(config, log)  # what the supervisor does
        await next_msg(ToolCatalog)
        send("ok-2", "ping")
        r = await next_msg(ToolResult)
        assert isinstance(r.msg, ToolResult) and r.msg.call_id == "ok-2" and r.msg.ok

        results: dict[str, list[ToolResult]] = {}
        async with asyncio.timeout(WAIT):
            while sum(map(len, results.values())) < 5:
                d = await observer.recv()
                assert isinstance(d.msg, ToolResult)
                results.setdefault(d.msg.call_id, []).append(d.msg)
        assert sorted(results) == sorted(["ok-1", "ok-2", *held])
        assert all(len(v) == 1 for v in results.values())  # exactly one each
        for call_id in held:
            error = results[call_id][0].error
            assert error is not None and error.category is ErrorCategory.UNAVAILABLE
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await session.close()
        await observer.close()
    # the restarted process stopped cleanly on SIGTERM
    assert proc.returncode == 0, log.read_text()[-3000:]
