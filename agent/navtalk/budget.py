"""The budgets of session time, sans I/O: seconds of NavTalk session today and this month.

A NavTalk session is paid by the minute. The shell adds the seconds a socket was open
(passing the local date, ``YYYY-MM-DD``, so the day's use starts over each day and the
month's each month), saves :meth:`Budget.dump` to a small JSON file and reads it back
with :meth:`Budget.load` at start, so a restart resets neither. :meth:`Budget.add` says
when the use crosses the warning fraction of either budget and when one is spent; while
either is spent, the policy opens no session. Each budget is off at 0.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import msgspec

__all__ = ["MAX_FILE_BYTES", "Budget", "News"]

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 4096  # the saved state is ~100 bytes; anything bigger is not ours


class News(enum.Enum):
    WARNING = "warning"  # the warning fraction of a budget was crossed
    SPENT = "spent"  # a budget is used up (the day's or the month's)


class _Saved(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    day: str
    used_s: float
    # the month's use; absent in files of the older daily-only format
    month: str = ""
    month_used_s: float = 0.0


def _month(day: str) -> str:
    return day[:7]  # "2026-11-30" -> "2026-11"


@dataclass(slots=True)
class Budget:
    daily_s: float  # seconds of session a day (0 = no daily budget)
    warn_fraction: float = 0.8
    day: str = ""
    used_s: float = 0.0  # today's use
    monthly_s: float = 0.0  # seconds of session a month (0 = no monthly budget)
    month: str = ""
    month_used_s: float = 0.0  # this month's use (today's included)

    @property
    def active(self) -> bool:
        """Some budget is set: the use is counted and saved."""
        return self.daily_s > 0 or self.monthly_s > 0

    @property
    def spent_today(self) -> bool:
        return self.daily_s > 0 and self.used_s >= self.daily_s

    @property
    def spent_this_month(self) -> bool:
        return self.monthly_s > 0 and self.month_used_s >= self.monthly_s

    @property
    def spent(self) -> bool:
        return self.spent_today or self.spent_this_month

    @property
    def fraction(self) -> float:
        """The larger of the day's and the month's used fractions."""
        day = self.used_s / self.daily_s if self.daily_s > 0 else 0.0
        month = self.month_used_s / self.monthly_s if self.monthly_s > 0 else 0.0
        return max(day, month)

    @property
    def until(self) -> str:
        """When a spent budget is available again: "tomorrow" or "next month"."""
        return "next month" if self.spent_this_month else "tomorrow"

    def roll(self, day: str) -> bool:
        """A new day starts the day's use over, a new month the month's; True when either did."""
        rolled = False
        if day != self.day:
            self.day, self.used_s, rolled = day, 0.0, True
        if _month(day) != self.month:
            self.month, self.month_used_s, rolled = _month(day), 0.0, True
        return rolled

    def add(self, seconds: float, day: str) -> News | None:
        """``seconds`` more of session on ``day``; the news when a threshold is crossed."""
        self.roll(day)
        if seconds <= 0 or not self.active:
            return None
        was_spent, before = self.spent, self._fractions()
        self.used_s += seconds
        self.month_used_s += seconds
        if self.spent and not was_spent:
            return News.SPENT
        after = self._fractions()
        if any(b < self.warn_fraction <= a for b, a in zip(before, after, strict=True)):
            return News.WARNING
        return None

    def _fractions(self) -> tuple[float, float]:
        return (
            self.used_s / self.daily_s if self.daily_s > 0 else 0.0,
            self.month_used_s / self.monthly_s if self.monthly_s > 0 else 0.0,
        )

    def dump(self) -> bytes:
        saved = _Saved(self.day, round(self.used_s, 3), self.month, round(self.month_used_s, 3))
        return msgspec.json.encode(saved)

    def load(self, data: bytes, day: str) -> None:
        """Restore the use from :meth:`dump`'s bytes (a bad file starts at zero). A file of
        the older daily-only format counts its day's use as the month's so far."""
        try:
            if len(data) > MAX_FILE_BYTES:
                raise ValueError(f"{len(data)} bytes")
            saved = msgspec.json.decode(data, type=_Saved)
            for name in ("used_s", "month_used_s"):
                value = getattr(saved, name)
                if not 0.0 <= value < 1e9:
                    raise ValueError(f"{name} {value}")
        except (msgspec.DecodeError, ValueError) as exc:
            logger.warning("= budget file unreadable (%s): counting from zero", exc)
            self.day, self.used_s, self.month, self.month_used_s = day, 0.0, _month(day), 0.0
            return
        self.day, self.used_s = saved.day, saved.used_s
        if saved.month:
            self.month, self.month_used_s = saved.month, max(saved.month_used_s, saved.used_s)
        else:  # the older daily-only format
            self.month, self.month_used_s = _month(saved.day), saved.used_s
        self.roll(day)
