"""Fuzzing tool-argument validation: arbitrary JSON, arbitrary text and arbitrary bytes
never raise anything but ArgumentsError (and never take long); and the sans-I/O parts the
tools service leans on (the nesting scan, error messages for the model, flood control)."""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypedDict

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import GENERIC_MESSAGES, ErrorCategory, error_output, model_message
from agent.tools import tool
from agent.tools.flood import BurstLog, Pacer
from agent.tools.schema import (
    MAX_ARGUMENTS_DEPTH,
    ArgumentsError,
    nesting_depth,
    validate_arguments,
)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass
class Point:
    x: int
    y: float = 0.0


class Guest(TypedDict):
    name: str
    nights: int


@tool
def everything(
    text: str,
    count: Annotated[int, msgspec.Meta(ge=0, le=10)],
    ratio: float,
    flag: bool,
    color: Color,
    side: Literal["left", "right"],
    tags: list[str],
    pair: tuple[int, str],
    scores: dict[str, float],
    point: Point,
    guest: Guest,
    anything: Any = None,
    maybe: int | None = None,
) -> None:
    """Take every supported kind of parameter."""


@tool
def nothing() -> None:
    """Take no parameters."""


PARAM_TYPES = [everything.params_type, nothing.params_type]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)


def json_trees(max_leaves: int) -> st.SearchStrategy[object]:
    return st.recursive(
        json_scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


json_values = json_trees(24)
field_names = st.sampled_from(
    ["text", "count", "ratio", "flag", "color", "side", "tags", "pair", "scores", "point"]
    + ["guest", "anything", "maybe", "x", ""]
)
argument_objects = st.dictionaries(
    field_names | st.text(max_size=8), json_scalars | json_trees(4), max_size=10
)


def check(params_type: type[msgspec.Struct], arguments: str | bytes) -> None:
    started = time.perf_counter()
    try:
        kwargs = validate_arguments(params_type, arguments)
    except ArgumentsError as exc:
        assert 0 < len(str(exc)) <= 400
    else:
        assert set(kwargs) <= set(params_type.__struct_fields__)
    assert time.perf_counter() - started < 0.5


@FUZZ
@given(st.sampled_from(PARAM_TYPES), argument_objects)
def test_fuzz_json_objects(params_type: type[msgspec.Struct], args: dict[str, Any]) -> None:
    check(params_type, json.dumps(args))


@FUZZ
@given(st.sampled_from(PARAM_TYPES), json_values)
def test_fuzz_any_json(params_type: type[msgspec.Struct], value: object) -> None:
    check(params_type, json.dumps(value))


@FUZZ
@given(st.sampled_from(PARAM_TYPES), st.text(max_size=300))
def test_fuzz_text(params_type: type[msgspec.Struct], text: str) -> None:
    check(params_type, text)  # lone surrogates included


@FUZZ
@given(st.sampled_from(PARAM_TYPES), st.binary(max_size=300))
def test_fuzz_bytes(params_type: type[msgspec.Struct], data: bytes) -> None:
    check(params_type, data)


json_alphabet = st.sampled_from(list('{}[]",:\\ 0123456789.eE-+truefalsnul') + ["\\u"])


@FUZZ
@given(st.sampled_from(PARAM_TYPES), st.lists(json_alphabet, max_size=400).map("".join))
def test_fuzz_json_like_soup(params_type: type[msgspec.Struct], text: str) -> None:
    check(params_type, text)


@FUZZ
@given(st.integers(min_value=0, max_value=3000), st.sampled_from(["[", '{"a":', '["x",']))
def test_fuzz_deep_nesting_is_refused_before_decoding(depth: int, opener: str) -> None:
    closer = {"[": "]", '{"a":': "}", '["x",': "]"}[opener]
    text = '{"anything": ' + opener * depth + "1" + closer * depth + "}"
    if depth + 1 > MAX_ARGUMENTS_DEPTH:
        with pytest.raises(ArgumentsError, match="nested"):
            validate_arguments(everything.params_type, text)
    else:
        check(everything.params_type, text)


@FUZZ
@given(json_values)
def test_nesting_depth_matches_the_value(value: object) -> None:
    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        return 0

    assert nesting_depth(json.dumps(value)) == depth(value)
    assert nesting_depth(json.dumps(value, ensure_ascii=False)) == depth(value)


def test_nesting_depth_ignores_brackets_in_strings_and_is_linear() -> None:
    assert nesting_depth('{"a": "[[[{{{", "b": ["\\\\", "\\"["]}') == 2
    assert nesting_depth('"unterminated [[[') == 0
    for text in ["[" * 65_536, '"\\"' * 21_000, '"' + '\\"' * 32_000, '{"a":1}' * 9_000]:
        started = time.perf_counter()
        nesting_depth(text)
        assert time.perf_counter() - started < 0.2


def test_model_messages_are_short_single_lines_and_generic_when_empty() -> None:
    assert model_message(ErrorCategory.HANDLER_ERROR) == "the tool failed"
    assert model_message(ErrorCategory.DEVICE, "  ") == GENERIC_MESSAGES[ErrorCategory.DEVICE]
    assert set(GENERIC_MESSAGES) == set(ErrorCategory)
    long = model_message(ErrorCategory.INVALID_ARGUMENTS, "bad\n\targs " + "x" * 1000)
    assert long.startswith("bad args x") and len(long) == 400 and "\n" not in long
    assert json.loads(error_output(ErrorCategory.TIMEOUT)) == {
        "error": {"category": "timeout", "message": "the tool did not answer in time"}
    }
    out = json.loads(error_output(ErrorCategory.UNKNOWN_TOOL, "no tool named 'x'"))
    assert out == {"error": {"category": "unknown_tool", "message": "no tool named 'x'"}}


def test_burst_log_logs_the_first_then_one_per_window_and_counts_the_rest() -> None:
    log: BurstLog[str] = BurstLog(window_s=10.0, max_keys=2)
    assert log.hit("a", now=0.0) == 0
    assert [log.hit("a", now=t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert log.hit("b", now=5.0) == 0  # another key has its own burst
    assert log.hit("a", now=10.0) == 3  # the next line says how many were left out
    assert log.hit("a", now=11.0) is None
    assert log.flush(now=15.0) == []  # a's window is still open
    assert log.flush(now=20.0) == [("a", 1)]  # the summary of a burst that stopped
    assert log.flush(now=30.0) == []
    assert log.total == {"a": 6, "b": 1}
    for key in "cdefg":  # distinct keys stay bounded
        log.hit(key, now=40.0)
    assert len(log._bursts) == 2


def test_pacer_answers_the_first_at_once_and_the_rest_once_per_interval() -> None:
    p = Pacer(interval_s=0.25)
    assert p.request(now=0.0) == 0.0
    p.answered(now=0.0)
    assert p.request(now=0.1) == pytest.approx(0.15)  # scheduled for 0.25
    assert [p.request(now=t) for t in (0.11, 0.2, 0.24)] == [None, None, None]  # share it
    p.answered(now=0.25)
    assert p.request(now=0.6) == 0.0  # quiet for an interval: at once again
    p.answered(now=0.6)
    assert (p.requests, p.answers) == (6, 3)
