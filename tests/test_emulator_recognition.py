"""Real speech recognition in the emulator: espeak-ng speaks the guest's questions in a
shuffled order over a real WebSocket, and each gets the answer of the line actually said
(recognized, not counted); a question not in the script gets the fallback."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
from typing import Any

import pytest
from websockets.asyncio.client import connect

from agent.emulator.recognizer import GrammarRecognizer, OrderRecognizer
from agent.emulator.script import Script
from agent.emulator.server import Emulator
from agent.navtalk.settings import EmulatorSettings
from tests.audio_fixtures import make_speech

log = logging.getLogger(__name__)

LINES = [  # the demo's questions (config/scripts/demo.toml)
    "Hello, who are you?",
    "What time is it?",
    "I have a reservation for Smith.",
    "Tell me about the hotel.",
    "Where is the breakfast room?",
    "Thank you. Goodbye.",
]
OUTSIDE = "Can you open the window please?"  # no line says this
SCRIPT = Script.from_dict(
    {
        "greeting": "",
        "fallback": "Sorry, I did not get that.",
        "hears": LINES,
        "rules": [
            {"match": "who are you", "reply": "Answer one."},
            {"match": "what time", "reply": "Answer two."},
            {"match": "reservation", "reply": "Answer three."},
            {"match": "about the hotel", "reply": "Answer four."},
            {"match": "breakfast", "reply": "Answer five."},
            {"match": "goodbye", "reply": "Answer six."},
        ],
    }
)
ANSWERS = dict(zip(LINES, ("Answer one.", "Answer two.", "Answer three.", "Answer four.",
                           "Answer five.", "Answer six."), strict=True))  # fmt: skip
CHUNK = 3072  # bytes of PCM16 = 4096 base64 characters
TIMEOUT = 20.0


def appends(pcm: bytes) -> list[str]:
    return [
        json.dumps({"type": "realtime.input_audio_buffer.append",
                    "data": {"audio": base64.b64encode(pcm[i : i + CHUNK]).decode()}})
        for i in range(0, len(pcm), CHUNK)
    ]  # fmt: skip


async def ask(ws: Any, pcm: bytes) -> tuple[str, str]:
    """Speak ``pcm`` (then 1 s of silence); return (what the server heard, its answer)."""
    for frame in appends(bytes(9600) + pcm + bytes(48000)):
        await ws.send(frame)
    heard = answer = None
    async with asyncio.timeout(TIMEOUT):
        while answer is None:
            frame = json.loads(await ws.recv())
            kind = frame["type"]
            if kind == "realtime.conversation.item.input_audio_transcription.completed":
                heard = frame["data"]["content"]
            elif kind == "realtime.response.audio_transcript.done":
                answer = frame["data"]["content"]
    assert heard is not None
    return heard, answer


async def test_shuffled_questions_get_the_matching_answers() -> None:
    order = LINES[:]
    random.Random(11).shuffle(order)
    assert order != LINES
    order.insert(3, OUTSIDE)
    speech = {line: make_speech(line).pcm for line in order}  # espeak-ng, en-us, 160 wpm
    settings = EmulatorSettings(port=0, webrtc=False, strict_fail=True, recognizer="speech",
                                pace=20.0)  # fmt: skip
    async with Emulator(settings, script=SCRIPT) as emu:
        async with connect(f"{emu.base_url}?license=abc&name=Leo") as ws:
            async with asyncio.timeout(TIMEOUT):
                while json.loads(await ws.recv())["type"] != "realtime.session.updated":
                    pass
            results = [(line, *await ask(ws, speech[line])) for line in order]
        cpu_per_s = emu.recognition_cpu_s / emu.recognized_audio_s
        log.warning("recognition: %d utterances, %.1f s of audio, %.3f CPU s per audio s",
                    len(results), emu.recognized_audio_s, cpu_per_s)  # fmt: skip
        assert emu.violations == []
    for line, heard, answer in results:
        if line == OUTSIDE:
            assert heard.startswith("(unrecognised speech"), (line, heard)
            assert answer == SCRIPT.fallback
        else:
            assert (heard, answer) == (line, ANSWERS[line])
    assert cpu_per_s < 0.5  # pocketsphinx with a small grammar: a few % of a core


def test_grammar_recognizer_matches_partial_paths_only_when_unique() -> None:
    r = GrammarRecognizer(LINES + ["What is your name?", "Zyxqv is not a word."])
    assert r.skipped == ["Zyxqv is not a word."]  # not in the dictionary: never recognized
    assert r.match(("what", "time", "is", "it")) == "What time is it?"
    assert r.match(("what", "time")) == "What time is it?"  # lacks only short words
    assert r.match(("what",)) is None  # a prefix of two lines, and too short
    assert r.match(("where", "is", "the")) is None  # lacks "breakfast room"
    assert r.match(("i", "have", "a", "reservation", "for")) == "I have a reservation for Smith."
    assert r.match(("thank",)) is None
    assert r.match(()) is None


def test_silence_is_not_a_line() -> None:
    r = GrammarRecognizer(LINES)
    assert r.recognize(bytes(48000)) is None


def test_order_mode_is_explicit() -> None:
    r = OrderRecognizer(["a", "b"])
    assert [r.recognize(b""), r.recognize(b""), r.recognize(b"")] == ["a", "b", None]


@pytest.mark.parametrize("line", LINES)
def test_each_line_alone(line: str) -> None:
    assert GrammarRecognizer(LINES).recognize(make_speech(line).pcm) == line
