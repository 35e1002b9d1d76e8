"""Pending tool-call bookkeeping: every call answered exactly once."""

from __future__ import annotations

import json

from agent.errors import ErrorCategory
from agent.messages import ErrorInfo, ToolResult
from agent.navtalk.pending import PendingCalls


def test_resolve_gives_the_output_once() -> None:
    p = PendingCalls()
    p.add("c1", "get_time", "{}", now=0.0, timeout_s=5)
    assert "c1" in p and len(p) == 1
    done = p.resolve(ToolResult(call_id="c1", name="get_time", ok=True, output_json='{"t": 1}'))
    assert done is not None and done.output == '{"t": 1}' and done.call.name == "get_time"
    assert p.resolve(ToolResult(call_id="c1", name="get_time", ok=True)) is None
    assert p.resolve(ToolResult(call_id="zz", name="x", ok=True)) is None
    assert len(p) == 0


def test_error_result_becomes_error_output() -> None:
    p = PendingCalls()
    p.add("c1", "f", "{}", now=0.0, timeout_s=5)
    err = ErrorInfo(category=ErrorCategory.INVALID_ARGUMENTS, message="name missing")
    done = p.resolve(ToolResult(call_id="c1", name="f", ok=False, error=err))
    assert done is not None
    assert json.loads(done.output) == {
        "error": {"category": "invalid_arguments", "message": "name missing"}
    }


def test_expire_only_past_deadlines() -> None:
    p = PendingCalls()
    p.add("a", "slow", "{}", now=0.0, timeout_s=1.0)
    p.add("b", "slower", "{}", now=0.0, timeout_s=3.0)
    assert p.next_deadline() == 1.0
    assert p.expire(0.99) == []
    (done,) = p.expire(1.0)
    assert done.call.call_id == "a"
    assert done.result.ok is False and done.result.error is not None
    assert done.result.error.category is ErrorCategory.TIMEOUT
    assert json.loads(done.output)["error"]["category"] == "timeout"
    assert p.next_deadline() == 3.0
    # a late result for an expired call is dropped
    assert p.resolve(ToolResult(call_id="a", name="slow", ok=True)) is None


def test_fail_all() -> None:
    p = PendingCalls()
    p.add("a", "x", "{}", now=0.0, timeout_s=9)
    p.add("b", "y", "{}", now=0.0, timeout_s=9)
    out = p.fail_all("tools process gone")
    assert sorted(c.call.call_id for c in out) == ["a", "b"]
    assert all(c.result.error and c.result.error.category is ErrorCategory.UNAVAILABLE for c in out)
    assert "tools process gone" in out[0].output
    assert len(p) == 0 and p.next_deadline() is None
