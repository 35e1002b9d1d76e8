"""Log a flood as a few lines: the first occurrence, then a count per window, sans I/O.

A hostile or broken peer can send the same bad frame thousands of times a second;
logging each (let alone with a traceback) fills the disk and hides everything else.
:class:`BurstLog` decides, per key, whether an occurrence is worth a log line: the
first one of a burst is, the rest are counted and reported by the next line once
``window_s`` has passed. The caller passes ``now`` (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BurstLog"]

MAX_KEYS = 256  # distinct keys remembered; beyond, the oldest is forgotten


@dataclass(slots=True)
class _Key:
    logged_at: float
    suppressed: int = 0


class BurstLog:
    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._keys: dict[str, _Key] = {}
        self.total = 0  # every occurrence, logged or not

    def admit(self, key: str, now: float) -> int | None:
        """Count one occurrence of ``key``. Returns None when it should not be logged, else
        how many occurrences were suppressed since the last logged one (0 for a new burst)."""
        self.total += 1
        entry = self._keys.get(key)
        if entry is None:
            if len(self._keys) >= MAX_KEYS:
                self._keys.pop(next(iter(self._keys)))
            self._keys[key] = _Key(now)
            return 0
        if now - entry.logged_at < self.window_s:
            entry.suppressed += 1
            return None
        suppressed, entry.suppressed, entry.logged_at = entry.suppressed, 0, now
        return suppressed
