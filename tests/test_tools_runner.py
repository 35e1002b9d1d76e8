"""ToolRunner and CallBook: every call ends in exactly one categorized result."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import DeviceError, ErrorCategory, ToolError
from agent.messages import ToolCall, ToolResult
from agent.tools import Tool, ToolContext, tool
from agent.tools.callbook import CallBook, Decision, Verdict
from agent.tools.runner import ToolRunner, effective_timeout_s

T = 0.2  # the tool timeout used in these tests, seconds
ROOT = Path(__file__).resolve().parents[1]


def call(
    name: str, args: object = None, *, call_id: str = "c1", timeout_ms: int = 10_000
) -> ToolCall:
    text = "" if args is None else json.dumps(args)
    return ToolCall(call_id=call_id, name=name, arguments_json=text, timeout_ms=timeout_ms)


def category(result: ToolResult) -> ErrorCategory | None:
    return result.error.category if result.error else None


async def wait_until(pred: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown: frees handler threads that tests leave blocked."""
    event = threading.Event()
    yield event
    event.set()


def make_runner(*tools: Tool, **kwargs: int | float) -> ToolRunner:
    return ToolRunner({t.name: t for t in tools}, default_timeout_s=T, **kwargs)  # type: ignore[arg-type]


@tool
def add(a: int, b: int = 1) -> dict[str, int]:
    """Add two numbers."""
    return {"sum": a + b}


@tool
async def add_async(a: int, b: int = 1) -> int:
    """Add two numbers, asynchronously."""
    await asyncio.sleep(0)
    return a + b


async def test_ok_sync_and_async() -> None:
    runner = make_runner(add, add_async)
    r = await runner.run(call("add", {"a": 2, "b": 3}))
    assert r.ok and json.loads(r.output_json) == {"sum": 5} and r.error is None
    assert (r.call_id, r.name) == ("c1", "add")
    r = await runner.run(call("add_async", {"a": 2}))
    assert r.ok and r.output_json == "3"
    assert runner.stats.calls == 2 and runner.stats.ok == 2
    await runner.aclose()


async def test_unknown_tool_and_invalid_arguments() -> None:
    runner = make_runner(add)
    r = await runner.run(call("subtract", {"a": 1}))
    assert not r.ok and category(r) is ErrorCategory.UNKNOWN_TOOL
    assert "subtract" in json.loads(r.output_json)["error"]["message"]
    r = await runner.run(call("add", {"a": "two"}))
    assert not r.ok and category(r) is ErrorCategory.INVALID_ARGUMENTS
    out = json.loads(r.output_json)["error"]  # what the model reads
    assert out["category"] == "invalid_arguments"
    assert "Expected `int`, got `str` - at `$.a`" in out["message"]
    assert r.error is not None and not r.error.retryable
    assert runner.stats.errors == {"unknown_tool": 1, "invalid_arguments": 1}
    await runner.aclose()


async def test_exceptions_are_categorized(caplog: pytest.LogCaptureFixture) -> None:
    @tool
    def boom() -> None:
        """Raise."""
        raise KeyError("room 12")

    @tool
    async def boom_async() -> None:
        """Raise, async."""
        raise RuntimeError("elevator offline")

    @tool
    def refuse() -> None:
        """Refuse cleanly."""
        raise ToolError("the door is locked after 22:00", ErrorCategory.UNAVAILABLE)

    @tool
    def no_device() -> None:
        """No device."""
        raise DeviceError("controller on /dev/ttyUSB0 did not answer")

    runner = make_runner(boom, boom_async, refuse, no_device)
    caplog.set_level("INFO", logger="agent.tools.runner")
    r = await runner.run(call("boom", call_id="k1"))
    assert category(r) is ErrorCategory.HANDLER_ERROR and r.error is not None
    assert json.loads(r.output_json)["error"]["message"] == "the tool failed"
    assert r.error.message == "the tool failed"  # what the session sends to the model
    r = await runner.run(call("boom_async", call_id="k2"))
    assert category(r) is ErrorCategory.HANDLER_ERROR
    assert "elevator" not in r.output_json and "elevator" not in repr(r.error)
    r = await runner.run(call("refuse"))
    assert category(r) is ErrorCategory.UNAVAILABLE and r.error is not None and r.error.retryable
    assert json.loads(r.output_json)["error"]["message"] == "the door is locked after 22:00"
    r = await runner.run(call("no_device", call_id="k3"))
    assert category(r) is ErrorCategory.DEVICE and r.error is not None
    assert "ttyUSB0" not in r.output_json and "ttyUSB0" not in r.error.message
    assert json.loads(r.output_json)["error"]["message"] == "a device the tool needs is not working"
    # the detail is in the log, with the call id
    logged = {rec.getMessage(): rec for rec in caplog.records}
    boom_line = next(m for m in logged if "call k1" in m)
    assert logged[boom_line].exc_info is not None and "room 12" in caplog.text
    assert any("call k2" in m for m in logged) and "elevator offline" in caplog.text
    assert any("call k3" in m and "/dev/ttyUSB0 did not answer" in m for m in logged)
    await runner.aclose()


async def test_system_exit_in_a_handler_is_an_error_not_an_exit() -> None:
    """sys.exit() in a plugin: asyncio would re-raise it out of the loop (the process ends)."""

    @tool
    async def exits_async() -> None:
        """Exit, async."""
        await asyncio.sleep(0)
        raise SystemExit(3)

    @tool
    def exits() -> None:
        """Exit."""
        raise SystemExit(4)

    @tool
    async def exits_at_once() -> None:
        """Exit before the first await."""
        raise KeyboardInterrupt

    runner = make_runner(exits_async, exits, exits_at_once)
    for name in ("exits_async", "exits", "exits_at_once"):
        r = await runner.run(call(name))
        assert category(r) is ErrorCategory.HANDLER_ERROR, name
        assert json.loads(r.output_json)["error"]["message"] == "the tool failed"
    assert (await runner.run(call("exits"))).error is not None  # still running
    await runner.aclose()


async def test_hostile_calls_are_refused_before_any_handler_runs() -> None:
    ran: list[str] = []

    @tool
    def record(items: list[Any]) -> int:
        """Record."""
        ran.append("record")
        return len(items)

    runner = make_runner(record)
    deep = '{"items": ' + "[" * 1000 + "]" * 1000 + "}"
    cases = {
        "deep": (call("record", call_id="d"), ErrorCategory.INVALID_ARGUMENTS, "nested 1001"),
        "huge": (
            ToolCall(call_id="h", name="record", arguments_json='{"items": ["' + "x" * 70_000),
            ErrorCategory.INVALID_ARGUMENTS,
            "the limit is 65536",
        ),
        "long name": (call("x" * 10_000), ErrorCategory.UNKNOWN_TOOL, "tool names are 1-64"),
        "newline": (call("record\n"), ErrorCategory.UNKNOWN_TOOL, "tool names are 1-64"),
        "no id": (call("record", call_id=""), ErrorCategory.INVALID_ARGUMENTS, "call id"),
        "long id": (call("record", call_id="i" * 300), ErrorCategory.INVALID_ARGUMENTS, "call id"),
        "log line in id": (
            call("record", call_id="c1\nERROR forged"),
            ErrorCategory.INVALID_ARGUMENTS,
            "printable",
        ),
        "not object": (call("record", [1]), ErrorCategory.INVALID_ARGUMENTS, "JSON object"),
    }
    cases["deep"] = (
        ToolCall(call_id="d", name="record", arguments_json=deep),
        *cases["deep"][1:],
    )
    for label, (c, expected, needle) in cases.items():
        started = time.monotonic()
        outcome = runner.prepare(c)
        assert time.monotonic() - started < 0.1, label
        assert isinstance(outcome, ToolResult), label
        assert category(outcome) is expected, label
        assert needle in json.loads(outcome.output_json)["error"]["message"], label
        assert len(outcome.output_json) < 600 and len(outcome.call_id) <= 256, label
        assert len(outcome.name) <= 64, label
    assert ran == []
    assert runner.stats.calls == len(cases)
    assert (await runner.run(call("record", {"items": [[1], {"a": [2]}]}))).output_json == "2"
    await runner.aclose()


async def test_handler_output_nested_too_deeply_is_bad_output() -> None:
    @tool
    def cyclic() -> object:
        """Return a list that contains itself."""
        loop: list[object] = []
        loop.append(loop)
        return loop

    runner = make_runner(cyclic)
    r = await runner.run(call("cyclic"))
    assert category(r) is ErrorCategory.BAD_OUTPUT and "nested too deeply" in r.output_json
    await runner.aclose()


async def test_output_that_is_not_json() -> None:
    @tool
    def a_set() -> object:
        """Return a set of objects."""
        return {object()}

    @tool
    def huge() -> str:
        """Return too much."""
        return "x" * 500

    @tool
    def forgot_async() -> object:
        """Return a coroutine."""
        return asyncio.sleep(0)

    runner = make_runner(a_set, huge, forgot_async, max_output_chars=100)
    r = await runner.run(call("a_set"))
    assert category(r) is ErrorCategory.BAD_OUTPUT and "not JSON-serializable" in r.output_json
    r = await runner.run(call("huge"))
    assert category(r) is ErrorCategory.BAD_OUTPUT and "limit is 100" in r.output_json
    r = await runner.run(call("forgot_async"))
    assert category(r) is ErrorCategory.BAD_OUTPUT and "async def" in r.output_json
    await runner.aclose()


async def test_sync_timeout_marks_thread_stuck_until_it_returns(release: threading.Event) -> None:
    @tool
    def slow() -> str:
        """Wait for the test."""
        release.wait(10)
        return "late"

    runner = make_runner(slow)
    started = time.monotonic()
    r = await runner.run(call("slow"))
    elapsed = time.monotonic() - started
    assert category(r) is ErrorCategory.TIMEOUT and r.error is not None and r.error.retryable
    assert T <= elapsed < T + 0.5
    assert runner.stats.stuck_threads == 1
    release.set()
    await wait_until(lambda: runner.stats.stuck_threads == 0)
    assert (await runner.run(call("slow"))).ok  # the thread is free again
    await runner.aclose()


async def test_async_timeout_cancels_the_handler() -> None:
    cancelled = asyncio.Event()

    @tool
    async def sleepy() -> None:
        """Sleep for an hour."""
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runner = make_runner(sleepy)
    r = await runner.run(call("sleepy"))
    assert category(r) is ErrorCategory.TIMEOUT
    await asyncio.wait_for(cancelled.wait(), 2)
    await runner.aclose()


async def test_async_handler_that_ignores_cancellation() -> None:
    stop = asyncio.Event()
    me: list[asyncio.Task[object]] = []

    @tool
    async def stubborn() -> None:
        """Ignore cancellation."""
        task = asyncio.current_task()
        assert task is not None
        me.append(task)
        while not stop.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    runner = make_runner(stubborn)
    started = time.monotonic()
    r = await runner.run(call("stubborn"))
    assert category(r) is ErrorCategory.TIMEOUT and time.monotonic() - started < T + 0.5
    assert runner.stats.abandoned_tasks == 1
    closing = time.monotonic()
    await runner.aclose(grace_s=0.2)  # bounded even though the task never ends
    assert time.monotonic() - closing < 1.0
    stop.set()
    me[0].cancel()
    await wait_until(lambda: runner.stats.abandoned_tasks == 0)


async def test_call_deadline_caps_the_tool_timeout(release: threading.Event) -> None:
    @tool(timeout_s=30)
    def slow() -> None:
        """Slow."""
        release.wait(10)

    assert effective_timeout_s(slow, call("slow", timeout_ms=150), 10) == 0.15
    runner = make_runner(slow)
    started = time.monotonic()
    r = await runner.run(call("slow", timeout_ms=150))
    assert category(r) is ErrorCategory.TIMEOUT and time.monotonic() - started < 1.0
    await runner.aclose()


async def test_slow_tool_does_not_block_others(release: threading.Event) -> None:
    entered = threading.Event()

    @tool(timeout_s=5)
    def slow() -> str:
        """Slow."""
        entered.set()
        release.wait(10)
        return "slow"

    runner = make_runner(slow, add, pool_size=2)
    slow_task = asyncio.create_task(runner.run(call("slow", call_id="s")))
    assert await asyncio.to_thread(entered.wait, 2)
    started = time.monotonic()
    r = await runner.run(call("add", {"a": 1}, call_id="f"))
    assert r.ok and time.monotonic() - started < 0.5
    assert not slow_task.done()
    release.set()
    assert (await asyncio.wait_for(slow_task, 2)).output_json == '"slow"'
    await runner.aclose()


async def test_handlers_that_never_return_exhaust_the_pool_without_blocking(
    release: threading.Event,
) -> None:
    @tool
    def forever() -> None:
        """Never return."""
        release.wait(3600)

    runner = make_runner(forever, add, add_async, pool_size=2)
    results = await asyncio.gather(
        *(runner.run(call("forever", call_id=f"h{i}")) for i in range(2))
    )
    assert [category(r) for r in results] == [ErrorCategory.TIMEOUT] * 2
    assert runner.stats.stuck_threads == 2 and runner.threads.busy == 2
    started = time.monotonic()
    r = await runner.run(call("add", {"a": 1}))
    assert category(r) is ErrorCategory.UNAVAILABLE and "restart" in r.output_json
    assert time.monotonic() - started < 0.1  # told at once, not after a timeout
    assert (await runner.run(call("add_async", {"a": 1}))).ok  # async tools still run
    await runner.aclose()


async def test_call_queued_behind_a_busy_pool_times_out(release: threading.Event) -> None:
    entered = threading.Event()

    @tool(timeout_s=5)
    def hold() -> None:
        """Hold the only thread."""
        entered.set()
        release.wait(10)

    runner = make_runner(hold, add, pool_size=1)
    holder = asyncio.create_task(runner.run(call("hold", call_id="h")))
    assert await asyncio.to_thread(entered.wait, 2)
    r = await runner.run(call("add", {"a": 1}, call_id="q"))
    assert category(r) is ErrorCategory.TIMEOUT and "no free tool thread" in r.output_json
    release.set()
    assert (await asyncio.wait_for(holder, 2)).ok
    assert (await runner.run(call("add", {"a": 1}))).ok  # the cancelled job never ran
    await runner.aclose()


async def test_standalone_context_has_no_bus() -> None:
    @tool
    def uses_ctx(ctx: ToolContext) -> str:
        """Publish something."""
        ctx.logger.info("call %s", ctx.call_id)
        ctx.publish("control.volume", None)  # type: ignore[arg-type]
        return "unreachable"

    runner = make_runner(uses_ctx)
    r = await runner.run(call("uses_ctx"))
    assert category(r) is ErrorCategory.UNAVAILABLE and "no bus" in r.output_json
    await runner.aclose()


def test_a_stuck_handler_does_not_hold_up_process_exit() -> None:
    """Daemon threads: the interpreter exits though a handler never returns."""
    script = textwrap.dedent(
        """
        import asyncio, threading
        from agent.messages import ToolCall
        from agent.tools import tool
        from agent.tools.runner import ToolRunner

        @tool(timeout_s=0.1)
        def forever() -> None:
            '''Never return.'''
            threading.Event().wait()

        async def main() -> None:
            runner = ToolRunner({"forever": forever})
            r = await runner.run(ToolCall(call_id="x", name="forever", arguments_json=""))
            print(r.error.category)
            await runner.aclose()

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "timeout"


def test_callbook_gives_one_result_per_call() -> None:
    book = CallBook(remember=2)
    c1 = call("add", {"a": 1}, call_id="1")
    assert book.on_call(c1).verdict is Verdict.RUN
    assert book.on_call(c1) == Decision(Verdict.DUPLICATE, answered=False)
    result = ToolResult(call_id="1", name="add", ok=True, output_json="2")
    assert book.on_result(result)
    assert not book.on_result(result)  # a second result for one call is dropped
    assert book.on_call(c1) == Decision(Verdict.DUPLICATE, answered=True)  # answered once
    assert book.on_call(call("other", call_id="1")).verdict is Verdict.DUPLICATE  # any name
    assert book.duplicates == 3
    for i in (2, 3, 4):
        book.on_call(call("add", call_id=str(i)))
    aborted = book.abort_all("stopping")
    assert [r.call_id for r in aborted] == ["2", "3", "4"]
    assert all(category(r) is ErrorCategory.UNAVAILABLE for r in aborted)
    assert book.running == []
    assert book.on_call(c1).verdict is Verdict.RUN  # forgotten: remember=2 kept only 3 and 4
