"""Latched topics: the last N messages a bus client published on a topic, kept to be
re-sent to subscribers that come up later (ROS-latched semantics).

Sans-I/O: this module only keeps frames and answers "what matches these prefixes?";
:class:`agent.bus.Bus` moves the frames.

::

    late subscriber                        every bus client (holder)
    start()/subscribe() ──▶ _latch.request [requester id, prefix, ...]
                         ◀── _latch.to.<requester id> [topic, body, *payload]  (per kept message,
                                                        oldest first, across topics)

A re-sent message carries its original envelope (same sender, seq and timestamps). The
receiving Bus drops a re-send of a message it got live already (the live copy always comes
first); consumers must be idempotent all the same (the contract allows a duplicate).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "LATCH_REPLY_PREFIX",
    "LATCH_REQUEST",
    "MAX_LATCH",
    "MAX_REQUEST_PREFIXES",
    "LatchStore",
    "parse_request",
]

LATCH_REQUEST = "_latch.request"  # bus-internal control topic every client reads
LATCH_REPLY_PREFIX = "_latch.to."  # + requester id: the directed answer
MAX_LATCH = 1024  # per topic: the latch is for "current state", not a history
MAX_REQUEST_PREFIXES = 64
MAX_REQUEST_FIELD = 256  # bytes, for the requester id and each prefix


@dataclass(frozen=True, slots=True)
class _Kept:
    order: int  # global publish order, so a reply re-sends an offer before its candidates
    frames: tuple[bytes, ...]  # [topic, body, *payload]


class LatchStore:
    """The latched messages of one bus client, per concrete topic, bounded per topic."""

    def __init__(self) -> None:
        self._kept: dict[str, collections.deque[_Kept]] = {}
        self._order = itertools.count()

    def keep(self, topic: str, frames: Sequence[bytes], depth: int) -> None:
        """Keep ``frames`` as the newest of at most ``depth`` messages of ``topic``."""
        if not 0 < depth <= MAX_LATCH:
            raise ValueError(f"latch depth must be 1..{MAX_LATCH}, not {depth}")
        kept = self._kept.get(topic)
        if kept is None or kept.maxlen != depth:
            kept = collections.deque(kept or (), maxlen=depth)
            self._kept[topic] = kept
        kept.append(_Kept(next(self._order), tuple(frames)))

    def forget(self, topic: str) -> int:
        """Drop every kept message of ``topic``; returns how many there were."""
        return len(self._kept.pop(topic, ()))

    def topics(self) -> list[str]:
        return list(self._kept)

    def matching(self, prefixes: Iterable[str]) -> list[tuple[bytes, ...]]:
        """Kept messages on topics starting with any of ``prefixes``, in publish order."""
        wanted = tuple(prefixes)
        found = [k for topic, kept in self._kept.items() if topic.startswith(wanted) for k in kept]
        found.sort(key=lambda k: k.order)
        return [k.frames for k in found]


def parse_request(frames: Sequence[bytes]) -> tuple[str, list[str]] | None:
    """``[_latch.request, requester id, *prefixes]`` -> (id, prefixes); None when malformed
    (bounded: an id or prefix over 256 bytes, more than 64 prefixes, non-ASCII)."""
    if len(frames) < 3 or len(frames) > 2 + MAX_REQUEST_PREFIXES:
        return None
    if any(len(f) > MAX_REQUEST_FIELD or not f for f in frames[1:]):
        return None
    try:
        requester = frames[1].decode("ascii")
        prefixes = [f.decode("ascii") for f in frames[2:]]
    except UnicodeDecodeError:
        return None
    if not requester.isprintable() or "." not in requester:
        return None
    return requester, prefixes
