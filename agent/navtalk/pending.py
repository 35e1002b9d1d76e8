"""Pending tool calls, sans I/O: every call gets exactly one output, in time.

The session adds a call when the model calls a function, resolves it when the
tools process answers, and asks :meth:`PendingCalls.expire` with the current
time for the calls whose deadline passed; those get an explicit error output so
the model never waits forever. :meth:`PendingCalls.fail_all` answers every open
call at once (tools process gone, session closing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.errors import ErrorCategory, error_output
from agent.messages import ErrorInfo, ToolResult

__all__ = ["Completion", "PendingCall", "PendingCalls", "error_output", "output_for"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PendingCall:
    call_id: str
    name: str
    arguments_json: str
    started: float  # `now` when added (monotonic seconds)
    deadline: float  # `now` after which it expires


@dataclass(frozen=True, slots=True)
class Completion:
    """A call's end: the ``output`` string for NavTalk and the ``result`` for the bus."""

    call: PendingCall
    result: ToolResult
    output: str


def output_for(result: ToolResult) -> str:
    """The ``function_call_output`` string for a tool result (always a string [hotel])."""
    if result.ok:
        return result.output_json
    if result.error is None:
        return error_output(ErrorCategory.HANDLER_ERROR, "the tool failed")
    return error_output(result.error.category, result.error.message)


class PendingCalls:
    def __init__(self) -> None:
        self._calls: dict[str, PendingCall] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    def add(
        self, call_id: str, name: str, arguments_json: str, *, now: float, timeout_s: float
    ) -> PendingCall:
        """Track a new call; a repeated call_id replaces the old one (logged)."""
        if call_id in self._calls:
            logger.warning("= tool call %s added twice; keeping the newer", call_id)
        call = PendingCall(call_id, name, arguments_json, now, now + timeout_s)
        self._calls[call_id] = call
        return call

    def resolve(self, result: ToolResult) -> Completion | None:
        """The tools process answered. None when the call is unknown or already answered
        (late results after a timeout are dropped: the model has had its error output)."""
        call = self._calls.pop(result.call_id, None)
        if call is None:
            return None
        return Completion(call, result, output_for(result))

    def next_deadline(self) -> float | None:
        return min((c.deadline for c in self._calls.values()), default=None)

    def expire(self, now: float) -> list[Completion]:
        """Calls whose deadline has passed, answered with a timeout error."""
        due = [c for c in self._calls.values() if c.deadline <= now]
        out = []
        for call in due:
            del self._calls[call.call_id]
            waited = now - call.started
            out.append(
                self._fail(
                    call,
                    ErrorCategory.TIMEOUT,
                    f"tool {call.name!r} gave no result in {waited:.1f} s",
                )
            )
        return out

    def fail_all(
        self, reason: str, category: ErrorCategory = ErrorCategory.UNAVAILABLE
    ) -> list[Completion]:
        """Answer every open call with an error (tools process died, session ending)."""
        calls, self._calls = list(self._calls.values()), {}
        return [self._fail(c, category, reason) for c in calls]

    @staticmethod
    def _fail(call: PendingCall, category: ErrorCategory, message: str) -> Completion:
        error = ErrorInfo(category=category, message=message, retryable=True)
        result = ToolResult(call_id=call.call_id, name=call.name, ok=False, error=error)
        return Completion(call, result, error_output(category, message))
