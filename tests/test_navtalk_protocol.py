"""The sans-I/O NavTalk core: recorded server frames in, typed events and state out."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from agent.errors import ProtocolError
from agent.navtalk import events as ev
from agent.navtalk.protocol import (
    AUDIO_CHUNK_BYTES,
    MAX_AUDIO_B64_CHARS,
    NavTalkProtocol,
    SessionStatus,
    field,
)

FRAMES = Path(__file__).parent / "fixtures" / "navtalk" / "server_frames.jsonl"


def recorded() -> list[str]:
    return [line for line in FRAMES.read_text().splitlines() if line.strip()]


def feed(proto: NavTalkProtocol, *frames: dict[str, object] | str) -> list[ev.Event]:
    out: list[ev.Event] = []
    for i, f in enumerate(frames):
        out += proto.receive_text(f if isinstance(f, str) else json.dumps(f), now=float(i))
    return out


def ready_protocol() -> NavTalkProtocol:
    p = NavTalkProtocol()
    feed(
        p,
        {"type": "conversation.connected.success", "data": {"sessionId": "s"}},
        {"type": "realtime.session.created"},
        {"type": "realtime.session.updated"},
    )
    assert p.state is SessionStatus.READY
    return p


def test_recorded_session_parses_in_order() -> None:
    p = NavTalkProtocol()
    events = []
    states = []
    for i, line in enumerate(recorded()):
        events += p.receive_text(line, now=float(i))
        states.append(p.state)
    assert [type(e) for e in events] == [
        ev.ConnectedSuccess,
        ev.ConnectedWarning,
        ev.SessionCreated,
        ev.SessionUpdated,
        ev.RtcOffer,
        ev.RtcIceCandidate,
        ev.SpeechStarted,
        ev.SpeechStopped,
        ev.InputTranscriptionCompleted,
        ev.FunctionCallArgumentsDelta,
        ev.FunctionCallArgumentsDelta,
        ev.FunctionCallDone,
        ev.TranscriptDelta,
        ev.TranscriptDelta,
        ev.AudioDelta,
        ev.TranscriptDone,
        ev.AudioDone,
        ev.ConnectedClose,
    ]
    assert states[0] is SessionStatus.CONNECTED
    assert states[2] is SessionStatus.CREATED
    assert states[3] is SessionStatus.READY
    assert states[-1] is SessionStatus.CLOSED
    success = events[0]
    assert isinstance(success, ev.ConnectedSuccess)
    assert success.session_id == "sess-1" == p.session_id
    assert success.ice_servers == (
        ev.IceServerInfo(urls=("stun:stun.example.org:3478",)),
        ev.IceServerInfo(
            urls=("turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"),
            username="u1",
            credential="c1",
        ),
    )
    warning = events[1]
    assert isinstance(warning, ev.ConnectedWarning)
    assert warning.avatar_id == "av-42" and "Multiple avatars" in warning.message
    offer = events[4]
    assert isinstance(offer, ev.RtcOffer) and offer.sdp.startswith("v=0")
    assert events[5] == ev.RtcIceCandidate(
        candidate="candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host",
        sdp_mid="0",
        sdp_mline_index=0,
    )
    assert events[8] == ev.InputTranscriptionCompleted(content="What time is it?", item_id="item-1")
    # the done event had empty arguments: the accumulated deltas are used [hotel]
    assert events[11] == ev.FunctionCallDone(
        call_id="call-1", name="get_current_time", arguments='{"tz":"UTC"}'
    )
    assert events[12] == ev.TranscriptDelta(response_id="resp-2", content="It is ")
    assert events[14] == ev.AudioDelta(pcm=b"\x00\x00\x01\x00\x02\x00")
    assert events[15] == ev.TranscriptDone(response_id="resp-2", content="It is noon.")
    assert events[17] == ev.ConnectedClose(message="Session closed")


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            {"type": "conversation.connected.fail", "message": "license invalid"},
            ev.ConnectedFail(message="license invalid"),
        ),
        (
            {"type": "conversation.connected.fail", "data": {"message": "nope"}},
            ev.ConnectedFail(message="nope"),
        ),
        (
            {"type": "conversation.connected.close", "data": {"message": "bye"}},
            ev.ConnectedClose(message="bye"),
        ),
        ({"type": "conversation.connected.insufficient_balance"}, ev.InsufficientBalance()),
        (
            {
                "type": "conversation.connected.insufficient_balance",
                "message": "Insufficient points",
            },
            ev.InsufficientBalance(message="Insufficient points"),
        ),
        (
            {"type": "conversation.connected.warning", "message": "dup, using av-1"},
            ev.ConnectedWarning(message="dup, using av-1"),
        ),
        (
            {
                "type": "webrtc.signaling.answer",
                "data": {"sdp": {"sdp": "v=0 a", "type": "answer"}},
            },
            ev.RtcAnswer(sdp="v=0 a"),
        ),
        (
            {"type": "webrtc.signaling.iceCandidate", "data": {"candidate": {"candidate": "c"}}},
            ev.RtcIceCandidate(candidate="c"),
        ),
        ({"type": "realtime.response.audio.done"}, ev.AudioDone()),
    ],
)
def test_each_event_type(frame: dict[str, object], expected: ev.Event) -> None:
    assert feed(NavTalkProtocol(), frame) == [expected]


def test_every_known_type_has_a_frame_in_the_tests() -> None:
    seen = {json.loads(line)["type"] for line in recorded()}
    seen |= {
        "conversation.connected.fail",
        "conversation.connected.insufficient_balance",
        "webrtc.signaling.answer",
    }
    assert seen == set(ev.EVENT_TYPES)


# --- the three field placements [ios][seed][wire] ----------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "realtime.response.audio.delta", "data": {"delta": "AQID"}},  # [seed]
        {"type": "realtime.response.audio.delta", "raw_data": {"delta": "AQID"}},
        {"type": "realtime.response.audio.delta", "delta": "AQID"},  # [ios]
    ],
)
def test_audio_delta_in_data_raw_data_or_top_level(frame: dict[str, object]) -> None:
    assert feed(NavTalkProtocol(), frame) == [ev.AudioDelta(pcm=b"\x01\x02\x03")]


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "conversation.connected.success", "data": {"sessionId": "S"}},
        {"type": "conversation.connected.success", "raw_data": {"sessionId": "S"}},
        {"type": "conversation.connected.success", "session_id": "S"},  # [ios] fallback
    ],
)
def test_session_id_placements(frame: dict[str, object]) -> None:
    (event,) = feed(NavTalkProtocol(), frame)
    assert isinstance(event, ev.ConnectedSuccess) and event.session_id == "S"


@pytest.mark.parametrize(
    "frame",
    [
        {
            "type": "realtime.response.function_call_arguments.done",
            "data": {"call_id": "c", "name": "f", "arguments": "{}"},
        },  # [hotel]
        {
            "type": "realtime.response.function_call_arguments.done",  # [ios] captured frame
            "data": {"arguments": "{}"},
            "raw_data": {
                "call_id": "c",
                "name": "f",
                "arguments": "{}",
                "item_id": "i",
                "response_id": "r",
                "event_id": "e",
                "output_index": 0,
            },
        },
        {
            "type": "realtime.response.function_call_arguments.done",
            "call_id": "c",
            "name": "f",
            "arguments": "{}",
        },
    ],
)
def test_function_call_placements(frame: dict[str, object]) -> None:
    assert feed(NavTalkProtocol(), frame) == [
        ev.FunctionCallDone(call_id="c", name="f", arguments="{}")
    ]


def test_data_wins_over_raw_data_over_top_level() -> None:
    frame = {"data": {"x": 1}, "raw_data": {"x": 2, "y": 2}, "x": 3, "y": 3, "z": 3}
    assert (field(frame, "x"), field(frame, "y"), field(frame, "z")) == (1, 2, 3)
    assert field(frame, "missing", "d") == "d"


def test_done_with_arguments_ignores_deltas_and_clears_them() -> None:
    p = NavTalkProtocol()
    delta = {
        "type": "realtime.response.function_call_arguments.delta",
        "data": {"call_id": "a", "delta": '{"x":'},
    }
    done = {
        "type": "realtime.response.function_call_arguments.done",
        "data": {"call_id": "a", "name": "f", "arguments": '{"y":2}'},
    }
    assert feed(p, delta, done)[-1] == ev.FunctionCallDone(
        call_id="a", name="f", arguments='{"y":2}'
    )
    empty_done = {
        "type": "realtime.response.function_call_arguments.done",
        "data": {"call_id": "a", "name": "f", "arguments": ""},
    }
    assert feed(p, empty_done)[-1] == ev.FunctionCallDone(call_id="a", name="f", arguments="")


def test_deltas_are_kept_apart_per_call_id() -> None:
    p = NavTalkProtocol()

    def d(cid: str, s: str) -> dict[str, object]:
        return {
            "type": "realtime.response.function_call_arguments.delta",
            "data": {"call_id": cid, "delta": s},
        }

    def done(cid: str) -> dict[str, object]:
        return {
            "type": "realtime.response.function_call_arguments.done",
            "data": {"call_id": cid, "name": "n"},
        }

    out = feed(p, d("a", "[1,"), d("b", "[9]"), d("a", "2]"), done("a"), done("b"))
    assert out[-2:] == [
        ev.FunctionCallDone(call_id="a", name="n", arguments="[1,2]"),
        ev.FunctionCallDone(call_id="b", name="n", arguments="[9]"),
    ]


# --- malformed and unknown ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"hello"', "not a JSON object"),
        ('{"data": {}}', "no type"),
        ('{"type": 5}', "no type"),
        ('{"type": "realtime.response.audio.delta", "data": {"delta": "@@@"}}', "not base64"),
        ('{"type": "realtime.response.audio.delta", "data": {}}', "without a base64"),
        (
            '{"type": "realtime.response.function_call_arguments.done", "data": {"name": "f"}}',
            "without call_id",
        ),
        (
            '{"type": "webrtc.signaling.offer", "data": {"sdp": {"type": "offer"}}}',
            "without an sdp",
        ),
        ('{"type": "webrtc.signaling.iceCandidate", "data": {}}', "without a candidate"),
    ],
)
def test_malformed_frames_become_events(text: str, reason: str) -> None:
    (event,) = NavTalkProtocol().receive_text(text, now=0.0)
    assert isinstance(event, ev.Malformed)
    assert reason in event.reason


def test_malformed_excerpt_is_redacted() -> None:
    from agent.navtalk.url import register_secret

    register_secret("LIC-SECRET-123")
    (event,) = NavTalkProtocol().receive_text('{oops "LIC-SECRET-123"', now=0.0)
    assert isinstance(event, ev.Malformed) and "LIC-SECRET-123" not in event.excerpt


def test_unknown_types_are_events_not_errors() -> None:
    p = ready_protocol()
    frame = {"type": "realtime.response.done", "data": {"id": "r"}}
    assert feed(p, frame) == [ev.Unknown(type="realtime.response.done", frame=frame)]
    # un-prefixed OpenAI names are unknown too [wire] and do not change the state
    assert isinstance(feed(p, {"type": "session.created"})[0], ev.Unknown)
    assert p.state is SessionStatus.READY


def test_binary_frames_report_their_size() -> None:
    assert NavTalkProtocol().receive_bytes(b"\x00" * 10, now=0.0) == [ev.BinaryFrame(size=10)]


# --- state and ordering rules -------------------------------------------------------------------


def test_history_only_after_session_created() -> None:
    p = NavTalkProtocol()
    with pytest.raises(ProtocolError):
        p.history_item("hi")
    feed(p, {"type": "conversation.connected.success", "data": {"sessionId": "s"}})
    assert p.state is SessionStatus.CONNECTED
    with pytest.raises(ProtocolError):
        p.history_item("hi")
    feed(p, {"type": "realtime.session.created"})
    assert p.can_send_items and not p.can_send_audio
    assert json.loads(p.history_item("hi"))["type"] == "conversation.item.create"


def test_audio_only_after_session_updated() -> None:
    p = NavTalkProtocol()
    feed(p, {"type": "conversation.connected.success"}, {"type": "realtime.session.created"})
    with pytest.raises(ProtocolError, match="audio"):
        p.audio_append(b"\x00\x00")
    feed(p, {"type": "realtime.session.updated"})
    assert p.can_send_audio
    assert len(p.audio_append(b"\x00\x00")) == 1


def test_nothing_after_close_and_failures_close() -> None:
    for closing in (
        "conversation.connected.fail",
        "conversation.connected.close",
        "conversation.connected.insufficient_balance",
    ):
        p = ready_protocol()
        feed(p, {"type": closing})
        assert p.state is SessionStatus.CLOSED
        with pytest.raises(ProtocolError):
            p.audio_append(b"\x00\x00")
        with pytest.raises(ProtocolError):
            p.webrtc_answer("v=0")
    p = ready_protocol()
    p.connection_lost(now=9.0)
    assert p.state is SessionStatus.CLOSED and p.state_since == 9.0
    feed(p, {"type": "realtime.session.updated"})  # a late event does not reopen it
    assert p.state is SessionStatus.CLOSED


def test_tool_declaration_allowed_before_any_server_event() -> None:
    p = NavTalkProtocol()
    assert p.state is SessionStatus.CONNECTING
    assert json.loads(p.declare_tools([]))["type"] == "realtime.input_function_call"


def test_audio_chunks_are_whole_base64_at_most_4096_chars() -> None:
    p = ready_protocol()
    pcm = bytes(range(256)) * 40  # 10240 bytes
    frames = [json.loads(f) for f in p.audio_append(pcm)]
    chunks = [f["data"]["audio"] for f in frames]
    assert [len(c) for c in chunks] == [4096, 4096, 4096, 1368]
    assert all(len(c) <= MAX_AUDIO_B64_CHARS for c in chunks)
    decoded = [base64.b64decode(c, validate=True) for c in chunks]  # each decodes alone
    assert [len(d) for d in decoded] == [AUDIO_CHUNK_BYTES] * 3 + [1024]
    assert b"".join(decoded) == pcm
    with pytest.raises(ProtocolError, match="whole samples"):
        p.audio_append(b"\x00")
    assert p.audio_append(b"") == []


def test_response_create_waits_for_the_response_in_flight() -> None:
    """A typed turn or a tool output during a response: the item goes at once, the one
    response.create after the response ends (the strict emulator, like OpenAI, refuses a
    second active response)."""
    proto = ready_protocol()
    feed(proto, {"type": "realtime.response.audio_transcript.delta", "data": {"content": "Hi"}})
    sent = proto.text_turn("What time is it?")
    assert [json.loads(f)["type"] for f in sent] == ["conversation.item.create"]
    assert proto.function_call_output("c1", "{}")[-1].find("response.create") == -1
    assert proto.deferred_frames() == []  # still speaking
    feed(proto, {"type": "realtime.response.audio.done", "data": {}})
    assert [json.loads(f)["type"] for f in proto.deferred_frames()] == ["response.create"]
    assert proto.deferred_frames() == []  # two wishes, one response
    # idle: at once
    assert [json.loads(f)["type"] for f in proto.text_turn("Hello")][-1] == "response.create"
    # a function call's response ends with its arguments.done
    feed(proto, {"type": "realtime.response.function_call_arguments.delta",
                 "data": {"call_id": "c2", "delta": "{"}})  # fmt: skip
    assert len(proto.function_call_output("c1", "{}")) == 1
    feed(proto, {"type": "realtime.response.function_call_arguments.done",
                 "data": {"call_id": "c2", "name": "t", "arguments": "{}"}})  # fmt: skip
    assert [json.loads(f)["type"] for f in proto.deferred_frames()] == ["response.create"]


def test_a_refused_response_create_is_asked_again_after_the_active_response() -> None:
    """The greeting starts as the guest types: the server refuses our response.create
    (OpenAI's error shape, which the strict emulator mirrors); the client asks again once
    the response it raced has ended."""
    proto = ready_protocol()
    assert proto.text_turn("Hello")[-1].find("response.create") > 0
    error = {"type": "realtime.error",
             "data": {"code": "conversation_already_has_active_response"}}  # fmt: skip
    (unknown,) = feed(proto, error)
    assert isinstance(unknown, ev.Unknown)
    assert proto.deferred_frames() == []
    feed(proto, {"type": "realtime.response.audio_transcript.delta", "data": {"content": "W"}})
    feed(proto, {"type": "realtime.response.audio.done", "data": {}})
    assert [json.loads(f)["type"] for f in proto.deferred_frames()] == ["response.create"]
