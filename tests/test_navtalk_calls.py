"""The tool-call core: catalog from the tools service only, declared once per connection,
every call_id answered exactly once (duplicates, early calls, over-limit arguments)."""

from __future__ import annotations

import json

from agent.errors import ErrorCategory
from agent.messages import ToolCatalog, ToolResult, ToolSpec
from agent.navtalk import events as ev
from agent.navtalk.calls import DEADLINE_MARGIN_S, Dispatch, ToolCalls
from agent.navtalk.pending import MAX_HELD, Completion


def spec(name: str, timeout_ms: int = 3000, params: str = "{}") -> ToolSpec:
    return ToolSpec(name=name, description=name, parameters_json=params, timeout_ms=timeout_ms)


def with_catalog(*specs: ToolSpec) -> ToolCalls:
    t = ToolCalls(default_timeout_ms=10_000)
    assert t.set_catalog(ToolCatalog(tools=list(specs)), "tools")
    return t


def fc(call_id: str, name: str = "get_time", **kw: str) -> ev.FunctionCallDone:
    return ev.FunctionCallDone(call_id=call_id, name=name, **kw)


def test_only_the_tools_service_sets_the_catalog() -> None:
    t = with_catalog(spec("get_time"))
    assert not t.set_catalog(ToolCatalog(tools=[]), "intruder")
    assert not t.set_catalog(ToolCatalog(tools=[]), "tools.runtime")
    assert [s.name for s in t.catalog or []] == ["get_time"] and t.spoofed_catalogs == 2


def test_declared_once_per_connection_and_again_on_change() -> None:
    t = ToolCalls(default_timeout_ms=1000)
    assert t.to_declare("c1") is None  # no catalog yet
    t.set_catalog(ToolCatalog(tools=[spec("a")]), "tools")
    decls = t.to_declare("c1")
    assert decls is not None and [d.name for d in decls] == ["a"]
    t.set_catalog(ToolCatalog(tools=[spec("a")]), "tools")  # the same again
    assert t.to_declare("c1") is None
    t.set_catalog(ToolCatalog(tools=[spec("a"), spec("b")]), "tools")
    assert [d.name for d in t.to_declare("c1") or []] == ["a", "b"]
    assert t.to_declare("c2") is not None  # a new connection gets it once
    assert t.to_declare("c2") is None


def test_bad_schemas_are_left_out() -> None:
    deep = "[" * 10_000 + "]" * 10_000
    t = with_catalog(spec("ok"), spec("bad", params="{"), spec("deep", params=deep))
    assert [d.name for d in t.declarations()] == ["ok"]


def test_deadline_is_the_tools_timeout_plus_the_margin() -> None:
    t = with_catalog(spec("get_time", timeout_ms=3000))
    action = t.on_call(fc("c1"), now=100.0)
    assert isinstance(action, Dispatch) and action.call.timeout_ms == 3000
    assert t.pending.next_deadline() == 100.0 + 3.0 + DEADLINE_MARGIN_S
    assert t.pending.expire(104.9) == []  # the tools process answers first


def test_duplicate_call_id_gets_nothing_before_or_after_its_answer() -> None:
    t = with_catalog(spec("get_time"))
    assert isinstance(t.on_call(fc("c1"), 0.0), Dispatch)
    assert t.on_call(fc("c1"), 0.1) is None  # while open
    done = t.pending.resolve(ToolResult(call_id="c1", name="get_time", ok=True))
    assert done is not None
    assert t.on_call(fc("c1"), 0.2) is None  # after it was answered
    assert t.pending.resolve(ToolResult(call_id="c1", name="get_time", ok=True)) is None
    t.new_connection()  # ids are per NavTalk session
    assert isinstance(t.on_call(fc("c1"), 1.0), Dispatch)


def test_unknown_tool_and_oversized_arguments_are_answered_at_once_and_once() -> None:
    t = with_catalog(spec("get_time"))
    unknown = t.on_call(fc("c1", name="nope"), 0.0)
    assert isinstance(unknown, Completion)
    assert json.loads(unknown.output)["error"]["category"] == "unknown_tool"
    assert t.on_call(fc("c1", name="nope"), 0.0) is None
    big = t.on_call(fc("c2", error="the arguments are over 65536 characters"), 0.0)
    assert isinstance(big, Completion) and big.result.error is not None
    assert big.result.error.category is ErrorCategory.INVALID_ARGUMENTS
    assert len(t.pending) == 0


def test_no_catalog_yet_dispatches_with_the_default_timeout() -> None:
    t = ToolCalls(default_timeout_ms=7000)
    action = t.on_call(fc("c1", name="anything"), 0.0)
    assert isinstance(action, Dispatch) and action.call.timeout_ms == 7000
    assert action.call.arguments_json == "{}"


def test_outputs_before_session_created_are_held_bounded_and_dropped_on_reconnect() -> None:
    t = with_catalog(spec("get_time"))
    held = [t.on_call(fc(f"c{i}", name="nope"), 0.0) for i in range(MAX_HELD + 1)]
    assert all(isinstance(h, Completion) for h in held)
    assert all(t.pending.hold(h) for h in held[:MAX_HELD])  # type: ignore[arg-type]
    assert not t.pending.hold(held[-1])  # type: ignore[arg-type]
    assert len(t.pending.take_held()) == MAX_HELD and t.pending.take_held() == []
    t.pending.hold(held[0])  # type: ignore[arg-type]
    assert len(t.new_connection()) == 1
