"""The emulator's conversation logic, sans I/O: client frames in, server frames and actions out."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from agent.emulator.brain import Brain, Phase
from agent.emulator.conformance import ViolationKind
from agent.emulator.faults import Faults
from agent.emulator.outputs import (
    CancelResponses,
    Close,
    Drop,
    Enqueue,
    Recognize,
    Report,
    Respond,
    Send,
    StartWebRtc,
)
from agent.emulator.script import Script, render
from agent.emulator.speech import response_frames
from agent.emulator.vad import VoiceDetector

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


def kinds(outputs: list[Any]) -> list[ViolationKind]:
    return [o.violation.kind for o in outputs if isinstance(o, Report)]


def test_order_violations_are_reported() -> None:
    b = Brain(SCRIPT)
    out = b.receive_text(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}}),
        0.0)  # fmt: skip
    assert kinds(out) == [ViolationKind.ITEM_BEFORE_CREATED]
    b.open(0.0)
    assert b.phase is Phase.CREATED
    audio = {"type": "realtime.input_audio_buffer.append", "data": {"audio": "AAAA"}}
    assert kinds(b.receive_text(json.dumps(audio), 0.01)) == [ViolationKind.AUDIO_BEFORE_UPDATED]
    assert b.stats.order_violations == [
        "conversation.item.create before realtime.session.created",
        "audio before realtime.session.updated",
    ]
    b.tick(1.0)
    assert b.phase is Phase.READY
    assert kinds(b.receive_text(json.dumps(audio), 1.1)) == []


def declare(b: Brain, now: float = 1.0) -> list[Any]:
    tools = [{"type": "function", "name": "get_current_time", "parameters": {}}]
    return b.receive_text(json.dumps({"type": "realtime.input_function_call",
                                      "data": {"content": json.dumps(tools)}}), now)  # fmt: skip


def test_tool_call_round_trip_with_data_and_raw_data() -> None:
    b = ready_brain()
    assert declare(b) == []
    out = b.receive_text(json.dumps({"type": "realtime.input_text",
                                     "data": {"content": "what time is it"}}), 1.0)  # fmt: skip
    (call,) = out
    assert isinstance(call, Enqueue) and b.response_active  # queued behind any speech
    assert [f["type"] for f in call.frames] == [
        "realtime.response.function_call_arguments.delta"
    ] * 2 + ["realtime.response.function_call_arguments.done"]
    done = call.frames[-1]
    call_id = done["data"]["call_id"]
    assert done["data"]["name"] == done["raw_data"]["name"] == "get_current_time"
    assert done["raw_data"]["call_id"] == call_id and done["raw_data"]["arguments"] == "{}"
    b.response_done(call.response_id, 1.05)
    item = {"type": "function_call_output", "call_id": call_id,
            "output": json.dumps({"human": "noon"})}  # fmt: skip
    assert b.receive_text(json.dumps({"type": "conversation.item.create", "item": item}), 1.1) == []
    (reply,) = b.receive_text(json.dumps({"type": "response.create"}), 1.1)
    assert isinstance(reply, Respond) and reply.text == "It is noon."


def tool_round_trip(output: object) -> str:
    b = ready_brain()
    declare(b)
    (call,) = b.receive_text(json.dumps({"type": "realtime.input_text",
                                         "data": {"content": "what time"}}), 1.0)  # fmt: skip
    assert isinstance(call, Enqueue)
    b.response_done(call.response_id, 1.0)
    call_id = call.frames[-1]["data"]["call_id"]
    item = {"type": "function_call_output", "call_id": call_id, "output": json.dumps(output)}
    b.receive_text(json.dumps({"type": "conversation.item.create", "item": item}), 1.1)
    (reply,) = b.receive_text(json.dumps({"type": "response.create"}), 1.1)
    assert isinstance(reply, Respond)
    return reply.text


def test_tool_reply_is_a_sentence_never_raw_json() -> None:
    assert tool_round_trip({"human": "Monday, 10:42"}) == "It is Monday, 10:42."
    # the template names a field the output lacks: a readable generic sentence
    text = tool_round_trip({"time": "10:42"})
    assert text == "The result is: time 10:42."
    text = tool_round_trip({"time": "10:42", "time_zone": "UTC", "parts": [1, 2]})
    assert text == "The result is: time 10:42, time zone UTC, parts 1, 2."
    assert "{" not in text and '"' not in text
    assert tool_round_trip({"error": {"message": "no clock"}}) == (
        "Sorry, that did not work: no clock"
    )


def test_tools_declared_twice_is_a_violation_but_a_new_catalog_is_not() -> None:
    b = ready_brain()
    assert kinds(declare(b)) == []
    assert kinds(declare(b, 1.5)) == [ViolationKind.TOOLS_DECLARED_TWICE]
    other = [{"type": "function", "name": "other", "parameters": {}}]
    out = b.receive_text(json.dumps({"type": "realtime.input_function_call",
                                     "data": {"content": json.dumps(other)}}), 2.0)  # fmt: skip
    assert kinds(out) == [] and b.stats.declared_tools == {"other"}


def test_response_create_while_active_gets_an_error_event() -> None:
    b = Brain(Script(greeting="Welcome.", fallback="Sorry?"))
    b.open(0.0)
    (updated, greeting) = b.tick(1.0)
    assert isinstance(greeting, Respond) and b.response_active
    # before any frame of the greeting is out, the client cannot know: refused, not flagged
    out = b.receive_text(json.dumps({"type": "response.create"}), 1.1)
    assert kinds(out) == [] and sent(out)[0]["type"] == "realtime.error"
    b.response_started(greeting.response_id, 1.2)
    out = b.receive_text(json.dumps({"type": "response.create"}), 1.5)  # in flight: a race
    assert kinds(out) == [] and sent(out)[0]["type"] == "realtime.error"
    out = b.receive_text(json.dumps({"type": "response.create"}), 2.2)  # a second after
    assert kinds(out) == [ViolationKind.RESPONSE_WHILE_ACTIVE]
    (error,) = sent(out)
    assert error["type"] == "realtime.error"
    assert error["data"]["code"] == "conversation_already_has_active_response"
    assert error["raw_data"]["type"] == "error"
    b.response_done(greeting.response_id, 3.0)
    (reply,) = b.receive_text(json.dumps({"type": "response.create"}), 3.1)
    assert isinstance(reply, Respond) and reply.text == "Sorry?"


def test_unanswered_offer_is_a_violation_after_the_deadline() -> None:
    b = Brain(SCRIPT, offer_deadline_s=3.0)
    b.open(0.0)
    b.tick(0.1)
    b.offer_sent(0.2)
    assert kinds(b.tick(3.1)) == []
    assert kinds(b.tick(3.3)) == [ViolationKind.OFFER_UNANSWERED]
    answered = Brain(SCRIPT)
    answered.open(0.0)
    answered.offer_sent(0.2)
    answer = {"type": "webrtc.signaling.answer",
              "data": {"sdp": {"type": "answer", "sdp": "v=0"}}}  # fmt: skip
    assert kinds(answered.receive_text(json.dumps(answer), 1.0)) == []
    assert kinds(answered.tick(4.0)) == []


def test_client_offer_while_server_offer_is_pending() -> None:
    b = ready_brain()
    b.offer_sent(1.0)
    offer = {"type": "webrtc.signaling.offer", "data": {"sdp": {"type": "offer", "sdp": "v=0"}}}
    out = b.receive_text(json.dumps(offer), 1.5)
    assert kinds(out) == [ViolationKind.CLIENT_OFFER_WHILE_OFFER_PENDING]


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


def voice_frames(seconds: float = 1.0) -> list[str]:
    import base64

    rng = np.random.default_rng(1)
    t = np.arange(int(24000 * seconds)) / 24000
    voice = 8000 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    voice_pcm = (voice + rng.normal(0, 500, t.size)).astype("<i2").tobytes()
    silence = bytes(24000 * 2)
    frames = []
    for pcm in (silence[:9600], voice_pcm, silence):
        for i in range(0, len(pcm), 3072):
            frames.append(json.dumps({"type": "realtime.input_audio_buffer.append",
                                      "data": {"audio": base64.b64encode(pcm[i:i + 3072])
                                               .decode()}}))  # fmt: skip
    return frames


def test_vad_then_recognition_then_the_answer() -> None:
    b = ready_brain()
    outs: list[Any] = []
    for frame in voice_frames():
        outs += b.receive_text(frame, 2.0)
    assert types(outs) == [
        "realtime.input_audio_buffer.speech_started",
        "realtime.input_audio_buffer.speech_stopped",
    ]
    (rec,) = [o for o in outs if isinstance(o, Recognize)]
    assert 0.9 * 48000 < len(rec.pcm) < 2.0 * 48000  # the voice, with its pre-roll
    out = b.recognized(rec.utterance_id, "Hello there", 2.5)
    assert types(out)[0] == "realtime.conversation.item.input_audio_transcription.completed"
    assert sent(out)[0]["data"]["content"] == "Hello there"
    assert isinstance(out[-1], Respond) and out[-1].text == "Hi."
    out = b.recognized(rec.utterance_id + 1, None, 3.0)  # nothing matched: the fallback
    assert isinstance(out[-1], Respond) and out[-1].text == "Sorry?"
    assert b.stats.recognized == [True, False]


def test_barge_in_sends_speech_started_before_cancelling() -> None:
    b = Brain(Script(greeting="Welcome to the hotel.", fallback="Sorry?"))
    b.open(0.0)
    b.tick(1.0)
    assert b.response_active
    outs: list[Any] = []
    for frame in voice_frames():
        outs += b.receive_text(frame, 2.0)
    started = next(i for i, o in enumerate(outs) if isinstance(o, Send))
    cancel = next(i for i, o in enumerate(outs) if isinstance(o, CancelResponses))
    assert sent(outs)[0]["type"] == "realtime.input_audio_buffer.speech_started"
    assert started < cancel and not b.response_active


def test_voice_detector_ignores_silence() -> None:
    assert VoiceDetector().feed(bytes(48000)) == []


def test_response_frames_pace_the_transcript_with_the_audio() -> None:
    pcm = bytes(24000 * 2)  # 1 s
    frames = response_frames("r1", "Hello there.", pcm)
    kinds_ = [f["type"] for _, f in frames]
    assert kinds_[0] == "realtime.response.audio_transcript.delta"
    assert kinds_[-2:] == ["realtime.response.audio_transcript.done",
                           "realtime.response.audio.done"]  # fmt: skip
    assert kinds_.count("realtime.response.audio.delta") == 10
    deltas = [(t, f) for t, f in frames if f["type"].endswith("audio_transcript.delta")]
    assert [f["data"]["content"] for _, f in deltas] == ["Hello ", "there."]
    assert deltas[1][0] == 0.5  # "there." starts half-way through the audio (by characters)
    second = kinds_.index("realtime.response.audio_transcript.delta", 1)
    assert kinds_[1:second].count("realtime.response.audio.delta") == 5  # not all up front
    times = [t for t, _ in frames]
    assert times == sorted(times) and abs(times[-1] - 1.0) < 1e-9


def test_render() -> None:
    ctx = {"output": {"a": {"b": 1}}, "args": {"name": "Smith"}}
    assert render("{output.a.b} {args.name} {unknown}", ctx) == "1 Smith {unknown}"
    assert render("{output}", ctx) == "a b 1"
    assert render("{output}", {"output": "plain"}) == "plain"


def test_default_script_loads() -> None:
    script = Script.load()
    assert script.greeting and len(script.hears) >= 4
    found = script.find("I have a reservation for Smith.")
    assert found is not None and found[0].tool == "lookup_reservation"
    assert found[1] == {"name": "Smith"}
    assert script.find("Goodbye.") is not None
