"""The mic's recent audio, so a session that starts on voice does not lose the first words.

A ring of the last ``max_ms`` of 24 kHz mono PCM16 frames, each with its capture time.
Sans-I/O.
"""

from __future__ import annotations

import collections

__all__ = ["PreRollBuffer"]

_SAMPLE_BYTES = 2


class PreRollBuffer:
    def __init__(self, *, max_ms: int = 1000, sample_rate_hz: int = 24_000):
        self._rate = sample_rate_hz
        self._max = sample_rate_hz * max_ms // 1000
        self._frames: collections.deque[tuple[bytes, int]] = collections.deque()
        self._samples = 0

    @property
    def samples(self) -> int:
        return self._samples

    def append(self, pcm: bytes, capture_mono_ns: int) -> None:
        n = len(pcm) // _SAMPLE_BYTES
        if self._max == 0 or n == 0:
            return
        self._frames.append((pcm, capture_mono_ns))
        self._samples += n
        # Keep whole frames: drop the oldest while the rest still covers max_ms.
        while self._samples - len(self._frames[0][0]) // _SAMPLE_BYTES >= self._max:
            old, _ = self._frames.popleft()
            self._samples -= len(old) // _SAMPLE_BYTES

    def snapshot(self, duration_ms: int) -> tuple[bytes, int, int]:
        """The last ``duration_ms`` (or less, if not held): (pcm, start_ns, end_ns).

        ``end_ns`` is the capture time just after the last sample (0 when empty).
        """
        if not self._frames:
            return b"", 0, 0
        last_pcm, last_t = self._frames[-1]
        end_ns = last_t + (len(last_pcm) // 2) * 1_000_000_000 // self._rate
        want = min(self._samples, self._max, self._rate * duration_ms // 1000) * _SAMPLE_BYTES
        held = b"".join(p for p, _ in self._frames)
        pcm = held[len(held) - want :] if want else b""
        start_ns = end_ns - (len(pcm) // 2) * 1_000_000_000 // self._rate
        return pcm, start_ns, end_ns

    def clear(self) -> None:
        self._frames.clear()
        self._samples = 0
