"""Run tool calls: validate, run with a timeout, and always produce one ToolResult.

.. code-block:: text

    ToolCall ─▶ check ─▶ lookup ─▶ validate ─▶ run (thread or task, timeout) ─▶ encode ─▶ ToolResult
                  │        │          │              │                            │
              call id:   unknown_   invalid_    handler_error / timeout /     bad_output
              invalid_   tool       arguments   device / unavailable
              arguments;
              name: unknown_tool

:meth:`ToolRunner.prepare` is the synchronous part (shape of the call, lookup, bounded
validation): a call it refuses is answered at once, without a task. The decisions
(timeout choice, error classification, output encoding) are plain functions;
:meth:`ToolRunner.execute` is the thin async part that runs handlers.
:meth:`ToolRunner.run` (prepare, then execute) never raises for anything a tool or a
caller does: every call ends in exactly one :class:`ToolResult`.

What the model reads is written for it: validation errors name the field; a
:class:`ToolError` a plugin raised on purpose keeps its message; any other
exception becomes a generic message (``the tool failed``, ``a device the tool needs
is not working``) and its text and traceback go to the log with the call id,
because an exception's text may name devices, paths or hosts and is read aloud.

Sync handlers run in :class:`HandlerThreads`, a bounded pool of daemon threads,
so a slow tool does not block others. Python cannot kill a thread: a sync
handler that never returns keeps its thread until the process exits. The runner
answers that call with a ``timeout`` error at once, counts the thread as stuck
(:attr:`RunnerStats.stuck_threads`), and when every thread is stuck, answers
further sync calls with ``unavailable`` immediately. The threads are daemon
threads, so stuck handlers never hold up the process's exit; restarting the
tools service is the cure. Async handlers that overrun are cancelled; one that
ignores its cancellation is left behind (counted in ``abandoned_tasks``) and
never delays the result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import itertools
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from agent.errors import (
    GENERIC_MESSAGES,
    DeviceError,
    ErrorCategory,
    NavtalkAgentError,
    ToolError,
    error_output,
    model_message,
)
from agent.messages import ErrorInfo, Message, ToolCall, ToolResult
from agent.tools.plugin import NAME_RE, LazyCamera, Tool, ToolContext
from agent.tools.schema import ArgumentsError, validate_arguments

__all__ = [
    "MAX_CALL_ID_CHARS",
    "HandlerThreads",
    "Prepared",
    "RunnerStats",
    "ToolRunner",
    "check_call",
    "classify_exception",
    "effective_timeout_s",
    "encode_output",
    "error_result",
]

log = logging.getLogger(__name__)

MAX_CALL_ID_CHARS = 256  # NavTalk's call ids are ~30 characters

_RETRYABLE = frozenset({ErrorCategory.TIMEOUT, ErrorCategory.UNAVAILABLE, ErrorCategory.DEVICE})

ContextFactory = Callable[[Tool, ToolCall], ToolContext]


class BadOutputError(NavtalkAgentError):
    """A handler returned something that cannot be sent to the model as JSON."""


# --- the decisions (pure) ---------------------------------------------------------------------


def error_result(call: ToolCall, category: ErrorCategory, message: str = "") -> ToolResult:
    """An error result for ``call``; the output tells the model what happened.

    ``message`` must be fit for the model (see :func:`agent.errors.model_message`); ""
    gives the category's generic text. The call id and name are cut to their limits, so
    a hostile call is never echoed at length.
    """
    text = model_message(category, message)
    return ToolResult(
        call_id=call.call_id[:MAX_CALL_ID_CHARS],
        name=call.name[:64],
        ok=False,
        output_json=error_output(category, text),
        error=ErrorInfo(category=category, message=text, retryable=category in _RETRYABLE),
    )


def check_call(call: ToolCall) -> ToolResult | None:
    """An error result for a call whose id or tool name cannot be genuine; None if fine."""
    if not 0 < len(call.call_id) <= MAX_CALL_ID_CHARS or not call.call_id.isprintable():
        return error_result(
            call,
            ErrorCategory.INVALID_ARGUMENTS,
            f"the call id must be 1 to {MAX_CALL_ID_CHARS} printable characters "
            f"(got {len(call.call_id)})",
        )
    if not NAME_RE.fullmatch(call.name):
        return error_result(
            call,
            ErrorCategory.UNKNOWN_TOOL,
            f"no tool named {call.name[:64]!r}: tool names are 1-64 letters, digits, '_' or '-'",
        )
    return None


def ok_result(call: ToolCall, output_json: str) -> ToolResult:
    return ToolResult(call_id=call.call_id, name=call.name, ok=True, output_json=output_json)


def effective_timeout_s(tool: Tool, call: ToolCall, default_timeout_s: float) -> float:
    """The tool's own timeout (or the default), never longer than the caller's deadline."""
    own = tool.timeout_s if tool.timeout_s is not None else default_timeout_s
    return min(own, call.timeout_ms / 1000)


def classify_exception(exc: BaseException) -> tuple[ErrorCategory, str]:
    """The category and model-facing message of an exception a handler raised.

    Only a :class:`ToolError` speaks to the model (its author wrote the message for it);
    any other exception gets its category's generic message: its own text stays in the log.
    """
    if isinstance(exc, ToolError):
        return exc.category, model_message(exc.category, str(exc))
    category = ErrorCategory.DEVICE if isinstance(exc, DeviceError) else ErrorCategory.HANDLER_ERROR
    return category, GENERIC_MESSAGES[category]


def encode_output(value: Any, max_chars: int) -> str:
    """JSON text of a handler's return value; BadOutputError when impossible or too large."""
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        raise BadOutputError("the handler returned an awaitable; declare it `async def`")
    try:
        text = msgspec.json.encode(value).decode()
    except RecursionError:  # a self-referencing or absurdly deep value
        raise BadOutputError("the handler returned a value nested too deeply for JSON") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadOutputError(
            f"the handler returned a {type(value).__name__}, which is not JSON-serializable: {exc}"
        ) from None
    if len(text) > max_chars:
        raise BadOutputError(
            f"the output is {len(text)} characters of JSON; the limit is {max_chars}"
        )
    return text


# --- the thread pool ----------------------------------------------------------------------------


_Job = tuple[concurrent.futures.Future[Any], Callable[..., Any], dict[str, Any]]


class HandlerThreads:
    """A bounded pool of daemon threads for sync handlers.

    Unlike :class:`concurrent.futures.ThreadPoolExecutor`, whose threads are joined
    at interpreter exit, these are daemon threads: a handler stuck forever cannot
    stop the process from exiting. Threads start on demand, up to ``max_threads``.
    """

    def __init__(self, max_threads: int, name: str = "tool-handler"):
        if max_threads < 1:
            raise ValueError("max_threads must be >= 1")
        self.max_threads = max_threads
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._outstanding = 0  # submitted and not finished (queued or running)
        self._busy = 0
        self._closed = False
        self._counter = itertools.count(1)

    @property
    def busy(self) -> int:
        """Threads running a handler right now (stuck ones included)."""
        return self._busy

    @property
    def size(self) -> int:
        """Threads started so far (they stay until shutdown)."""
        return len(self._threads)

    def submit(
        self, fn: Callable[..., Any], kwargs: dict[str, Any]
    ) -> concurrent.futures.Future[Any]:
        """Queue ``fn(**kwargs)``; a new thread starts when every thread has work."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("HandlerThreads is shut down")
            self._outstanding += 1
            if self._outstanding > len(self._threads) < self.max_threads:
                t = threading.Thread(
                    target=self._work, name=f"{self._name}-{next(self._counter)}", daemon=True
                )
                self._threads.append(t)
                t.start()
        self._jobs.put((future, fn, kwargs))
        return future

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, kwargs = job
            del job
            if future.set_running_or_notify_cancel():
                with self._lock:
                    self._busy += 1
                try:
                    result = fn(**kwargs)
                except BaseException as exc:  # reported to the caller, never lost
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                finally:
                    with self._lock:
                        self._busy -= 1
            with self._lock:
                self._outstanding -= 1
            del future, fn, kwargs

    def shutdown(self) -> None:
        """Cancel queued jobs and let idle threads end. Never waits for a running handler."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self._threads:
            self._jobs.put(None)


# --- the runner -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    """A call that passed :meth:`ToolRunner.prepare`: what :meth:`ToolRunner.execute` runs."""

    tool: Tool
    call: ToolCall
    kwargs: dict[str, Any]
    timeout_s: float


@dataclass
class RunnerStats:
    calls: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by ErrorCategory value
    stuck_threads: int = 0  # sync handlers still running after their timeout
    abandoned_tasks: int = 0  # async handlers that ignored cancellation after their timeout
    last_ms: float = 0.0  # duration of the last call


class ToolRunner:
    """Runs calls against a set of tools. ``await run(call)`` always returns a ToolResult."""

    def __init__(
        self,
        tools: Mapping[str, Tool],
        *,
        default_timeout_s: float = 10.0,
        max_output_chars: int = 16_384,
        pool_size: int = 8,
        make_context: ContextFactory | None = None,
    ):
        self.tools = dict(tools)
        self.default_timeout_s = default_timeout_s
        self.max_output_chars = max_output_chars
        self.threads = HandlerThreads(pool_size)
        self._make_context = make_context or _standalone_context
        self._abandoned: set[asyncio.Task[Any]] = set()
        self.stats = RunnerStats()

    def prepare(self, call: ToolCall) -> Prepared | ToolResult:
        """Check, look up and validate ``call`` (synchronous, bounded work).

        Returns what :meth:`execute` needs, or the error result of a call that will not run
        (bad call id or name, unknown tool, invalid arguments). Counts the call.
        """
        self.stats.calls += 1
        outcome = self._prepare(call)
        if isinstance(outcome, ToolResult):
            self._count(outcome)
        return outcome

    def _prepare(self, call: ToolCall) -> Prepared | ToolResult:
        refused = check_call(call)
        if refused is not None:
            return refused
        tool = self.tools.get(call.name)
        if tool is None:
            known = ", ".join(sorted(self.tools)) or "none"
            return error_result(
                call, ErrorCategory.UNKNOWN_TOOL, f"no tool named {call.name!r} (tools: {known})"
            )
        try:
            kwargs = validate_arguments(tool.params_type, call.arguments_json)
        except ArgumentsError as exc:
            return error_result(call, ErrorCategory.INVALID_ARGUMENTS, str(exc))
        return Prepared(tool, call, kwargs, effective_timeout_s(tool, call, self.default_timeout_s))

    async def execute(self, prepared: Prepared) -> ToolResult:
        """Run a prepared call's handler under its timeout; always one result, never raises
        (except CancelledError when the caller is cancelled)."""
        started = time.perf_counter()
        tool, call = prepared.tool, prepared.call
        try:
            kwargs = dict(prepared.kwargs)
            if tool.context_param is not None:
                kwargs[tool.context_param] = self._make_context(tool, call)
            if tool.is_async:
                result = await self._run_async(tool, call, kwargs, prepared.timeout_s)
            else:
                result = await self._run_sync(tool, call, kwargs, prepared.timeout_s)
        except Exception as exc:  # a bug of ours or a context factory: still one answer
            log.error("tool %s call %s: the runner failed", tool.name, call.call_id, exc_info=exc)
            result = error_result(call, ErrorCategory.HANDLER_ERROR)
        self.stats.last_ms = (time.perf_counter() - started) * 1000
        self._count(result)
        return result

    async def run(self, call: ToolCall) -> ToolResult:
        """:meth:`prepare`, then :meth:`execute`: exactly one result for ``call``."""
        outcome = self.prepare(call)
        if isinstance(outcome, ToolResult):
            return outcome
        return await self.execute(outcome)

    def _count(self, result: ToolResult) -> None:
        if result.ok:
            self.stats.ok += 1
        elif result.error is not None:
            key = result.error.category.value
            self.stats.errors[key] = self.stats.errors.get(key, 0) + 1

    def _finish(self, tool: Tool, call: ToolCall, value: Any) -> ToolResult:
        try:
            return ok_result(call, encode_output(value, self.max_output_chars))
        except BadOutputError as exc:
            log.warning("tool %s call %s returned bad output: %s", tool.name, call.call_id, exc)
            return error_result(call, ErrorCategory.BAD_OUTPUT, str(exc))

    def _failed(self, tool: Tool, call: ToolCall, exc: BaseException) -> ToolResult:
        """The result of a handler that raised; the exception's text goes to the log only."""
        category, message = classify_exception(exc)
        if isinstance(exc, ToolError):
            cause = f" (cause: {exc.__cause__!r})" if exc.__cause__ is not None else ""
            log.info(
                "tool %s call %s failed (%s): %s%s",
                tool.name,
                call.call_id,
                category,
                message,
                cause,
            )
        elif isinstance(exc, DeviceError):
            log.warning(
                "tool %s call %s: device error (the model is told %r): %s",
                tool.name,
                call.call_id,
                message,
                exc,
            )
        else:
            log.warning(
                "tool %s (%s) call %s raised (the model is told %r)",
                tool.name,
                tool.origin,
                call.call_id,
                message,
                exc_info=exc,
            )
        return error_result(call, category, message)

    async def _run_async(
        self, tool: Tool, call: ToolCall, kwargs: dict[str, Any], timeout_s: float
    ) -> ToolResult:
        try:
            coro = tool.fn(**kwargs)
        except Exception as exc:  # raised before its first await (e.g. a sync wrapper)
            return self._failed(tool, call, exc)
        except (SystemExit, KeyboardInterrupt) as exc:
            return self._failed(tool, call, HandlerExitError(type(exc).__name__))
        if not inspect.isawaitable(coro):  # an "async" callable object that returned a value
            return self._finish(tool, call, coro)
        task: asyncio.Task[Any] = asyncio.ensure_future(_contained(coro))
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            self._abandon(tool, task)
            return error_result(
                call, ErrorCategory.TIMEOUT, f"the tool did not finish within {timeout_s:g} s"
            )
        if task.cancelled():
            return error_result(call, ErrorCategory.HANDLER_ERROR, "the tool was cancelled")
        error = task.exception()
        if error is not None:
            return self._failed(tool, call, error)
        return self._finish(tool, call, task.result())

    def _abandon(self, tool: Tool, task: asyncio.Task[Any]) -> None:
        """Keep a timed-out task until it honours its cancellation (it may never)."""
        self._abandoned.add(task)
        self.stats.abandoned_tasks = len(self._abandoned)

        def gone(t: asyncio.Task[Any]) -> None:
            self._abandoned.discard(t)
            self.stats.abandoned_tasks = len(self._abandoned)
            if not t.cancelled() and t.exception() is not None:
                log.debug("abandoned tool task %s ended with %r", tool.name, t.exception())

        task.add_done_callback(gone)

    async def _run_sync(
        self, tool: Tool, call: ToolCall, kwargs: dict[str, Any], timeout_s: float
    ) -> ToolResult:
        pool = self.threads
        if self.stats.stuck_threads >= pool.max_threads:
            return error_result(
                call,
                ErrorCategory.UNAVAILABLE,
                f"all {pool.max_threads} tool threads are stuck in handlers that never "
                "returned; the tools service needs a restart",
            )
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def wake(_: concurrent.futures.Future[Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, waiter)

        try:
            cf = pool.submit(tool.fn, kwargs)
        except RuntimeError:
            return error_result(call, ErrorCategory.UNAVAILABLE, "the tools service is stopping")
        cf.add_done_callback(wake)
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: see agent/bus.py
                await asyncio.shield(waiter)
        except TimeoutError:
            if cf.cancel():  # still queued: never ran
                return error_result(
                    call,
                    ErrorCategory.TIMEOUT,
                    f"no free tool thread within {timeout_s:g} s "
                    f"({pool.busy} of {pool.max_threads} busy)",
                )
            if not cf.done():
                self._mark_stuck(tool, cf, timeout_s)
                return error_result(
                    call, ErrorCategory.TIMEOUT, f"the tool did not finish within {timeout_s:g} s"
                )
        except asyncio.CancelledError:
            cf.cancel()
            raise
        error = cf.exception()
        if error is not None:
            return self._failed(tool, call, error)
        return self._finish(tool, call, cf.result())

    def _mark_stuck(self, tool: Tool, cf: concurrent.futures.Future[Any], timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        self.stats.stuck_threads += 1
        log.warning(
            "tool %s still running after its %g s timeout; its thread is stuck until it returns "
            "(%d of %d threads stuck)",
            tool.name,
            timeout_s,
            self.stats.stuck_threads,
            self.threads.max_threads,
        )

        def unstuck_on_loop() -> None:  # the counter is only ever changed on the loop
            self.stats.stuck_threads -= 1
            log.info("tool %s returned late; its result was discarded", tool.name)

        def unstuck(_: concurrent.futures.Future[Any]) -> None:  # the worker thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody counts
                loop.call_soon_threadsafe(unstuck_on_loop)

        cf.add_done_callback(unstuck)

    async def aclose(self, grace_s: float = 1.0) -> None:
        """Stop: cancel leftover async handlers (waiting at most ``grace_s``) and release
        idle threads. Stuck sync handlers are left to die with the process."""
        for task in list(self._abandoned):
            task.cancel()
        if self._abandoned:
            await asyncio.wait(set(self._abandoned), timeout=grace_s)
        if self._abandoned:
            log.warning("%d tool task(s) ignored cancellation at shutdown", len(self._abandoned))
        if self.stats.stuck_threads:
            log.warning("%d tool thread(s) stuck at shutdown", self.stats.stuck_threads)
        self.threads.shutdown()


class HandlerExitError(NavtalkAgentError):
    """A handler raised SystemExit or KeyboardInterrupt (a plugin called ``sys.exit()``)."""


async def _contained(aw: Awaitable[Any]) -> Any:
    """Await a handler; SystemExit or KeyboardInterrupt become an ordinary error.

    asyncio re-raises those two out of the event loop, so one ``sys.exit()`` in a plugin
    would stop the tools process and every call in flight with it.
    """
    try:
        return await aw
    except (SystemExit, KeyboardInterrupt) as exc:
        raise HandlerExitError(type(exc).__name__) from exc


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _standalone_context(tool: Tool, call: ToolCall) -> ToolContext:
    """A context without a bus or camera, for running tools outside the tools service."""
    from agent.config import default_settings  # agent.config imports agent.tools.settings

    def no_bus(topic: str, msg: Message, *payload: bytes) -> None:
        raise ToolError("no bus in this context", ErrorCategory.UNAVAILABLE)

    return ToolContext(
        call_id=call.call_id,
        tool_name=tool.name,
        settings=default_settings(),
        logger=logging.getLogger(f"navtalk_agent.tools.{tool.name}"),
        _publish=no_bus,
        _camera=LazyCamera(None),
    )
