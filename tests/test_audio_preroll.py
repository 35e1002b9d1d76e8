"""The mic's pre-roll ring buffer."""

from __future__ import annotations

import numpy as np

from agent.audio.preroll import PreRollBuffer

FRAME = 480  # 20 ms at 24 kHz
FRAME_NS = 20_000_000


def _frame(k: int) -> bytes:
    return np.full(FRAME, k, dtype="<i2").tobytes()


def test_keeps_the_last_max_ms_with_times() -> None:
    ring = PreRollBuffer(max_ms=100)  # 5 frames
    for k in range(12):
        ring.append(_frame(k), capture_mono_ns=1_000_000_000 + k * FRAME_NS)
    pcm, start_ns, end_ns = ring.snapshot(1000)
    samples = np.frombuffer(pcm, dtype="<i2")
    assert len(samples) == 5 * FRAME
    assert list(samples[::FRAME]) == [7, 8, 9, 10, 11]
    assert end_ns == 1_000_000_000 + 12 * FRAME_NS
    assert start_ns == end_ns - 100_000_000


def test_snapshot_shorter_than_held_takes_the_newest() -> None:
    ring = PreRollBuffer(max_ms=1000)
    for k in range(10):
        ring.append(_frame(k), capture_mono_ns=k * FRAME_NS)
    pcm, start_ns, end_ns = ring.snapshot(30)  # 1.5 frames
    samples = np.frombuffer(pcm, dtype="<i2")
    assert len(samples) == 720
    assert list(samples[:240]) == [8] * 240 and list(samples[240:]) == [9] * 480
    assert (start_ns, end_ns) == (170_000_000, 200_000_000)


def test_empty_and_disabled() -> None:
    assert PreRollBuffer(max_ms=500).snapshot(100) == (b"", 0, 0)
    off = PreRollBuffer(max_ms=0)
    off.append(_frame(1), capture_mono_ns=0)
    assert off.snapshot(100) == (b"", 0, 0)
