"""The tools service's bookkeeping of calls (sans-I/O): exactly one result per call id.

- a call whose id is running already, or was answered recently, is a duplicate: dropped
  (the result is coming, or went out already). A call id is answered once on the bus, so
  whoever counts results (the session, a chaos test) sees one per call;
- on shutdown, every call still running gets an ``unavailable`` result.

No clock, no I/O: the service feeds it and publishes what it returns. Memory is bounded:
only the last ``remember`` answered ids are kept (a duplicate older than that runs again).
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass

from agent.errors import ErrorCategory
from agent.messages import ToolCall, ToolResult
from agent.tools.runner import error_result

__all__ = ["CallBook", "Decision", "Verdict"]


class Verdict(enum.Enum):
    RUN = "run"  # new call: run it
    DUPLICATE = "duplicate"  # same id running or answered: drop this copy


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    answered: bool = False  # for DUPLICATE: the first copy was answered already


class CallBook:
    """Calls in flight and recently answered, by call id."""

    def __init__(self, remember: int = 1024):
        self._running: dict[str, ToolCall] = {}
        self._answered: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._remember = remember
        self.duplicates = 0

    def on_call(self, call: ToolCall) -> Decision:
        if call.call_id in self._running:
            self.duplicates += 1
            return Decision(Verdict.DUPLICATE)
        if call.call_id in self._answered:
            self.duplicates += 1
            return Decision(Verdict.DUPLICATE, answered=True)
        self._running[call.call_id] = call
        return Decision(Verdict.RUN)

    def on_result(self, result: ToolResult) -> bool:
        """Record a result; False if its call is not running (already answered: drop it)."""
        if self._running.pop(result.call_id, None) is None:
            return False
        self._answered[result.call_id] = None
        while len(self._answered) > self._remember:
            self._answered.popitem(last=False)
        return True

    @property
    def running(self) -> list[ToolCall]:
        return list(self._running.values())

    def abort_all(self, reason: str) -> list[ToolResult]:
        """Error results for every running call (which are then no longer running)."""
        results = [
            error_result(call, ErrorCategory.UNAVAILABLE, reason) for call in self._running.values()
        ]
        for result in results:
            self.on_result(result)
        return results
