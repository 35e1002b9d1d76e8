"""VAD turn logic on real speech (espeak-ng, generated at test time), silence and noise."""

from __future__ import annotations

import numpy as np
import pytest

from agent.audio.vad import VadEvent, VoiceActivityDetector
from tests.audio_fixtures import Int16Array, make_speech

RATE = 24_000
FRAME = 480  # 20 ms
T0_NS = 5_000_000_000  # an arbitrary capture clock origin
TOLERANCE_MS = 60


def _noise(n: int, rms: float, seed: int = 0) -> Int16Array:
    return np.random.default_rng(seed).normal(0, rms, n).astype(np.int16)


def _ns_of(sample: int) -> int:
    return T0_NS + sample * 1_000_000_000 // RATE


def _run(vad: VoiceActivityDetector, x: Int16Array) -> list[VadEvent]:
    events: list[VadEvent] = []
    for i in range(0, len(x) - FRAME + 1, FRAME):
        events += vad.feed(x[i : i + FRAME].astype("<i2").tobytes(), _ns_of(i))
    return events


def _ms(ns: int) -> float:
    return ns / 1e6


SENTENCES = ["Hello, I would like to check in please.", "Where is the elevator?", "Good morning."]


@pytest.mark.parametrize("text", SENTENCES)
@pytest.mark.parametrize("aggressiveness", [2, 3])
@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("floor_rms", [0.0, 100.0])
def test_onset_and_offset_within_60ms_of_labels(
    text: str, aggressiveness: int, frame_ms: int, floor_rms: float
) -> None:
    """Silence + speech + silence; the labels are where the clip's own energy envelope says
    the voice starts and ends (10 ms windows within 35 dB of the loudest)."""
    clip = make_speech(text)
    lead, tail = RATE, RATE  # 1 s before, 1 s after
    x = np.concatenate([np.zeros(lead, np.int16), clip.samples, np.zeros(tail, np.int16)])
    if floor_rms:
        x = np.clip(x.astype(np.int32) + _noise(len(x), floor_rms), -32768, 32767).astype(np.int16)
    onset_label = _ns_of(lead + clip.voice_start)
    offset_label = _ns_of(lead + clip.voice_end)

    vad = VoiceActivityDetector(
        aggressiveness=aggressiveness, frame_ms=frame_ms, start_ms=60, stop_ms=300
    )
    events = _run(vad, x)

    assert [e.speaking for e in events] == [True, False], events
    onset, offset = events
    assert abs(_ms(onset.at_mono_ns - onset_label)) <= TOLERANCE_MS, (
        f"onset {_ms(onset.at_mono_ns - onset_label):+.1f} ms from the label"
    )
    assert abs(_ms(offset.at_mono_ns - offset_label)) <= TOLERANCE_MS, (
        f"offset {_ms(offset.at_mono_ns - offset_label):+.1f} ms from the label"
    )
    # The decision comes after the boundary, by the hangover.
    assert onset.decided_mono_ns - onset.at_mono_ns >= 60_000_000
    assert offset.decided_mono_ns - offset.at_mono_ns >= 300_000_000


def test_two_utterances_give_two_turns() -> None:
    a = make_speech("Good morning.")
    b = make_speech("Where is the elevator?")
    gap = RATE  # 1 s of silence between them: longer than the stop hangover
    x = np.concatenate(
        [np.zeros(RATE // 2, np.int16), a.samples, np.zeros(gap, np.int16), b.samples,
         np.zeros(RATE, np.int16)]
    )  # fmt: skip
    vad = VoiceActivityDetector(aggressiveness=2, start_ms=60, stop_ms=300)
    events = _run(vad, x)
    assert [e.speaking for e in events] == [True, False, True, False], events
    b_onset = _ns_of(RATE // 2 + len(a.samples) + gap + b.voice_start)
    assert abs(_ms(events[2].at_mono_ns - b_onset)) <= TOLERANCE_MS


@pytest.mark.parametrize(
    "name,signal",
    [
        ("digital silence", np.zeros(3 * RATE, np.int16)),
        ("white noise rms 300", _noise(3 * RATE, 300.0)),
        ("white noise rms 1000", _noise(3 * RATE, 1000.0, seed=1)),
    ],
)
def test_silence_and_noise_never_start_a_turn(name: str, signal: Int16Array) -> None:
    vad = VoiceActivityDetector(aggressiveness=3, start_ms=60, stop_ms=300)
    assert _run(vad, signal) == [], name


def test_start_hangover_rejects_a_click() -> None:
    """A 40 ms burst (webrtcvad flags it for up to 120 ms with its overhang) does not last a
    150 ms start hangover: no turn; with no start hangover, it is one."""
    clip = make_speech("Hello, I would like to check in please.")
    burst = clip.samples[clip.voice_start + 4800 : clip.voice_start + 4800 + 960]
    x = np.concatenate([np.zeros(RATE, np.int16), burst, np.zeros(RATE, np.int16)])
    vad = VoiceActivityDetector(aggressiveness=2, start_ms=150, stop_ms=300)
    assert _run(vad, x) == []
    vad0 = VoiceActivityDetector(aggressiveness=2, start_ms=0, stop_ms=300)
    assert [e.speaking for e in _run(vad0, x)] == [True, False]


def test_force_silent_ends_a_turn() -> None:
    speech_clip = make_speech(SENTENCES[0])
    vad = VoiceActivityDetector(aggressiveness=2, start_ms=60, stop_ms=300)
    x = np.concatenate([np.zeros(RATE // 2, np.int16), speech_clip.samples])
    half = RATE // 2 + speech_clip.voice_start + RATE // 2
    half -= half % FRAME
    events = _run(vad, x[:half])
    assert [e.speaking for e in events] == [True]
    gate = vad.force_silent(_ns_of(half))
    assert gate is not None and not gate.speaking and gate.at_mono_ns == _ns_of(half)
    assert vad.force_silent(_ns_of(half)) is None


def test_frame_length_is_checked() -> None:
    with pytest.raises(ValueError, match="10, 20 or 30"):
        VoiceActivityDetector(frame_ms=25)
