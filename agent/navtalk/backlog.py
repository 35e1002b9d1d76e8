"""Mic audio held while the session is not ready, and the mic's pre-roll merged in front.

Sans I/O. While a session is wanted but not READY (before ``realtime.session.updated``),
live mic frames wait here, bounded by bytes (oldest dropped, counted). The mic's
pre-roll (the audio from just before the session was asked for) goes in front of them:
frames captured before the pre-roll's end are already inside it and are dropped.
:meth:`AudioBacklog.drain` gives everything as one PCM block, oldest first.
"""

from __future__ import annotations

import collections

__all__ = ["AudioBacklog"]


class AudioBacklog:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self._frames: collections.deque[tuple[int, bytes]] = collections.deque()
        self._bytes = 0
        self.dropped = 0  # frames dropped to stay under max_bytes

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def add(self, capture_ns: int, pcm: bytes) -> None:
        """A live frame (``capture_ns`` = when its first sample was captured)."""
        self._frames.append((capture_ns, pcm))
        self._bytes += len(pcm)
        while self._bytes > self.max_bytes and self._frames:
            _, old = self._frames.popleft()
            self._bytes -= len(old)
            self.dropped += 1

    def merge_preroll(self, end_ns: int, pcm: bytes) -> None:
        """Put the pre-roll (audio up to ``end_ns``) in front of the frames after it.
        A pre-roll longer than the backlog keeps only its newest part."""
        kept = [(t, p) for t, p in self._frames if t >= end_ns]
        self.clear()
        if len(pcm) > self.max_bytes:
            cut = len(pcm) - self.max_bytes
            pcm = pcm[cut + (cut % 2) :]  # whole 16-bit samples
        self.add(end_ns, pcm)
        for t, p in kept:
            self.add(t, p)

    def drain(self) -> bytes:
        pcm = b"".join(p for _, p in self._frames)
        self.clear()
        return pcm

    def clear(self) -> None:
        self._frames.clear()
        self._bytes = 0
