"""The tools process: runs the functions the model calls.

::

    session ──tool.call──▶ tools ──tool.result──▶ session
    session ──tool.describe / session.state──▶ tools ──tool.catalog──▶ session
                                               tools ──robot.command / control.* / input.image──▶

- ``tool.catalog`` is published on start, on every ``tool.describe``, and when the
  session enters ``connecting`` or ``connected`` (so a session that missed the first one,
  a slow joiner, still gets it before it declares the tools).
- Each ``tool.call`` runs as its own task: a slow tool never delays another call. Every
  call gets exactly one ``tool.result`` (see :class:`agent.tools.callbook.CallBook`),
  including calls still running when the service stops (``unavailable``).
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
from agent.errors import BusError
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
from agent.tools.plugin import Camera, LazyCamera, Tool, ToolContext
from agent.tools.registry import ToolRegistry, discover
from agent.tools.runner import ToolRunner

__all__ = ["run"]

log = logging.getLogger(__name__)

METRICS_INTERVAL_S = 5.0
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
) -> None:
    """Serve tool calls until cancelled. ``registry``/``camera`` are built from settings
    when not given (an injected camera is not closed here)."""
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
    tasks: dict[str, asyncio.Task[None]] = {}
    last_phase: SessionPhase | None = None

    def publish_catalog(why: str) -> None:
        catalog = registry.catalog()
        bus.publish(topics.TOOL_CATALOG, catalog)
        log.info("> tool.catalog (%s): %d tool(s)", why, len(catalog.tools))

    async def answer(call: ToolCall) -> None:
        started = time.perf_counter()
        result = await runner.run(call)
        if book.on_result(result):
            _publish_result(bus, result, (time.perf_counter() - started) * 1000)

    def on_call(call: ToolCall) -> None:
        decision = book.on_call(call)
        if decision.verdict is Verdict.DUPLICATE:
            log.info(
                "< tool.call %s %s: duplicate of a running call, ignored", call.call_id, call.name
            )
            return
        if decision.verdict is Verdict.REPLAY:
            assert decision.result is not None
            log.info(
                "< tool.call %s %s: answered already, result sent again", call.call_id, call.name
            )
            _publish_result(bus, decision.result, 0.0)
            return
        log.info("< tool.call %s %s", call.call_id, call.name)
        log.debug("< tool.call %s arguments %.500s", call.call_id, call.arguments_json)
        task = asyncio.create_task(answer(call), name=f"tool-{call.name}-{call.call_id}")
        tasks[call.call_id] = task
        task.add_done_callback(functools.partial(_task_done, tasks, call.call_id))

    metrics = asyncio.create_task(_metrics_loop(bus, runner, book), name="tools-metrics")
    try:
        publish_catalog("start")
        async for delivery in bus:
            msg = delivery.msg
            try:
                if isinstance(msg, ToolCall):
                    on_call(msg)
                elif isinstance(msg, ToolDescribe):
                    publish_catalog(f"tool.describe from {delivery.sender}")
                elif isinstance(msg, SessionState):
                    if msg.phase is not last_phase and msg.phase in _CATALOG_PHASES:
                        publish_catalog(f"session {msg.phase}")
                    last_phase = msg.phase
            except Exception:  # never die on one bad message
                log.exception("tools: failed to handle %s from %s", delivery.topic, delivery.sender)
    finally:
        metrics.cancel()
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


def _publish_result(bus: Bus, result: ToolResult, elapsed_ms: float) -> None:
    bus.publish(topics.TOOL_RESULT, result)
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


async def _metrics_loop(bus: Bus, runner: ToolRunner, book: CallBook) -> None:
    while True:
        await asyncio.sleep(METRICS_INTERVAL_S)
        stats = runner.stats
        values: dict[str, Any] = {
            "calls": stats.calls,
            "ok": stats.ok,
            "running": len(book.running),
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
