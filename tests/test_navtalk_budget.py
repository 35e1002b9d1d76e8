"""The daily budget core: seconds in, news out; the saved file is untrusted."""

from __future__ import annotations

import pytest

from agent.navtalk.budget import MAX_FILE_BYTES, Budget, News


def test_warning_at_80_percent_then_spent_once() -> None:
    b = Budget(daily_s=100.0)
    assert b.add(79.0, "2026-11-30") is None
    assert b.add(1.0, "2026-11-30") is News.WARNING
    assert b.add(10.0, "2026-11-30") is None and not b.spent
    assert b.add(10.0, "2026-11-30") is News.SPENT and b.spent
    assert b.add(10.0, "2026-11-30") is None and b.spent


def test_a_new_day_starts_over() -> None:
    b = Budget(daily_s=10.0)
    b.add(20.0, "2026-11-30")
    assert b.spent
    assert b.roll("2026-12-01") and not b.spent and b.used_s == 0.0
    assert not b.roll("2026-12-01")


def test_no_budget_never_spends() -> None:
    b = Budget(daily_s=0.0)
    assert b.add(1e6, "d") is None and not b.spent


def test_saved_use_survives_a_restart_the_same_day_only() -> None:
    b = Budget(daily_s=60.0)
    b.add(61.0, "2026-11-30")
    again = Budget(daily_s=60.0)
    again.load(b.dump(), "2026-11-30")
    assert again.spent and again.used_s == 61.0
    tomorrow = Budget(daily_s=60.0)
    tomorrow.load(b.dump(), "2026-12-01")
    assert not tomorrow.spent


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b'{"day": "2026-11-30", "used_s": -5}',
        b'{"day": "2026-11-30", "used_s": 1e300}',
        b'{"day": "2026-11-30", "used_s": 5, "extra": 1}',
        b'{"day": 3, "used_s": 5}',
        b"[" * 100_000,
        b" " * (MAX_FILE_BYTES + 1),
    ],
)
def test_a_bad_file_counts_from_zero(data: bytes) -> None:
    b = Budget(daily_s=60.0)
    b.load(data, "2026-11-30")
    assert b.used_s == 0.0 and b.day == "2026-11-30"
