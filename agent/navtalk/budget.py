"""The daily budget of session time, sans I/O: how many seconds of NavTalk session today.

A NavTalk session is paid by the minute. The shell adds the seconds a socket was open
(passing the local date, so the budget starts over each day), saves :meth:`Budget.dump`
to a small JSON file and reads it back with :meth:`Budget.load` at start, so a restart
does not reset the day. :meth:`Budget.add` says when the use crosses the warning
fraction and when it is spent; while spent, the policy opens no session.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import msgspec

__all__ = ["MAX_FILE_BYTES", "Budget", "News"]

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 4096  # the saved state is ~60 bytes; anything bigger is not ours


class News(enum.Enum):
    WARNING = "warning"  # the warning fraction was crossed
    SPENT = "spent"  # the day's budget is used up


class _Saved(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    day: str
    used_s: float


@dataclass(slots=True)
class Budget:
    daily_s: float  # seconds of session a day (0 = no budget)
    warn_fraction: float = 0.8
    day: str = ""
    used_s: float = 0.0

    @property
    def spent(self) -> bool:
        return self.daily_s > 0 and self.used_s >= self.daily_s

    @property
    def fraction(self) -> float:
        return self.used_s / self.daily_s if self.daily_s > 0 else 0.0

    def roll(self, day: str) -> bool:
        """A new day starts over; True when it did."""
        if day == self.day:
            return False
        self.day, self.used_s = day, 0.0
        return True

    def add(self, seconds: float, day: str) -> News | None:
        """``seconds`` more of session on ``day``; the news when a threshold is crossed."""
        self.roll(day)
        if seconds <= 0 or self.daily_s <= 0:
            return None
        before = self.fraction
        self.used_s += seconds
        after = self.fraction
        if before < 1.0 <= after:
            return News.SPENT
        if before < self.warn_fraction <= after:
            return News.WARNING
        return None

    def dump(self) -> bytes:
        return msgspec.json.encode(_Saved(self.day, round(self.used_s, 3)))

    def load(self, data: bytes, day: str) -> None:
        """Restore the day's use from :meth:`dump`'s bytes (a bad file starts at zero)."""
        try:
            if len(data) > MAX_FILE_BYTES:
                raise ValueError(f"{len(data)} bytes")
            saved = msgspec.json.decode(data, type=_Saved)
            if not 0.0 <= saved.used_s < 1e9:
                raise ValueError(f"used_s {saved.used_s}")
        except (msgspec.DecodeError, ValueError) as exc:
            logger.warning("= budget file unreadable (%s): counting from zero", exc)
            self.day, self.used_s = day, 0.0
            return
        self.day, self.used_s = saved.day, saved.used_s
        self.roll(day)
