"""Pending tool calls, sans I/O: every call gets exactly one output, in time.

The session adds a call when the model calls a function, resolves it when the
tools process answers, and asks :meth:`PendingCalls.expire` with the current
time for the calls whose deadline passed; those get an explicit error output so
the model never waits forever. :meth:`PendingCalls.fail_all` answers every open
call at once (tools process gone, session closing).

Exactly once: a call_id is remembered once answered (the last :data:`MAX_ANSWERED` of
the connection), so a server that repeats a call gets no second tool run and no second
output (:meth:`PendingCalls.add` returns None). Outputs that cannot be sent yet (the
call came before ``realtime.session.created``) are held (:meth:`PendingCalls.hold`)
and sent once the session allows items. :meth:`PendingCalls.new_connection` starts over
for a new socket (call ids are per NavTalk session).
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

from agent.errors import ErrorCategory, error_output
from agent.messages import ErrorInfo, ToolResult

__all__ = ["Completion", "PendingCall", "PendingCalls", "error_output", "output_for"]

logger = logging.getLogger(__name__)

MAX_ANSWERED = 1024  # answered call ids remembered per connection (duplicates detection)
MAX_HELD = 64  # outputs waiting for realtime.session.created
MAX_PENDING = 256  # open calls; beyond, a new call is answered with an error at once


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
        self._answered: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._held: list[Completion] = []
        self.duplicates = 0  # calls seen again after they were added or answered

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    def seen(self, call_id: str) -> bool:
        """Open or already answered on this connection."""
        return call_id in self._calls or call_id in self._answered

    def new_connection(self) -> list[Completion]:
        """A new socket: forget the answered ids; returns the held outputs (now undeliverable)."""
        self._answered.clear()
        held, self._held = self._held, []
        return held

    def add(
        self, call_id: str, name: str, arguments_json: str, *, now: float, timeout_s: float
    ) -> PendingCall | None:
        """Track a new call. None for a call_id already open or answered (a duplicate: it
        must get no second run and no second output)."""
        if self.seen(call_id):
            self.duplicates += 1
            return None
        call = PendingCall(call_id, name, arguments_json, now, now + timeout_s)
        self._calls[call_id] = call
        return call

    def full(self) -> bool:
        return len(self._calls) >= MAX_PENDING

    def answer(
        self, call_id: str, name: str, category: ErrorCategory, message: str, *, now: float
    ) -> Completion | None:
        """Answer a call at once with an error, without running it (unknown tool, arguments
        over the limit). None for a duplicate."""
        if self.seen(call_id):
            self.duplicates += 1
            return None
        call = PendingCall(call_id, name, "", now, now)
        self._mark_answered(call_id)
        return self._fail(call, category, message)

    def resolve(self, result: ToolResult) -> Completion | None:
        """The tools process answered. None when the call is unknown or already answered
        (late results after a timeout are dropped: the model has had its error output)."""
        call = self._calls.pop(result.call_id, None)
        if call is None:
            return None
        self._mark_answered(call.call_id)
        return Completion(call, result, output_for(result))

    def hold(self, done: Completion) -> bool:
        """Keep an output until the session allows items; False when the hold is full."""
        if len(self._held) >= MAX_HELD:
            return False
        self._held.append(done)
        return True

    def take_held(self) -> list[Completion]:
        held, self._held = self._held, []
        return held

    def _mark_answered(self, call_id: str) -> None:
        self._answered[call_id] = None
        while len(self._answered) > MAX_ANSWERED:
            self._answered.popitem(last=False)

    def next_deadline(self) -> float | None:
        return min((c.deadline for c in self._calls.values()), default=None)

    def expire(self, now: float) -> list[Completion]:
        """Calls whose deadline has passed, answered with a timeout error."""
        due = [c for c in self._calls.values() if c.deadline <= now]
        out = []
        for call in due:
            del self._calls[call.call_id]
            self._mark_answered(call.call_id)
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
        for call in calls:
            self._mark_answered(call.call_id)
        return [self._fail(c, category, reason) for c in calls]

    @staticmethod
    def _fail(call: PendingCall, category: ErrorCategory, message: str) -> Completion:
        error = ErrorInfo(category=category, message=message, retryable=True)
        result = ToolResult(call_id=call.call_id, name=call.name, ok=False, error=error)
        return Completion(call, result, error_output(category, message))
