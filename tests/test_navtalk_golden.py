"""Golden tests: every frame the agent sends, field for field, against NAVTALK_PROTOCOL.md.

Each expected value is written out literally, with the source tag the protocol
document gives for that shape. Compared as parsed JSON (key order is free: the
vendor clients differ on it [wire]).
"""

from __future__ import annotations

import base64
import json

from agent.navtalk.protocol import NavTalkProtocol, SessionStatus, ToolDeclaration
from agent.navtalk.url import build_url


def ready() -> NavTalkProtocol:
    p = NavTalkProtocol()
    for i, t in enumerate(
        ("conversation.connected.success", "realtime.session.created", "realtime.session.updated")
    ):
        p.receive_text(json.dumps({"type": t, "data": {}}), now=float(i))
    assert p.state is SessionStatus.READY
    return p


def parsed(frames: str | list[str]) -> object:
    return [json.loads(f) for f in frames] if isinstance(frames, list) else json.loads(frames)


def test_audio_append() -> None:  # [seed][sdk][hotel]
    pcm = b"\x01\x00\xff\x7f"
    assert parsed(ready().audio_append(pcm)) == [
        {"type": "realtime.input_audio_buffer.append", "data": {"audio": "AQD/fw=="}}
    ]


def test_audio_chunking_matches_the_sdk_buffer() -> None:  # [wire]: 8192 samples -> 5x4096+1368
    frames = parsed(ready().audio_append(b"\x00\x00" * 8192))
    assert isinstance(frames, list)
    assert [len(f["data"]["audio"]) for f in frames] == [4096, 4096, 4096, 4096, 4096, 1368]


def test_history_item() -> None:  # [seed][sdk]
    assert parsed(ready().history_item("I booked a room")) == {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "I booked a room"}],
        },
    }


def test_text_turn() -> None:  # [hotel]: the same item, then response.create
    assert parsed(ready().text_turn("hello")) == [
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hello"}],
            },
        },
        {"type": "response.create"},
    ]


def test_input_text_inferred_payload() -> None:
    # [seed] names the type; NO client shows the payload. INFERRED: {"data": {"content": T}}.
    assert parsed(ready().input_text("hello")) == {
        "type": "realtime.input_text",
        "data": {"content": "hello"},
    }


def test_input_image() -> None:  # [samples: Android, Flutter, React Native]
    jpeg = b"\xff\xd8\xff\xe0JFIF"
    b64 = base64.b64encode(jpeg).decode()
    assert parsed(ready().input_image(jpeg, reply=True)) == {
        "type": "realtime.input_image",
        "data": {"content": "data:image/jpeg;base64," + b64, "reply": 1},
    }
    assert parsed(ready().input_image(jpeg, reply=False)) == {
        "type": "realtime.input_image",
        "data": {"content": "data:image/jpeg;base64," + b64, "reply": 0},
    }


TIME_TOOL = ToolDeclaration(
    name="get_current_time",
    description="The current local time",
    parameters={"type": "object", "properties": {}, "required": []},
)
RES_TOOL = ToolDeclaration(
    name="lookup_reservation",
    description="Find a reservation by guest name",
    parameters={
        "type": "object",
        "properties": {"name": {"type": "string", "description": "guest name"}},
        "required": ["name"],
    },
)


def test_tool_declaration() -> None:  # [sdk][ios]: data.content is a JSON *string*
    frame = parsed(NavTalkProtocol().declare_tools([TIME_TOOL, RES_TOOL]))
    assert isinstance(frame, dict)
    assert frame["type"] == "realtime.input_function_call"
    assert set(frame) == {"type", "data"} and set(frame["data"]) == {"content"}
    assert isinstance(frame["data"]["content"], str)
    assert json.loads(frame["data"]["content"]) == [
        {
            "type": "function",
            "name": "get_current_time",
            "description": "The current local time",
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
        {
            "type": "function",
            "name": "lookup_reservation",
            "description": "Find a reservation by guest name",
            "parameters": {
                "type": "object",
                "properties": {"name": {"type": "string", "description": "guest name"}},
                "required": ["name"],
            },
        },
    ]


def test_session_update() -> None:  # [hotel] (optional, off by default)
    assert parsed(ready().session_update([TIME_TOOL])) == {
        "type": "session.update",
        "session": {
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 600,
            },
            "tools": [
                {
                    "type": "function",
                    "name": "get_current_time",
                    "description": "The current local time",
                    "parameters": {"type": "object", "properties": {}, "required": []},
                }
            ],
        },
    }


def test_function_call_output() -> None:  # [hotel][samples v1 too]
    assert parsed(ready().function_call_output("call_1", '{"time": "12:00"}')) == [
        {
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": "call_1",
                "output": '{"time": "12:00"}',
            },
        },
        {"type": "response.create"},
    ]


def test_webrtc_answer() -> None:  # [sdk][hotel]
    assert parsed(ready().webrtc_answer("v=0\r\n")) == {
        "type": "webrtc.signaling.answer",
        "data": {"sdp": {"type": "answer", "sdp": "v=0\r\n"}},
    }


def test_webrtc_offer() -> None:  # [hotel] renegotiation
    assert parsed(ready().webrtc_offer("v=0\r\n")) == {
        "type": "webrtc.signaling.offer",
        "data": {"sdp": {"type": "offer", "sdp": "v=0\r\n"}},
    }


def test_ice_candidate() -> None:  # [sdk][hotel]; [ios] sends sdpMid "" when absent
    cand = "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"
    assert parsed(ready().ice_candidate(cand, "0", 0)) == {
        "type": "webrtc.signaling.iceCandidate",
        "data": {"candidate": {"candidate": cand, "sdpMid": "0", "sdpMLineIndex": 0}},
    }
    assert parsed(ready().ice_candidate(cand, None, 1)) == {
        "type": "webrtc.signaling.iceCandidate",
        "data": {"candidate": {"candidate": cand, "sdpMid": "", "sdpMLineIndex": 1}},
    }


def test_url() -> None:  # [seed]: license + name or avatarId (avatarId wins); [hotel]: model
    base = "wss://transfer.navtalk.ai/wss/v2/realtime-chat"
    assert build_url(base, "L1", name="navtalk.Leo") == f"{base}?license=L1&name=navtalk.Leo"
    assert (
        build_url(base, "L1", name="navtalk.Leo", avatar_id="A9")
        == f"{base}?license=L1&avatarId=A9"
    )
    assert (
        build_url(base, "L1", name="navtalk.Leo", model="gpt-realtime")
        == f"{base}?license=L1&name=navtalk.Leo&model=gpt-realtime"
    )
