"""A bounded playout (jitter) buffer for 24 kHz mono PCM16. Sans-I/O: pass ``now``.

::

    BUFFERING ──(queued >= target_ms, or audio waiting and nothing new for target_ms)──▶ PLAYING
    PLAYING ──(ran dry)──▶ BUFFERING

- ``push`` appends; beyond ``max_ms`` the *oldest* audio is dropped (an overrun: live audio
  that late is not worth playing).
- ``pop(n)`` always returns exactly ``n`` samples, padded with silence; it also says how many
  of them were real audio.
- An underrun is counted when audio arrives again less than ``underrun_window_ms`` after the
  buffer ran dry while playing (a gap in a stream, not the end of an utterance).
- ``flush`` drops everything (barge-in).

Not thread-safe: the speaker guards it with a lock shared with the device callback.
"""

from __future__ import annotations

import collections
import enum
import logging
from dataclasses import dataclass

__all__ = ["JitterBuffer", "JitterPhase", "JitterStats"]

log = logging.getLogger(__name__)

_SAMPLE_BYTES = 2


class JitterPhase(enum.Enum):
    BUFFERING = "buffering"
    PLAYING = "playing"


@dataclass(frozen=True, slots=True)
class JitterStats:
    queued_ms: float
    underruns: int
    overruns: int
    dropped_ms: float  # audio dropped by overruns
    flushed_ms: float  # audio dropped by flush()


class JitterBuffer:
    def __init__(
        self,
        *,
        target_ms: int = 60,
        max_ms: int = 2000,
        sample_rate_hz: int = 24_000,
        underrun_window_ms: int = 500,
    ):
        if max_ms < target_ms:
            raise ValueError(f"jitter max_ms ({max_ms}) < target_ms ({target_ms})")
        self._rate = sample_rate_hz
        self._target = sample_rate_hz * target_ms // 1000
        self._max = sample_rate_hz * max_ms // 1000
        self._target_ns = target_ms * 1_000_000
        self._window_ns = underrun_window_ms * 1_000_000
        self._chunks: collections.deque[bytes] = collections.deque()
        self._head = 0  # bytes already consumed from _chunks[0]
        self._queued = 0  # samples
        self._phase = JitterPhase.BUFFERING
        self._last_push_ns: int | None = None
        self._dry_at_ns: int | None = None
        self.underruns = 0
        self.overruns = 0
        self._dropped = 0
        self._flushed = 0

    @property
    def phase(self) -> JitterPhase:
        return self._phase

    @property
    def queued_samples(self) -> int:
        return self._queued

    @property
    def queued_ms(self) -> float:
        return self._queued * 1000 / self._rate

    def stats(self) -> JitterStats:
        return JitterStats(
            queued_ms=self.queued_ms,
            underruns=self.underruns,
            overruns=self.overruns,
            dropped_ms=self._dropped * 1000 / self._rate,
            flushed_ms=self._flushed * 1000 / self._rate,
        )

    def _set_phase(self, phase: JitterPhase) -> None:
        # No logging here: pop() runs on the audio device's thread (the counters are metrics).
        if phase is not self._phase:
            self._phase = phase

    def push(self, pcm: bytes, now_ns: int) -> None:
        """Queue 24 kHz mono PCM16 (an odd trailing byte is ignored)."""
        n = len(pcm) // _SAMPLE_BYTES
        if n == 0:
            return
        if self._dry_at_ns is not None and now_ns - self._dry_at_ns < self._window_ns:
            self.underruns += 1
        self._dry_at_ns = None
        self._chunks.append(pcm[: n * _SAMPLE_BYTES])
        self._queued += n
        self._last_push_ns = now_ns
        excess = self._queued - self._max
        if excess > 0:
            self.overruns += 1
            self._dropped += excess
            self._discard(excess)

    def _discard(self, n: int) -> None:
        self._take(n)

    def _take(self, n: int) -> bytes:
        """Remove and return up to n samples from the front."""
        want = min(n, self._queued) * _SAMPLE_BYTES
        parts: list[bytes] = []
        got = 0
        while got < want:
            chunk = self._chunks[0]
            piece = chunk[self._head : self._head + (want - got)]
            parts.append(piece)
            got += len(piece)
            self._head += len(piece)
            if self._head >= len(chunk):
                self._chunks.popleft()
                self._head = 0
        self._queued -= got // _SAMPLE_BYTES
        return b"".join(parts)

    def pop(self, n: int, now_ns: int) -> tuple[bytes, int]:
        """Exactly ``n`` samples for the device, and how many of them are real audio."""
        if self._phase is JitterPhase.BUFFERING and self._queued > 0:
            stale = (
                self._last_push_ns is not None and now_ns - self._last_push_ns >= self._target_ns
            )
            if self._queued >= self._target or stale:
                self._set_phase(JitterPhase.PLAYING)
        if self._phase is JitterPhase.BUFFERING:
            return bytes(n * _SAMPLE_BYTES), 0
        pcm = self._take(n)
        real = len(pcm) // _SAMPLE_BYTES
        if real < n:
            self._dry_at_ns = now_ns
            self._set_phase(JitterPhase.BUFFERING)
            pcm += bytes((n - real) * _SAMPLE_BYTES)
        return pcm, real

    def flush(self) -> int:
        """Drop everything queued (barge-in); return how many samples were dropped."""
        dropped = self._queued
        self._chunks.clear()
        self._head = 0
        self._queued = 0
        self._flushed += dropped
        self._dry_at_ns = None
        self._set_phase(JitterPhase.BUFFERING)
        return dropped
