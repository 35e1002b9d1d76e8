"""Media timing for the emulator's avatar: one clock, one voice timeline, two aiortc tracks.

::

    speak(pcm 24 kHz) ──soxr──▶ VoiceTimeline (48 kHz samples placed at media times)
                                   │                     │
                    VoiceAudioTrack.recv()       PaintedVideoTrack.recv()
                    reads samples [p, p+960)     asks level_at(t) → paints the mouth
                                   └──── MediaClock (one start, monotonic) ────┘

Both tracks read the *same* timeline by media time, and both are paced by the
same clock, so the mouth opens exactly when the matching samples go out: the
lip-sync does not depend on which track's sender task happens to run first.

:class:`VoiceTimeline` is sans-I/O (no clock reads, sample positions in, arrays
out); the tracks are the thin shells that sleep until their frame is due.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import time
from collections.abc import Callable

import av
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

__all__ = [
    "AUDIO_RATE_HZ",
    "MediaClock",
    "PaintedVideoTrack",
    "VoiceAudioTrack",
    "VoiceTimeline",
]

AUDIO_RATE_HZ = 48_000  # what the audio track sends (Opus's native rate)
AUDIO_PTIME_S = 0.020  # 20 ms frames
AUDIO_SAMPLES = int(AUDIO_RATE_HZ * AUDIO_PTIME_S)
VIDEO_CLOCK_HZ = 90_000  # RTP video clock
MAX_LATE_S = 0.5  # a track this far behind its clock skips ahead instead of bursting

Int16Array = npt.NDArray[np.int16]


class MediaClock:
    """Media time shared by the tracks: 0 at the first frame either track asks for."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self.start: float | None = None

    def media_time(self) -> float:
        """Seconds since the clock started (starting it now if it has not yet)."""
        t = self._now()
        if self.start is None:
            self.start = t
        return t - self.start

    async def wait_until(self, media_time_s: float) -> float:
        """Sleep until ``media_time_s``; return how late we are then (s, >= 0 usually)."""
        delay = media_time_s - self.media_time()
        if delay > 0:
            await asyncio.sleep(delay)
        return self.media_time() - media_time_s


class VoiceTimeline:
    """Voice samples placed on an absolute sample axis (48 kHz), read back by position.

    Sans-I/O: callers pass sample positions; nothing here reads a clock.
    """

    def __init__(self, rate_hz: int = AUDIO_RATE_HZ) -> None:
        self.rate_hz = rate_hz
        self._segments: collections.deque[tuple[int, Int16Array]] = collections.deque()
        self._end = 0  # sample just after the last scheduled voice sample

    @property
    def end(self) -> int:
        return self._end

    def schedule(self, samples: Int16Array, not_before: int) -> int:
        """Append ``samples`` right after the queued voice, no earlier than ``not_before``.

        Returns the position of the first sample.
        """
        start = max(self._end, not_before)
        if len(samples):
            self._segments.append((start, samples))
            self._end = start + len(samples)
        return start

    def insert(self, samples: Int16Array, at: int) -> None:
        """Mix ``samples`` in at an exact position (markers); does not move :attr:`end`."""
        self._segments.append((at, samples))

    def has_voice_after(self, pos: int) -> bool:
        return self._end > pos

    def drop_after(self, pos: int) -> None:
        """Barge-in: forget every sample at or after ``pos``."""
        kept: collections.deque[tuple[int, Int16Array]] = collections.deque()
        for start, seg in self._segments:
            if start >= pos:
                continue
            if start + len(seg) > pos:
                seg = seg[: pos - start]
            kept.append((start, seg))
        self._segments = kept
        self._end = min(self._end, pos)

    def prune(self, before: int) -> None:
        """Forget segments that end before ``before`` (already sent)."""
        while self._segments and self._segments[0][0] + len(self._segments[0][1]) <= before:
            self._segments.popleft()

    def read(self, pos: int, count: int) -> Int16Array:
        """Samples ``[pos, pos + count)``; silence where nothing is scheduled."""
        out = np.zeros(count, np.int32)
        for start, seg in self._segments:
            lo, hi = max(pos, start), min(pos + count, start + len(seg))
            if lo < hi:
                out[lo - pos : hi - pos] += seg[lo - start : hi - start]
        return np.clip(out, -32768, 32767).astype(np.int16)

    def level_at(self, pos: int, window: int) -> float:
        """Loudness around ``pos``: RMS of ``window`` samples centred there, 0..1 (full scale)."""
        x = self.read(max(0, pos - window // 2), window).astype(np.float32)
        return float(np.sqrt(np.mean(x * x)) / 32768.0) if len(x) else 0.0


class VoiceAudioTrack(MediaStreamTrack):
    """48 kHz mono s16 in 20 ms frames from a :class:`VoiceTimeline`, paced in real time."""

    kind = "audio"

    def __init__(self, clock: MediaClock, timeline: VoiceTimeline) -> None:
        super().__init__()
        self._clock = clock
        self._timeline = timeline
        self._pts = 0  # in samples; frame k covers [k*960, (k+1)*960)
        self._started = False
        self.frames_sent = 0

    @property
    def position(self) -> int:
        """The next sample this track will send (0 before it has started)."""
        return self._pts

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._started:
            # Join the shared clock where it is now (the video may have started it).
            self._started = True
            self._pts = int(self._clock.media_time() * AUDIO_RATE_HZ) // AUDIO_SAMPLES
            self._pts *= AUDIO_SAMPLES
        late = await self._clock.wait_until(self._pts / AUDIO_RATE_HZ)
        if late > MAX_LATE_S:  # the loop stalled: skip, keeping pts on the clock
            skip = int(late * AUDIO_RATE_HZ) // AUDIO_SAMPLES * AUDIO_SAMPLES
            self._pts += skip
        samples = self._timeline.read(self._pts, AUDIO_SAMPLES)
        self._timeline.prune(self._pts - AUDIO_RATE_HZ)  # keep 1 s back for level lookups
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE_HZ
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, AUDIO_RATE_HZ)
        self._pts += AUDIO_SAMPLES
        self.frames_sent += 1
        return frame


# paint(media_time_s, frame_index) -> BGR image
Painter = Callable[[float, int], npt.NDArray[np.uint8]]


class PaintedVideoTrack(MediaStreamTrack):
    """Frames painted by a callback at ``fps``, on the shared clock."""

    kind = "video"

    def __init__(self, clock: MediaClock, paint: Painter, fps: int) -> None:
        super().__init__()
        self._clock = clock
        self._paint = paint
        self.fps = fps
        self._index: int | None = None
        self.frames_sent = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._index is None:
            self._index = int(np.ceil(self._clock.media_time() * self.fps))
        t = self._index / self.fps
        late = await self._clock.wait_until(t)
        if late > MAX_LATE_S:
            self._index += int(late * self.fps)
            t = self._index / self.fps
        image = self._paint(t, self._index)
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = round(t * VIDEO_CLOCK_HZ)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_HZ)
        self._index += 1
        self.frames_sent += 1
        return frame
