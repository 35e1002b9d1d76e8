"""The playout buffer: target, max, underrun/overrun counters, flush."""

from __future__ import annotations

import numpy as np
import pytest

from agent.audio.jitter import JitterBuffer, JitterPhase

MS = 1_000_000
N10 = 240  # 10 ms at 24 kHz


def _ramp(n: int, start: int = 1) -> bytes:
    return np.arange(start, start + n, dtype="<i2").tobytes()


def test_waits_for_target_then_plays_in_order() -> None:
    jb = JitterBuffer(target_ms=60, max_ms=500)
    jb.push(_ramp(N10 * 4), now_ns=0)  # 40 ms: below target
    assert jb.pop(N10, now_ns=1 * MS) == (bytes(N10 * 2), 0)
    assert jb.phase is JitterPhase.BUFFERING
    jb.push(_ramp(N10 * 2, start=1 + N10 * 4), now_ns=2 * MS)  # now 60 ms
    out = b""
    for k in range(6):
        pcm, real = jb.pop(N10, now_ns=(3 + k) * MS)
        assert real == N10
        out += pcm
    assert out == _ramp(N10 * 6)
    assert jb.phase is JitterPhase.PLAYING
    assert jb.queued_samples == 0


def test_tail_shorter_than_target_plays_after_target_ms_of_quiet() -> None:
    jb = JitterBuffer(target_ms=60, max_ms=500)
    jb.push(_ramp(N10), now_ns=0)
    assert jb.pop(N10, now_ns=30 * MS)[1] == 0  # still waiting for more
    pcm, real = jb.pop(N10, now_ns=60 * MS)  # nothing new for target_ms: play what is there
    assert (pcm, real) == (_ramp(N10), N10)


def test_pop_pads_with_silence_and_goes_back_to_buffering() -> None:
    jb = JitterBuffer(target_ms=20, max_ms=500)
    jb.push(_ramp(N10 * 2 + 100), now_ns=0)
    jb.pop(N10, now_ns=0)
    jb.pop(N10, now_ns=0)
    pcm, real = jb.pop(N10, now_ns=0)
    assert real == 100
    assert pcm == _ramp(100, start=1 + 2 * N10) + bytes((N10 - 100) * 2)
    assert jb.phase is JitterPhase.BUFFERING


def test_underrun_counts_a_gap_not_the_end_of_an_utterance() -> None:
    jb = JitterBuffer(target_ms=20, max_ms=500, underrun_window_ms=500)
    jb.push(_ramp(N10 * 2), now_ns=0)
    for _ in range(3):
        jb.pop(N10, now_ns=10 * MS)  # runs dry at 10 ms
    jb.push(_ramp(N10 * 2), now_ns=100 * MS)  # the stream goes on: that was a gap
    assert jb.underruns == 1
    for _ in range(3):
        jb.pop(N10, now_ns=200 * MS)  # dry again at 200 ms
    jb.push(_ramp(N10 * 2), now_ns=5000 * MS)  # a new utterance, much later
    assert jb.underruns == 1


def test_overrun_drops_the_oldest_audio() -> None:
    jb = JitterBuffer(target_ms=10, max_ms=50)  # 1200 samples
    jb.push(_ramp(1000), now_ns=0)
    jb.push(_ramp(400, start=1001), now_ns=0)  # 1400 > 1200: drop the 200 oldest
    assert jb.overruns == 1
    assert jb.queued_samples == 1200
    pcm, real = jb.pop(1200, now_ns=0)
    assert real == 1200 and pcm == _ramp(1200, start=201)
    assert jb.stats().dropped_ms == pytest.approx(200 / 24)


def test_flush_drops_everything_and_rebuffers() -> None:
    jb = JitterBuffer(target_ms=20, max_ms=500)
    jb.push(_ramp(N10 * 10), now_ns=0)
    jb.pop(N10, now_ns=0)
    assert jb.flush() == N10 * 9
    assert jb.pop(N10, now_ns=0) == (bytes(N10 * 2), 0)
    assert jb.stats().flushed_ms == pytest.approx(90.0)
    jb.push(_ramp(N10 * 2, start=7), now_ns=0)  # a new stream starts cleanly
    assert jb.pop(N10, now_ns=0) == (_ramp(N10, start=7), N10)


def test_odd_bytes_and_bad_limits() -> None:
    jb = JitterBuffer(target_ms=0, max_ms=10)
    jb.push(b"\x01\x00\x02", now_ns=0)
    assert jb.pop(1, now_ns=0) == (b"\x01\x00", 1)
    with pytest.raises(ValueError, match="max_ms"):
        JitterBuffer(target_ms=100, max_ms=50)
