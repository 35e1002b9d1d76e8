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


# --- the monthly budget --------------------------------------------------------------------


def test_the_month_is_spent_across_days_with_one_warning() -> None:
    b = Budget(daily_s=0.0, monthly_s=100.0)  # a monthly budget alone
    assert b.active
    assert b.add(50.0, "2026-11-01") is None
    assert b.add(29.0, "2026-11-02") is None and b.used_s == 29.0  # the day started over
    assert b.add(1.0, "2026-11-02") is News.WARNING and b.month_used_s == 80.0
    assert b.add(10.0, "2026-11-03") is None and not b.spent
    assert b.add(10.0, "2026-11-04") is News.SPENT and b.spent and b.spent_this_month
    assert b.until == "next month"
    assert b.add(5.0, "2026-11-05") is None and b.spent  # a new day does not free it
    assert not b.roll("2026-11-05")


def test_a_month_rollover_frees_the_month_but_not_a_spent_day() -> None:
    b = Budget(daily_s=30.0, monthly_s=50.0)
    b.add(25.0, "2026-11-29")
    assert b.add(25.0, "2026-11-30") is News.SPENT and b.spent_this_month
    assert not b.spent_today
    assert b.roll("2026-12-01") and not b.spent and b.month == "2026-12"
    assert b.month_used_s == 0.0 and b.used_s == 0.0
    assert b.add(24.0, "2026-12-01") is News.WARNING  # 80 % of the day (48 % of the month)
    assert b.add(6.0, "2026-12-01") is News.SPENT and b.spent_today and b.until == "tomorrow"
    assert b.roll("2026-12-02") and not b.spent and b.month_used_s == 30.0


def test_month_use_survives_a_restart_and_rolls_at_the_next_month() -> None:
    b = Budget(daily_s=0.0, monthly_s=60.0)
    b.add(61.0, "2026-11-30")
    again = Budget(daily_s=0.0, monthly_s=60.0)
    again.load(b.dump(), "2026-11-30")
    assert again.spent and again.month_used_s == 61.0
    later = Budget(daily_s=0.0, monthly_s=60.0)
    later.load(b.dump(), "2026-12-01")
    assert not later.spent and later.month == "2026-12"


def test_a_file_of_the_older_daily_only_format_counts_its_day_in_the_month() -> None:
    old = b'{"day": "2026-11-30", "used_s": 40.0}'
    b = Budget(daily_s=60.0, monthly_s=100.0)
    b.load(old, "2026-11-30")
    assert (b.used_s, b.month, b.month_used_s) == (40.0, "2026-11", 40.0)
    b.load(old, "2026-12-01")  # read in the next month: both start over
    assert (b.used_s, b.month_used_s) == (0.0, 0.0)


def test_without_any_budget_nothing_is_counted() -> None:
    b = Budget(daily_s=0.0, monthly_s=0.0)
    assert not b.active and b.add(1e6, "2026-11-30") is None and b.month_used_s == 0.0


@pytest.mark.parametrize(
    "data",
    [
        b'{"day": "2026-11-30", "used_s": 5, "month": "2026-11", "month_used_s": -1}',
        b'{"day": "2026-11-30", "used_s": 5, "month": "2026-11", "month_used_s": 1e12}',
        b'{"day": "2026-11-30", "used_s": 5, "month": 11, "month_used_s": 5}',
    ],
)
def test_a_bad_month_in_the_file_counts_from_zero(data: bytes) -> None:
    b = Budget(daily_s=0.0, monthly_s=60.0)
    b.load(data, "2026-11-30")
    assert (b.used_s, b.month_used_s, b.month) == (0.0, 0.0, "2026-11")
