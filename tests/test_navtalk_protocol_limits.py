"""The protocol core under hostile input: bounded deltas, ids, SDPs, candidates, floods
logged once, the license redacted, and a hypothesis fuzz (arbitrary frames never raise)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.navtalk import events as ev
from agent.navtalk.protocol import (
    MAX_CALL_ARGS_CHARS,
    MAX_OPEN_CALLS,
    MAX_TOTAL_ARGS_CHARS,
    NavTalkProtocol,
)
from agent.navtalk.url import register_secret

SECRET = "Lic-PROTO-9b8a7c6d"
register_secret(SECRET)


def delta(call_id: str, text: str) -> str:
    return json.dumps(
        {
            "type": "realtime.response.function_call_arguments.delta",
            "data": {"call_id": call_id, "delta": text},
        }
    )


def done(call_id: str, name: str = "f", arguments: str = "") -> str:
    return json.dumps(
        {
            "type": "realtime.response.function_call_arguments.done",
            "data": {"call_id": call_id, "name": name, "arguments": arguments},
        }
    )


def test_one_call_over_its_limit_is_reported_and_freed() -> None:
    p = NavTalkProtocol()
    piece = "x" * 4096
    for _ in range(MAX_CALL_ARGS_CHARS // 4096 + 10):
        p.receive_text(delta("big", piece), 0.0)
        assert p.held_argument_chars <= MAX_CALL_ARGS_CHARS
    assert p.held_argument_chars == 0  # freed once over the limit
    assert p.dropped_deltas >= 10
    (event,) = p.receive_text(done("big"), 1.0)
    assert isinstance(event, ev.FunctionCallDone)
    assert event.arguments == "" and "over" in event.error


def test_total_over_all_open_calls_is_bounded() -> None:
    p = NavTalkProtocol()
    piece = "y" * 16_000
    for i in range(MAX_OPEN_CALLS):
        for _ in range(3):
            p.receive_text(delta(f"c{i}", piece), 0.0)
            assert p.held_argument_chars <= MAX_TOTAL_ARGS_CHARS
    # the calls that fit are intact, the others carry an error
    results = [p.receive_text(done(f"c{i}"), 1.0)[0] for i in range(MAX_OPEN_CALLS)]
    fine = [r for r in results if isinstance(r, ev.FunctionCallDone) and not r.error]
    bad = [r for r in results if isinstance(r, ev.FunctionCallDone) and r.error]
    assert fine and bad
    assert all(r.arguments == piece * 3 for r in fine)
    assert p.held_argument_chars == 0


def test_more_open_calls_than_the_limit_drop_deltas_not_memory() -> None:
    p = NavTalkProtocol()
    for i in range(MAX_OPEN_CALLS * 4):
        p.receive_text(delta(f"c{i}", "{}"), 0.0)
    assert p.dropped_deltas == MAX_OPEN_CALLS * 3


def test_done_with_huge_own_arguments_carries_an_error() -> None:
    p = NavTalkProtocol()
    (event,) = p.receive_text(done("c", arguments="z" * (MAX_CALL_ARGS_CHARS + 1)), 0.0)
    assert isinstance(event, ev.FunctionCallDone) and event.error and not event.arguments


@pytest.mark.parametrize(
    "frame",
    [
        {
            "type": "realtime.response.function_call_arguments.done",
            "data": {"call_id": "x" * 300, "name": "f"},
        },  # noqa: E501
        {"type": "webrtc.signaling.offer", "data": {"sdp": "v" * 300_000}},
        {"type": "webrtc.signaling.iceCandidate", "data": {"candidate": {"candidate": "c" * 5000}}},  # noqa: E501
        {"type": "t" * 300},
    ],
)
def test_oversized_fields_are_malformed(frame: dict[str, Any]) -> None:
    (event,) = NavTalkProtocol().receive_text(json.dumps(frame), 0.0)
    assert isinstance(event, ev.Malformed)


def test_ice_index_out_of_range_is_dropped_not_kept() -> None:
    frame = {
        "type": "webrtc.signaling.iceCandidate",
        "data": {"candidate": {"candidate": "c", "sdpMid": "0", "sdpMLineIndex": 2**70}},
    }
    (event,) = NavTalkProtocol().receive_text(json.dumps(frame), 0.0)
    assert isinstance(event, ev.RtcIceCandidate) and event.sdp_mline_index is None


def test_a_flood_of_bad_frames_is_logged_once_per_burst(caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="agent.navtalk.protocol")
    p = NavTalkProtocol()
    for i in range(1000):
        p.receive_text("{not json", 0.001 * i)  # one second of garbage
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == 1
    p.receive_text("{not json", 20.0)  # the next window: one line with the count
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) == 2 and "+999 more" in lines[-1].getMessage()


def test_a_license_echoed_by_the_server_is_redacted_before_parsing() -> None:
    p = NavTalkProtocol()
    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)
    frames = [
        json.dumps(
            {"type": "realtime.response.audio_transcript.done", "data": {"content": SECRET}}
        ),
        json.dumps({"type": "vendor.x", "url": f"wss://h/?license={SECRET}"}),
        '{"type": "realtime.response.audio_transcript.delta", "data": {"content": "'
        + escaped
        + '"}}',  # noqa: E501
        '{"type": "broken", ' + SECRET,
    ]
    events = [e for f in frames for e in p.receive_text(f, 0.0)]
    assert SECRET not in repr(events[:2]) + repr(events[3:])
    # JSON escapes survive the raw-text pass; the bridge redacts decoded text again
    from agent.navtalk.bridge import to_bus

    outs = [o for e in events for o in to_bus(e, connection_id="c", ice=(), now_ns=0)]
    assert SECRET not in repr(outs)


# --- fuzz ----------------------------------------------------------------------------------------

_TYPES = sorted(ev.EVENT_TYPES) + ["", "x", "conversation.item.create"]
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(
    ["call_id", "name", "arguments", "delta", "sdp", "candidate", "sdpMLineIndex", "sdpMid",
     "content", "sessionId", "iceServers", "message", "id", "response_id", "item_id"]
)  # fmt: skip
_frame = st.fixed_dictionaries(
    {"type": st.sampled_from(_TYPES)},
    optional={"data": st.dictionaries(_keys, _json, max_size=6), "raw_data": _json},
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_frame | st.text(max_size=200) | st.binary(max_size=64), max_size=12))
def test_arbitrary_frames_never_raise(frames: list[Any]) -> None:
    p = NavTalkProtocol()
    for i, f in enumerate(frames):
        if isinstance(f, bytes):
            out = p.receive_bytes(f, float(i))
        else:
            out = p.receive_text(f if isinstance(f, str) else json.dumps(f), float(i))
        assert all(isinstance(e, ev.Event) for e in out)
        assert p.held_argument_chars <= MAX_TOTAL_ARGS_CHARS


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=5000))
def test_deep_nesting_is_malformed_not_a_crash(depth: int) -> None:
    (event,) = NavTalkProtocol().receive_text("[" * depth + "]" * depth, 0.0)
    assert isinstance(event, ev.Malformed)
