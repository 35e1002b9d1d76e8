"""A bus client's counters, and when to log dropped input (sans-I/O: pass ``now``).

Bad input on the bus is counted per (topic, sender) and logged once per burst, never per
message: the first drop after a quiet period is logged in full, the drops after it are
summed into one summary line per window while they go on.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

__all__ = ["MAX_DROP_KEYS", "BurstLog", "BusStats", "peek_sender"]

MAX_DROP_KEYS = 256  # (topic, sender) pairs counted apart; a flood of forged senders shares one
OTHER = ("*", "*")


@dataclass
class BusStats:
    published: int = 0
    publish_dropped: int = 0  # refused by a full PUB queue (media plane only, by design)
    received: int = 0
    media_dropped: int = 0  # oldest media dropped from a full receive queue
    decode_errors: int = 0  # messages dropped as undecodable (all reasons, all topics)
    # the same, by (topic, sender): topic as declared ("health.*"), sender as it claims to be
    # ("?" when not even that could be read); at most MAX_DROP_KEYS pairs, then OTHER
    decode_errors_by: dict[tuple[str, str], int] = field(default_factory=dict)
    gaps: int = 0  # sequence gaps seen (messages lost upstream)
    latch_requests: int = 0  # latch requests answered (ours included)
    latch_resent: int = 0  # latched messages re-sent to late subscribers
    replayed: int = 0  # latched messages received as a re-send
    replay_duplicates: int = 0  # re-sends dropped because the live copy had come already
    per_topic: dict[str, int] = field(default_factory=dict)  # by declared topic ("health.*")

    def count_decode_error(self, topic: str, sender: str) -> None:
        self.decode_errors += 1
        key = (topic, sender)
        if key not in self.decode_errors_by and len(self.decode_errors_by) >= MAX_DROP_KEYS:
            key = OTHER
        self.decode_errors_by[key] = self.decode_errors_by.get(key, 0) + 1


class BurstLog:
    """Decides which drops get a log line: the first of a burst; then one summary per
    ``window_s`` while drops go on (call :meth:`summary` at :meth:`due_at`)."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self._quiet_until = -math.inf
        self._held: collections.Counter[str] = collections.Counter()

    def record(self, key: str, now: float) -> bool:
        """A drop happened. True: log it now, in full. False: it is held for the summary."""
        if now >= self._quiet_until and not self._held:
            self._quiet_until = now + self.window_s
            return True
        self._held[key] += 1
        return False

    @property
    def held(self) -> int:
        return sum(self._held.values())

    def due_at(self) -> float:
        return self._quiet_until

    def summary(self, now: float, *, force: bool = False) -> str | None:
        """The line for the drops held since the last line, once the window has passed
        (or ``force``); None when there is nothing to say yet."""
        if not self._held or (now < self._quiet_until and not force):
            return None
        total = self.held
        top = ", ".join(f"{key} x{n}" for key, n in self._held.most_common(5))
        more = "" if len(self._held) <= 5 else f", and {len(self._held) - 5} more sources"
        self._held.clear()
        self._quiet_until = now + self.window_s  # a flood that goes on: one line per window
        return f"{total} more dropped within {self.window_s:.0f} s: {top}{more}"


def peek_sender(body: bytes) -> str:
    """The sender an envelope claims, read without decoding it (for counting a body that
    does not decode); "?" when not even that can be read. At most 40 characters."""
    # an Envelope is a msgpack array whose first item is the sender, a str
    if not body or not (0x90 <= body[0] <= 0x9F):
        return "?"
    head = body[1] if len(body) > 1 else 0
    if 0xA0 <= head <= 0xBF:
        start, size = 2, head & 0x1F
    elif head == 0xD9 and len(body) > 2:
        start, size = 3, body[2]
    else:
        return "?"
    raw = body[start : start + min(size, 40)]
    text = raw.decode("utf-8", "replace")
    return text if text.isprintable() else repr(text)[1:-1][:40]
