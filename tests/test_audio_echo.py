"""Echo handling: half-duplex gating by speaker state and tail, and the software-AEC hook."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from agent.audio.echo import EchoControl, EchoMode, ReferenceBuffer, load_canceller
from agent.errors import ConfigError

MS = 1_000_000
FRAME = np.full(480, 1000, dtype="<i2").tobytes()
SILENCE = bytes(len(FRAME))


def test_none_passes_frames_through() -> None:
    echo = EchoControl(EchoMode.NONE)
    echo.on_speaker_state(True, 0)
    r = echo.process(FRAME, 10 * MS)
    assert (r.pcm, r.gated) == (FRAME, False)


def test_half_duplex_gates_while_playing_and_for_the_tail() -> None:
    echo = EchoControl(EchoMode.HALF_DUPLEX, tail_ms=200)
    assert echo.process(FRAME, 0).pcm == FRAME
    echo.on_speaker_state(True, 100 * MS)
    r = echo.process(FRAME, 120 * MS)
    assert (r.pcm, r.gated) == (SILENCE, True)
    echo.on_speaker_state(False, 1000 * MS)
    assert echo.process(FRAME, 1100 * MS).gated  # within the tail
    r = echo.process(FRAME, 1200 * MS)  # tail over
    assert (r.pcm, r.gated) == (FRAME, False)
    assert echo.gated_frames == 2


class _Subtract:
    """A toy canceller: mic minus reference (a perfect echo path of gain 1, no delay)."""

    def __init__(self, rate: int, frame_samples: int) -> None:
        self.shape = (rate, frame_samples)

    def process(self, mic: bytes, reference: bytes, capture_mono_ns: int) -> bytes:
        a = np.frombuffer(mic, "<i2").astype(np.int32) - np.frombuffer(reference, "<i2")
        return a.astype("<i2").tobytes()


def test_software_aec_hook_gets_the_reference_aligned_by_time() -> None:
    mod = types.ModuleType("nt_test_aec")
    mod.make = _Subtract  # type: ignore[attr-defined]
    sys.modules["nt_test_aec"] = mod
    try:
        canceller = load_canceller("nt_test_aec:make", 24_000, 480)
    finally:
        del sys.modules["nt_test_aec"]
    echo = EchoControl(EchoMode.SOFTWARE_AEC, canceller=canceller)
    played = np.arange(960, dtype="<i2")
    echo.on_reference(played.tobytes(), play_mono_ns=1000 * MS)  # 40 ms from t = 1 s
    mic = (played[240:720] + 5).astype("<i2").tobytes()  # captured from t = 1.010 s
    out = np.frombuffer(echo.process(mic, 1010 * MS).pcm, "<i2")
    assert np.all(out == 5)


def test_reference_window_is_silence_where_nothing_played() -> None:
    ref = ReferenceBuffer(max_ms=1000)
    ref.add(np.full(240, 7, "<i2").tobytes(), play_mono_ns=10 * MS)  # 10..20 ms
    w = np.frombuffer(ref.window(0, 720), "<i2")  # 0..30 ms
    assert list(w[:240]) == [0] * 240
    assert list(w[240:480]) == [7] * 240
    assert list(w[480:]) == [0] * 240


def test_bad_aec_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="aec_factory"):
        EchoControl(EchoMode.SOFTWARE_AEC)
    with pytest.raises(ConfigError, match="module:callable"):
        load_canceller("nonsense", 24_000, 480)
    with pytest.raises(ConfigError, match="No module"):
        load_canceller("no_such_module_xyz:make", 24_000, 480)
