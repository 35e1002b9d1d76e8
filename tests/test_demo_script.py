"""The demo with another script: any number of guest lines gets a timeline (no crash)."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from agent.apps.demo import ANSWER_ALLOWANCE_S, LEAD_IN_S, paced_starts, write_guest_wav


def test_paced_starts_leave_room_for_each_answer() -> None:
    starts = paced_starts([1.5, 2.0, 0.5])
    assert starts == [LEAD_IN_S, LEAD_IN_S + 1.5 + ANSWER_ALLOWANCE_S,
                      LEAD_IN_S + 3.5 + 2 * ANSWER_ALLOWANCE_S]  # fmt: skip


async def test_seven_lines_make_one_guest_wav(short_tmp: Path) -> None:
    lines = ["One.", "Two.", "Three.", "Four.", "Five.", "Six.", "Seven."]
    path = short_tmp / "guest.wav"
    spans = await write_guest_wav(path, lines, None, tail_s=1.0)
    assert len(spans) == 7
    for (start, end), (next_start, _) in zip(spans, spans[1:], strict=False):
        assert start < end and next_start - end == pytest.approx(ANSWER_ALLOWANCE_S, abs=1e-3)
    with wave.open(str(path)) as w:
        assert w.getnframes() / w.getframerate() == pytest.approx(spans[-1][1] + 1.0, abs=0.01)
    with pytest.raises(ValueError, match="7 guest lines but 6 start times"):
        await write_guest_wav(path, lines, [1.0] * 6)
