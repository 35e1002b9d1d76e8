"""The tools process: runs the functions the model calls.

::

    session ──tool.call──▶ tools ──tool.result──▶ session
    session ──tool.describe / session.state──▶ tools ──tool.catalog──▶ session
                                               tools ──robot.command / control.* / input.image──▶

- ``tool.catalog`` is published on start, on every ``tool.describe``, and when the
  session enters ``connecting`` or ``connected`` (so a session that missed the first one,
  a slow joiner, still gets it before it declares the tools). Requests are paced
  (:class:`agent.tools.flood.Pacer`): a flood of ``tool.describe`` gets one catalog per
  :data:`CATALOG_INTERVAL_S`, and every request is answered.
- Each ``tool.call`` is first checked on the loop (call id, name, arguments bounded in
  size and depth: :meth:`ToolRunner.prepare`); a call that cannot run is answered at
  once with an error result, and so is a call beyond :data:`MAX_RUNNING_CALLS` running
  at once (``unavailable``). The others run as their own task: a slow tool never delays
  another call, and the tool's own timeout is enforced here. Every call id gets exactly
  one ``tool.result`` (see :class:`agent.tools.callbook.CallBook`): duplicates are
  dropped, a crashing handler is answered (``handler_error``, a generic message; the
  detail is logged with the call id), and so are calls still running when the service
  stops (``unavailable``). Refused calls and duplicates are counted (``metrics.tools``)
  and logged once per burst of each kind, never per message.
- If this process dies (SIGKILL, OOM), the results of its running calls are produced by
  the session's pending-call bookkeeping (``agent/navtalk/pending.py``), and the
  supervisor restarts this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent import topics
from agent.bus import Bus
from agent.config import Settings
from agent.errors import BusError, ErrorCategory
from agent.messages import (
    Message,
    Metrics,
    SessionPhase,
    SessionState,
    ToolCall,
    ToolDescribe,
    ToolResult,
)
from agent.tools.callbook import CallBook, Verdict
from agent.tools.flood import BurstLog, Pacer
from agent.tools.plugin import Camera, LazyCamera, Tool, ToolContext
from agent.tools.registry import ToolRegistry, discover
from agent.tools.runner import Prepared, ToolRunner, check_call, error_result

__all__ = ["run"]

log = logging.getLogger(__name__)

METRICS_INTERVAL_S = 5.0
CATALOG_INTERVAL_S = 0.25  # at most one catalog per interval after the first of a burst
MAX_RUNNING_CALLS = 128  # calls running at once; more are answered `unavailable` at once
REFUSED_LOG_WINDOW_S = 10.0  # refused calls: one log line per kind of refusal per window
_CATALOG_PHASES = frozenset({SessionPhase.CONNECTING, SessionPhase.CONNECTED})


def _camera_opener(settings: Settings) -> Callable[[], Camera]:
    def open_() -> Camera:
        from hardware.camera import open_camera  # late: OpenCV is imported on first photo

        camera: Camera = open_camera(settings.camera)
        return camera

    return open_


TOPICS = topics.ServiceTopics(
    reads=(topics.TOOL_CALL, topics.TOOL_DESCRIBE, topics.SESSION_STATE),
    writes=(
        topics.TOOL_RESULT,
        topics.TOOL_CATALOG,
        topics.METRICS,
        # what tools (builtin and plugins) publish through their context
        topics.CONTROL_SESSION,
        topics.CONTROL_VOLUME,
        topics.INPUT_IMAGE,
        topics.ROBOT_COMMAND,
    ),
)


async def run(
    settings: Settings,
    bus: Bus,
    *,
    registry: ToolRegistry | None = None,
    camera: Camera | None = None,
    metrics_interval_s: float = METRICS_INTERVAL_S,
    max_running: int = MAX_RUNNING_CALLS,
) -> None:
    """Serve tool calls until cancelled. ``registry``/``camera`` are built from settings
    when not given (an injected camera is not closed here); ``metrics.tools`` is published
    every ``metrics_interval_s``; at most ``max_running`` calls run at once."""
    if registry is None:
        registry = discover(settings.tools)
    bus.declare(TOPICS)
    await bus.start()

    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()

    def publish(topic: str, msg: Message, *payload: bytes) -> None:
        """Bus.publish from any thread (handler threads hop onto the loop)."""
        if threading.get_ident() == loop_thread:
            bus.publish(topic, msg, *payload)
        else:
            loop.call_soon_threadsafe(_publish_logged, bus, topic, msg, payload)

    shared_camera = LazyCamera((lambda: camera) if camera is not None else _camera_opener(settings))

    def make_context(tool: Tool, call: ToolCall) -> ToolContext:
        return ToolContext(
            call_id=call.call_id,
            tool_name=tool.name,
            settings=settings,
            logger=logging.getLogger(f"navtalk_agent.tools.{tool.name}"),
            _publish=publish,
            _camera=shared_camera,
        )

    runner = ToolRunner(
        registry.declared,
        default_timeout_s=settings.tools.default_timeout_s,
        max_output_chars=settings.tools.max_output_chars,
        pool_size=settings.tools.pool_size,
        make_context=make_context,
    )
    book = CallBook()
    refused_log: BurstLog[str] = BurstLog(REFUSED_LOG_WINDOW_S)
    pacer = Pacer(CATALOG_INTERVAL_S)
    tasks: dict[str, asyncio.Task[None]] = {}
    last_phase: SessionPhase | None = None

    def send_catalog(why: str) -> None:
        pacer.answered(time.monotonic())
        catalog = registry.catalog()
        try:
            bus.publish(topics.TOOL_CATALOG, catalog)
        except BusError as exc:  # closing
            log.warning("tool.catalog not sent: %s", exc)
            return
        log.info("> tool.catalog (%s): %d tool(s)", why, len(catalog.tools))

    paced: list[asyncio.TimerHandle] = []  # the catalog waiting for its turn (at most one)

    def want_catalog(why: str) -> None:
        delay = pacer.request(time.monotonic())
        if delay == 0.0:
            send_catalog(why)
        elif delay is not None:
            paced[:] = [loop.call_later(delay, send_catalog, f"{why}, paced")]

    def refused(kind: str, sender: str, call: ToolCall, why: str) -> None:
        """Count a refused call; log it if it is the first of its kind in a while. Keyed by
        kind only: a flood that changes its sender name every message is still one burst."""
        left_out = refused_log.hit(kind, time.monotonic())
        if left_out is None:
            return
        more = f" ({left_out} more like it since the last line)" if left_out else ""
        log.warning(
            "< tool.call %.64r %.64r from %.64s: %s%s", call.call_id, call.name, sender, why, more
        )

    async def answer(prepared: Prepared) -> None:
        call = prepared.call
        started = time.perf_counter()
        try:
            result = await runner.execute(prepared)
        except Exception:  # execute() never raises; should it ever, the call is still answered
            log.exception("tools: call %s %s failed outside its handler", call.call_id, call.name)
            result = error_result(call, ErrorCategory.HANDLER_ERROR)
        if book.on_result(result):
            _publish_result(bus, result, (time.perf_counter() - started) * 1000)

    def on_call(call: ToolCall, sender: str) -> None:
        booked = check_call(call) is None  # a malformed id is answered, never remembered
        if booked:
            decision = book.on_call(call)
            if decision.verdict is Verdict.DUPLICATE:
                state = "answered already" if decision.answered else "still running"
                refused("duplicate", sender, call, f"duplicate of a call {state}: dropped")
                return
        outcome = runner.prepare(call)
        if not isinstance(outcome, ToolResult) and len(tasks) >= max_running:
            outcome = error_result(
                call,
                ErrorCategory.UNAVAILABLE,
                f"{len(tasks)} tool calls are running already; try again shortly",
            )
        if isinstance(outcome, ToolResult):
            if booked:
                book.on_result(outcome)
            _publish_result(bus, outcome, 0.0, quiet=True)
            assert outcome.error is not None
            refused(outcome.error.category, sender, call, outcome.error.message)
            return
        log.info("< tool.call %s %s", call.call_id, call.name)
        log.debug("< tool.call %s arguments %.500s", call.call_id, call.arguments_json)
        task = asyncio.create_task(answer(outcome), name=f"tool-{call.name}-{call.call_id}")
        tasks[call.call_id] = task
        task.add_done_callback(functools.partial(_task_done, tasks, call.call_id))

    def flush_refused() -> None:
        for kind, left_out in refused_log.flush(time.monotonic()):
            log.warning("< tool.call: %d more call(s) refused (%s)", left_out, kind)

    metrics = asyncio.create_task(
        _metrics_loop(bus, runner, book, refused_log, pacer, flush_refused, metrics_interval_s),
        name="tools-metrics",
    )
    try:
        want_catalog("start")
        async for delivery in bus:
            msg = delivery.msg
            try:
                if isinstance(msg, ToolCall):
                    on_call(msg, delivery.sender)
                elif isinstance(msg, ToolDescribe):
                    want_catalog(f"tool.describe from {delivery.sender}")
                elif isinstance(msg, SessionState):
                    if msg.phase is not last_phase and msg.phase in _CATALOG_PHASES:
                        want_catalog(f"session {msg.phase}")
                    last_phase = msg.phase
            except Exception:  # never die on one bad message
                log.exception("tools: failed to handle %s from %s", delivery.topic, delivery.sender)
    finally:
        metrics.cancel()
        for handle in paced:
            handle.cancel()
        running = list(tasks.values())
        for task in running:
            task.cancel()
        for result in book.abort_all("the tools service stopped before the tool finished"):
            with contextlib.suppress(BusError):
                _publish_result(bus, result, 0.0)
        await asyncio.gather(metrics, *running, return_exceptions=True)
        await runner.aclose()
        if camera is None:
            await asyncio.to_thread(_close_quietly, shared_camera)


def _publish_result(bus: Bus, result: ToolResult, elapsed_ms: float, quiet: bool = False) -> None:
    """Publish a result; ``quiet``: no log line (refused calls are logged once per burst)."""
    bus.publish(topics.TOOL_RESULT, result)
    if quiet:
        return
    if result.ok:
        log.info("> tool.result %s %s ok in %.1f ms", result.call_id, result.name, elapsed_ms)
    else:
        category = result.error.category if result.error else "?"
        log.info(
            "> tool.result %s %s error %s in %.1f ms",
            result.call_id,
            result.name,
            category,
            elapsed_ms,
        )


def _publish_logged(bus: Bus, topic: str, msg: Message, payload: tuple[bytes, ...]) -> None:
    try:
        bus.publish(topic, msg, *payload)
    except BusError as exc:
        log.error("tool publish on %s failed: %s", topic, exc)


def _task_done(
    tasks: dict[str, asyncio.Task[None]], call_id: str, task: asyncio.Task[None]
) -> None:
    tasks.pop(call_id, None)
    if not task.cancelled() and task.exception() is not None:
        log.error("tools: call %s failed outside its handler", call_id, exc_info=task.exception())


def _close_quietly(camera: LazyCamera) -> None:
    try:
        camera.close()
    except Exception:
        log.exception("closing the camera failed")


async def _metrics_loop(
    bus: Bus,
    runner: ToolRunner,
    book: CallBook,
    refused_log: BurstLog[str],
    pacer: Pacer,
    flush: Callable[[], None],
    interval_s: float,
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        flush()
        stats = runner.stats
        values: dict[str, Any] = {
            "calls": stats.calls,
            "ok": stats.ok,
            "running": len(book.running),
            "duplicates": book.duplicates,
            "refused": sum(refused_log.total.values()) - refused_log.total["duplicate"],
            "catalog_requests": pacer.requests,
            "catalogs": pacer.answers,
            "stuck_threads": stats.stuck_threads,
            "abandoned_tasks": stats.abandoned_tasks,
            "busy_threads": runner.threads.busy,
            "last_ms": stats.last_ms,
        }
        values.update({f"errors_{k}": v for k, v in stats.errors.items()})
        bus.publish(
            "metrics.tools",
            Metrics(service=topics.TOOLS, values={k: float(v) for k, v in values.items()}),
        )
