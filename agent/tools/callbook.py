"""The tools service's bookkeeping of calls (sans-I/O): exactly one result per call id.

- a call whose id is running already is a duplicate: ignored (its result is coming);
- a call whose id was answered recently gets the same result again, without running the
  handler twice (a caller that lost a result can ask again);
- on shutdown, every call still running gets an ``unavailable`` result.

No clock, no I/O: the service feeds it and publishes what it returns.
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
    DUPLICATE = "duplicate"  # same id is running: drop this copy
    REPLAY = "replay"  # same id answered recently: publish the stored result again


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    result: ToolResult | None = None  # for REPLAY


class CallBook:
    """Calls in flight and recently answered, by call id."""

    def __init__(self, remember: int = 256):
        self._running: dict[str, ToolCall] = {}
        self._answered: collections.OrderedDict[str, ToolResult] = collections.OrderedDict()
        self._remember = remember

    def on_call(self, call: ToolCall) -> Decision:
        if call.call_id in self._running:
            return Decision(Verdict.DUPLICATE)
        answered = self._answered.get(call.call_id)
        if answered is not None and answered.name == call.name:
            return Decision(Verdict.REPLAY, answered)
        self._running[call.call_id] = call
        return Decision(Verdict.RUN)

    def on_result(self, result: ToolResult) -> bool:
        """Record a result; False if its call is not running (already answered: drop it)."""
        if self._running.pop(result.call_id, None) is None:
            return False
        self._answered[result.call_id] = result
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
