"""The emulator's conversation logic, sans I/O: client frames in, server frames and actions out."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from agent.emulator.brain import (
    Brain,
    CancelResponses,
    Close,
    Drop,
    Faults,
    Respond,
    Script,
    Send,
    StartWebRtc,
    VoiceDetector,
    render,
)

SCRIPT = Script.from_dict(
    {
        "greeting": "",
        "fallback": "Sorry?",
        "hears": ["What time is it?"],
        "rules": [
            {"match": "what time", "tool": "get_current_time", "reply": "It is {output.human}."},
            {"match": "hello", "reply": "Hi."},
        ],
    }
)


def sent(outputs: list[Any]) -> list[Any]:
    return [o.frame for o in outputs if isinstance(o, Send)]


def types(outputs: list[Any]) -> list[str]:
    return [f["type"] if isinstance(f, dict) else "(raw)" for f in sent(outputs)]


def ready_brain(**kw: Any) -> Brain:
    b = Brain(SCRIPT, **kw)
    b.open(0.0)
    b.tick(1.0)
    return b


def test_open_sends_events_in_the_real_order() -> None:
    b = Brain(SCRIPT, faults=Faults(duplicate_name=True))
    out = b.open(0.0)
    assert types(out) == [
        "conversation.connected.success",
        "conversation.connected.warning",
        "realtime.session.created",
    ]
    assert any(isinstance(o, StartWebRtc) for o in out)
    warning = sent(out)[1]
    assert warning["data"]["avatarId"] and "message" in warning
    assert b.tick(0.01) == [] and b.next_timer() is not None
    assert types(b.tick(1.0)) == ["realtime.session.updated"]


def test_license_faults() -> None:
    out = Brain(SCRIPT, faults=Faults().with_license("x-reject-y")).open(0.0)
    assert types(out) == ["conversation.connected.fail"] and isinstance(out[-1], Close)
    out = Brain(SCRIPT, faults=Faults().with_license("nobalance")).open(0.0)
    assert types(out) == ["conversation.connected.insufficient_balance"]
    assert isinstance(out[-1], Close) and out[-1].reason == "Insufficient points"
    assert Faults().with_license("a-drop2.5-b").drop_after_s == 2.5
    b = Brain(SCRIPT, faults=Faults(drop_after_s=2.0))
    b.open(0.0)
    b.tick(1.0)
    assert any(isinstance(o, Drop) for o in b.tick(2.0))
    assert types(Brain(SCRIPT).open(0.0, license_given=False)) == ["conversation.connected.fail"]


def test_malformed_fault_sends_bad_frames_after_updated() -> None:
    b = Brain(SCRIPT, faults=Faults(malformed=True))
    b.open(0.0)
    frames = sent(b.tick(1.0))
    assert "{this is not json" in frames
    assert any(isinstance(f, dict) and f.get("type") == "realtime.emulator.unknown_event"
               for f in frames)  # fmt: skip


def test_order_violations_are_recorded() -> None:
    b = Brain(SCRIPT)
    b.receive_text(json.dumps({"type": "conversation.item.create", "item": {}}), 0.0)
    b.open(0.0)
    audio = {"type": "realtime.input_audio_buffer.append", "data": {"audio": "AAAA"}}
    b.receive_text(json.dumps(audio), 0.01)  # before session.updated
    assert b.stats.order_violations == [
        "conversation.item.create before realtime.session.created",
        "audio before realtime.session.updated",
    ]


def test_tool_call_round_trip_with_data_and_raw_data() -> None:
    b = ready_brain()
    tools = [{"type": "function", "name": "get_current_time", "parameters": {}}]
    b.receive_text(json.dumps({"type": "realtime.input_function_call",
                               "data": {"content": json.dumps(tools)}}), 1.0)  # fmt: skip
    out = b.receive_text(json.dumps({"type": "realtime.input_text",
                                     "data": {"content": "what time is it"}}), 1.0)  # fmt: skip
    assert types(out) == ["realtime.response.function_call_arguments.delta"] * 2 + [
        "realtime.response.function_call_arguments.done"
    ]
    done = sent(out)[-1]
    call_id = done["data"]["call_id"]
    assert done["data"]["name"] == done["raw_data"]["name"] == "get_current_time"
    assert done["raw_data"]["call_id"] == call_id and done["raw_data"]["arguments"] == "{}"
    item = {"type": "function_call_output", "call_id": call_id,
            "output": json.dumps({"human": "noon"})}  # fmt: skip
    assert b.receive_text(json.dumps({"type": "conversation.item.create", "item": item}), 1.1) == []
    (reply,) = b.receive_text(json.dumps({"type": "response.create"}), 1.1)
    assert isinstance(reply, Respond) and reply.text == "It is noon."


def test_undeclared_tool_is_not_called() -> None:
    b = ready_brain()
    (reply,) = b.receive_text(json.dumps({"type": "realtime.input_text",
                                          "data": {"content": "What time?"}}), 1.0)  # fmt: skip
    assert isinstance(reply, Respond) and reply.text == "I cannot do that."  # no_tool_reply


def test_session_update_declares_tools_too() -> None:
    b = ready_brain()
    update = {"type": "session.update", "session": {"tools": [{"name": "get_current_time"}]}}
    b.receive_text(json.dumps(update), 1.0)
    assert b.stats.declared_tools == {"get_current_time"}


def test_history_items_are_not_answered_until_response_create() -> None:
    b = ready_brain()
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}
    assert b.receive_text(json.dumps({"type": "conversation.item.create", "item": item}), 1) == []
    assert b.stats.history == ["hello"]
    (reply,) = b.receive_text(json.dumps({"type": "response.create"}), 1.0)
    assert isinstance(reply, Respond) and reply.text == "Hi."


def test_vad_and_scripted_transcription() -> None:
    b = ready_brain()
    rng = np.random.default_rng(1)
    t = np.arange(24000) / 24000
    voice = 8000 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    voice = (voice + rng.normal(0, 500, t.size)).astype("<i2").tobytes()
    silence = bytes(24000 * 2)
    outs: list[Any] = []
    for pcm in (silence[:9600], voice, silence):
        for i in range(0, len(pcm), 3072):
            import base64

            frame = {"type": "realtime.input_audio_buffer.append",
                     "data": {"audio": base64.b64encode(pcm[i:i + 3072]).decode()}}  # fmt: skip
            outs += b.receive_text(json.dumps(frame), 2.0)
    ts = types(outs)
    assert ts[:3] == [
        "realtime.input_audio_buffer.speech_started",
        "realtime.input_audio_buffer.speech_stopped",
        "realtime.conversation.item.input_audio_transcription.completed",
    ]
    assert any(isinstance(o, CancelResponses) for o in outs)  # barge-in
    assert sent(outs)[2]["data"]["content"] == "What time is it?"


def test_voice_detector_ignores_silence() -> None:
    assert VoiceDetector().feed(bytes(48000)) == []


def test_response_frames_order_and_pacing() -> None:
    pcm = bytes(24000 * 2)  # 1 s
    frames = Brain.response_frames("r1", "Hello there.", pcm)
    kinds = [f["type"] for _, f in frames]
    assert kinds == ["realtime.response.audio_transcript.delta"] * 2 + [
        "realtime.response.audio.delta"
    ] * 10 + ["realtime.response.audio_transcript.done", "realtime.response.audio.done"]
    times = [t for t, _ in frames]
    assert times == sorted(times) and abs(times[-1] - 1.0) < 1e-9
    assert frames[0][1]["data"] == {"id": "r1", "content": "Hello "}


def test_render() -> None:
    ctx = {"output": {"a": {"b": 1}}, "args": {"name": "Smith"}}
    assert render("{output.a.b} {args.name} {unknown} {output.x}", ctx) == (
        '1 Smith {unknown} {"a": {"b": 1}}'
    )
    assert render("{output}", {"output": "plain"}) == "plain"


def test_default_script_loads() -> None:
    script = Script.load()
    assert script.greeting and len(script.hears) >= 4
    found = script.find("I have a reservation under the name Smith.")
    assert found is not None and found[0].tool == "lookup_reservation"
    assert found[1] == {"name": "Smith"}
    assert script.find("Goodbye.") is not None
