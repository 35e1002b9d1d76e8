"""The tools service against hostile and broken input, on the real bus proxy.

Every call gets exactly one result, quickly, whatever it carries (1000-deep arguments,
a 10 000-character name, no call id, duplicates); handlers that crash, call sys.exit()
or never return are answered; refused calls are logged once per burst, not per message;
a flood of tool.describe gets a paced catalog. The first test runs the tools process
itself (``navtalk-agent service tools``): the bug it guards against killed that process's
call handling while it kept reporting healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from agent import topics
from agent.bus import Bus, Delivery
from agent.config import BusSettings, default_settings
from agent.errors import ErrorCategory
from agent.messages import Message, Metrics, ToolCall, ToolCatalog, ToolDescribe, ToolResult
from agent.tools import ToolContext, tool
from agent.tools.registry import ToolRegistry
from agent.tools.settings import ToolsSettings
from services import tools as tools_service
from tests.supervisor_helpers import spawn_tools, tools_config

WAIT = 5.0  # seconds: generous bound for one message to arrive
DEEP = "[" * 1000 + "]" * 1000


async def next_of(
    bus: Bus, kind: type[Message], pred: Callable[[Delivery], bool] = lambda d: True
) -> Delivery:
    async with asyncio.timeout(WAIT):
        while True:
            d = await bus.recv()
            if isinstance(d.msg, kind) and pred(d):
                return d


def result_of(d: Delivery) -> ToolResult:
    assert isinstance(d.msg, ToolResult)
    return d.msg


def category(r: ToolResult) -> ErrorCategory | None:
    return r.error.category if r.error is not None else None


# --- the tools process itself -------------------------------------------------------------

PROCESS_TOOLS = '''
from typing import Any
from agent.tools import tool

@tool
def store(items: list[Any]) -> int:
    """Store items."""
    return len(items)
'''


@pytest.mark.timeout(60)
async def test_deeply_nested_arguments_get_an_error_at_once_and_the_process_keeps_serving(
    bus_settings: BusSettings, tmp_path: Path
) -> None:
    module = tmp_path / "store_tools.py"
    module.write_text(PROCESS_TOOLS)
    config = tools_config(tmp_path / "tools.toml", bus_settings, module)
    log = tmp_path / "tools.log"
    session = Bus(bus_settings, "session")
    session.subscribe(topics.TOOL_RESULT, topics.TOOL_CATALOG)
    await session.start()
    proc = spawn_tools(config, log)
    try:
        await next_of(session, ToolCatalog)
        for i, args in enumerate([DEEP, '{"items": ' + DEEP + "}", "{" + '"a":{' * 5000]):
            started = time.monotonic()
            session.publish(
                topics.TOOL_CALL, ToolCall(call_id=f"deep-{i}", name="store", arguments_json=args)
            )
            r = result_of(await next_of(session, ToolResult))
            elapsed = time.monotonic() - started
            assert r.call_id == f"deep-{i}" and category(r) is ErrorCategory.INVALID_ARGUMENTS
            assert "nested" in r.output_json and "the limit is 32" in r.output_json
            assert elapsed < 1.0  # at once: not the session's timeout 10 s later
        session.publish(
            topics.TOOL_CALL,
            ToolCall(call_id="ok", name="store", arguments_json='{"items": [[1], {"a": [2]}]}'),
        )
        r = result_of(await next_of(session, ToolResult))
        assert r.call_id == "ok" and r.ok and r.output_json == "2"
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
        await session.close()
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "RecursionError" not in log.read_text()


# --- the service in this process ------------------------------------------------------------


@dataclass
class Rig:
    session: Bus
    observer: Bus  # every tool.result on the bus, in order
    release: threading.Event  # frees the handlers that wait for the test
    entered: threading.Event  # set when wait_for_test runs

    def call(self, call_id: str, name: str, arguments_json: str = "", **kw: int) -> None:
        self.session.publish(
            topics.TOOL_CALL,
            ToolCall(call_id=call_id, name=name, arguments_json=arguments_json, **kw),
        )

    async def results_until(self, last_id: str) -> list[ToolResult]:
        """Every result the observer sees up to and including the one for ``last_id``."""
        seen: list[ToolResult] = []
        async with asyncio.timeout(WAIT):
            while not seen or seen[-1].call_id != last_id:
                d = await self.observer.recv()
                seen.append(result_of(d))
        return seen

    async def results_for(self, *call_ids: str) -> dict[str, ToolResult]:
        """The results of ``call_ids``, in any order; nothing else and none twice."""
        got: dict[str, ToolResult] = {}
        async with asyncio.timeout(WAIT):
            while len(got) < len(call_ids):
                r = result_of(await self.observer.recv())
                assert r.call_id in call_ids and r.call_id not in got, r
                got[r.call_id] = r
        return got


@pytest.fixture
async def rig(bus_settings: BusSettings) -> AsyncIterator[Rig]:
    release = threading.Event()
    entered = threading.Event()

    @tool
    def ping() -> str:
        """Answer at once."""
        return "pong"

    @tool
    def wait_for_test(ctx: ToolContext) -> str:
        """Wait until the test releases it."""
        entered.set()
        release.wait(30)
        return "released"

    @tool(timeout_s=0.3)
    def stuck() -> None:
        """Never return (until the test ends)."""
        release.wait(30)

    @tool
    def crash() -> None:
        """Fail with a detail the guest must not hear."""
        raise OSError("controller on /dev/ttyUSB0 did not answer")

    @tool
    async def exits() -> None:
        """Call sys.exit() like a careless plugin."""
        raise SystemExit(1)

    registry = ToolRegistry([ping, wait_for_test, stuck, crash, exits])
    settings = msgspec.structs.replace(
        default_settings(), bus=bus_settings, tools=ToolsSettings(entry_points=False)
    )
    session = Bus(bus_settings, "session")
    session.subscribe(topics.TOOL_RESULT, topics.TOOL_CATALOG, "metrics.tools")
    await session.start()
    observer = Bus(bus_settings, "observer")
    observer.subscribe(topics.TOOL_RESULT)
    await observer.start()
    service = asyncio.create_task(
        tools_service.run(
            settings,
            Bus(bus_settings, "tools"),
            registry=registry,
            metrics_interval_s=0.05,
            max_running=3,
        )
    )
    await next_of(session, ToolCatalog)
    r = Rig(session, observer, release, entered)
    try:
        yield r
    finally:
        release.set()
        service.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await service
        await session.close()
        await observer.close()


async def test_hostile_calls_are_answered_counted_and_logged_once_per_burst(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.tools")
    kinds: dict[str, Callable[[int], ToolCall]] = {
        "name": lambda i: ToolCall(call_id=f"n{i}", name="x" * 10_000, arguments_json=""),
        "unknown": lambda i: ToolCall(call_id=f"u{i}", name="no_such_tool", arguments_json=""),
        "types": lambda i: ToolCall(call_id=f"t{i}", name="ping", arguments_json='{"a": 1}'),
        "json": lambda i: ToolCall(call_id=f"j{i}", name="ping", arguments_json="[1, 2"),
        "deep": lambda i: ToolCall(call_id=f"d{i}", name="ping", arguments_json=DEEP),
        "no id": lambda i: ToolCall(call_id="", name="ping", arguments_json=""),
    }
    per_kind = 50
    for i in range(per_kind):
        for make in kinds.values():
            rig.session.publish(topics.TOOL_CALL, make(i))
    rig.call("good", "ping")
    results = await rig.results_until("good")
    assert len(results) == per_kind * len(kinds) + 1  # every bad call answered, once
    assert results[-1].ok and results[-1].output_json == '"pong"'
    by_prefix: dict[str, list[ToolResult]] = {}
    for r in results[:-1]:
        by_prefix.setdefault(r.call_id[:1], []).append(r)
    expected = {
        "n": ErrorCategory.UNKNOWN_TOOL,
        "u": ErrorCategory.UNKNOWN_TOOL,
        "t": ErrorCategory.INVALID_ARGUMENTS,
        "j": ErrorCategory.INVALID_ARGUMENTS,
        "d": ErrorCategory.INVALID_ARGUMENTS,
        "": ErrorCategory.INVALID_ARGUMENTS,
    }
    assert {k: len(v) for k, v in by_prefix.items()} == dict.fromkeys(expected, per_kind)
    for prefix, rs in by_prefix.items():
        assert {category(r) for r in rs} == {expected[prefix]}, prefix
    assert all(len(r.name) <= 64 and len(r.output_json) < 600 for r in results)
    # counted, and logged once per kind of refusal (unknown tool, invalid): not 300 lines
    refusals = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(refusals) == 2, [r.getMessage() for r in refusals]  # one per kind
    assert all("from session" in r.getMessage() for r in refusals)
    assert max(len(r.getMessage()) for r in refusals) < 400  # the 10 000-char name is cut
    metrics = await next_of(
        rig.session,
        Metrics,
        lambda d: isinstance(d.msg, Metrics) and d.msg.values.get("calls", 0) > per_kind * 6,
    )
    assert isinstance(metrics.msg, Metrics)
    values = metrics.msg.values
    assert values["refused"] == per_kind * len(kinds) and values["duplicates"] == 0
    assert values["errors_unknown_tool"] == 2 * per_kind
    assert values["errors_invalid_arguments"] == 4 * per_kind


async def test_duplicate_call_ids_are_answered_once(rig: Rig) -> None:
    rig.call("dup", "wait_for_test")
    assert await asyncio.to_thread(rig.entered.wait, WAIT)
    rig.call("dup", "wait_for_test")  # while running
    rig.call("dup", "ping")  # same id, other tool
    rig.call("mid", "ping")
    assert [r.call_id for r in await rig.results_until("mid")] == ["mid"]
    rig.release.set()
    assert [r.output_json for r in await rig.results_until("dup")] == ['"released"']
    rig.call("dup", "ping")  # answered already
    rig.call("end", "ping")
    assert [r.call_id for r in await rig.results_until("end")] == ["end"]


async def test_calls_beyond_the_running_limit_are_answered_at_once(rig: Rig) -> None:
    for i in range(3):
        rig.call(f"w{i}", "wait_for_test")  # max_running=3: these run
    rig.call("over", "wait_for_test")
    (over,) = await rig.results_until("over")
    assert category(over) is ErrorCategory.UNAVAILABLE and over.error is not None
    assert over.error.retryable and "3 tool calls are running" in over.error.message
    rig.release.set()
    got = await rig.results_for("w0", "w1", "w2")
    assert all(r.ok for r in got.values())
    rig.call("after", "ping")
    assert (await rig.results_until("after"))[-1].ok


async def test_crashing_exiting_and_stuck_handlers_are_answered(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    rig.call("s", "stuck", timeout_ms=10_000)
    rig.call("c", "crash")
    rig.call("x", "exits")
    got = await rig.results_for("s", "c", "x")
    elapsed = time.monotonic() - started
    crash, exits, stuck = got["c"], got["x"], got["s"]
    assert category(stuck) is ErrorCategory.TIMEOUT and 0.3 <= elapsed < 1.5  # its own 0.3 s
    for r in (crash, exits):
        assert category(r) is ErrorCategory.HANDLER_ERROR
        assert r.error is not None and r.error.message == "the tool failed"
        assert json.loads(r.output_json) == {
            "error": {"category": "handler_error", "message": "the tool failed"}
        }
    assert "ttyUSB0" not in crash.output_json
    # the detail is in the log, with the call id
    assert any("call c " in rec.getMessage() and rec.exc_info is not None for rec in caplog.records)
    assert "/dev/ttyUSB0 did not answer" in caplog.text
    rig.call("after", "ping")
    assert (await rig.results_until("after"))[-1].ok  # the service kept going


async def test_a_flood_of_describe_requests_gets_paced_catalogs(rig: Rig) -> None:
    for _ in range(200):
        rig.session.publish(topics.TOOL_DESCRIBE, ToolDescribe())
    rig.call("sentinel", "ping")
    # catalogs and results leave the tools process on one socket, in order: what came
    # before the sentinel's result is everything published for the 200 requests so far
    before: list[Delivery] = []
    async with asyncio.timeout(WAIT):
        while True:
            d = await rig.session.recv()
            if isinstance(d.msg, ToolResult) and d.msg.call_id == "sentinel":
                break
            if isinstance(d.msg, ToolCatalog):
                before.append(d)
    assert len(before) <= 1  # not 200: the first at once (or none), the rest paced
    # one more request: answered (by the paced catalog the flood is waiting for, or its own)
    rig.session.publish(topics.TOOL_DESCRIBE, ToolDescribe())
    after = await next_of(rig.session, ToolCatalog)
    assert after.seq <= 4  # start, the first of the flood, the paced one, this one
