"""Flood control for the tools service, sans I/O (no clock: every method takes ``now``).

- :class:`BurstLog` decides which of a run of similar events is logged: the first one,
  then at most one per window, each telling how many were left out since. A flood of bad
  calls is counted, not logged per message.
- :class:`Pacer` spaces out an answer that many requests may ask for (the tool catalog):
  the first request is answered at once, the ones that follow within ``interval_s`` share
  one answer at the end of the interval. Every request is answered, none twice in a burst.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BurstLog", "Pacer"]

K = TypeVar("K", bound=Hashable)


@dataclass
class _Burst:
    logged_at: float
    left_out: int = 0


class BurstLog(Generic[K]):
    """Per key: log the first event, then at most one per ``window_s``; count the rest."""

    def __init__(self, window_s: float = 10.0, max_keys: int = 256):
        self.window_s = window_s
        self.max_keys = max_keys
        self.total: collections.Counter[K] = collections.Counter()  # every event, by key
        self._bursts: collections.OrderedDict[K, _Burst] = collections.OrderedDict()

    def hit(self, key: K, now: float) -> int | None:
        """Count an event. Returns None when it should not be logged, else how many events
        of this key were left out since the last one logged (0 for the first of a burst)."""
        self.total[key] += 1
        burst = self._bursts.get(key)
        if burst is not None and now - burst.logged_at < self.window_s:
            burst.left_out += 1
            return None
        left_out = burst.left_out if burst is not None else 0
        self._bursts[key] = _Burst(logged_at=now)
        self._bursts.move_to_end(key)
        while len(self._bursts) > self.max_keys:  # a flood of distinct keys stays bounded
            self._bursts.popitem(last=False)
        return left_out

    def flush(self, now: float) -> list[tuple[K, int]]:
        """Keys whose window has ended with events left out, and how many (then forgotten):
        the summary lines of bursts that stopped."""
        ended = [
            (key, b.left_out)
            for key, b in self._bursts.items()
            if b.left_out and now - b.logged_at >= self.window_s
        ]
        for key, _ in ended:
            del self._bursts[key]
        return ended


class Pacer:
    """Answer the first request at once, later ones at most once per ``interval_s``."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.requests = 0  # every request
        self.answers = 0  # every answer
        self._last: float | None = None
        self._due: float | None = None

    def request(self, now: float) -> float | None:
        """A request. Returns the delay after which to answer (0.0: now), or None when an
        answer is scheduled already (this request shares it)."""
        self.requests += 1
        if self._due is not None:
            return None
        if self._last is None or now - self._last >= self.interval_s:
            self._due = now
            return 0.0
        self._due = self._last + self.interval_s
        return self._due - now

    def answered(self, now: float) -> None:
        """The answer went out (at ``now``); the next request starts a new interval."""
        self.answers += 1
        self._last = now
        self._due = None
