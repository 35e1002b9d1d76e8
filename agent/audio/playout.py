"""The speaker's core: incoming voice -> jitter buffer -> device pulls, barge-in, volume, state.

::

    audio.out / navtalk.audio.delta ─▶ push() ─ ToMono24k ─▶ JitterBuffer ─▶ pull() ─▶ device
    control.barge_in ─▶ barge_in() (flush)            control.volume ─▶ set_volume()
    pull() records PlayedBlock / StateChange ─▶ drain() ─▶ audio.played, speaker.state

No I/O and no clock reads (times are passed in), but it is shared by two threads:
``pull`` runs on the audio device's thread, everything else on the event loop. One lock
guards the jitter buffer and the counters; it is held for a few microseconds (deque and
bytes operations only), so the device callback never waits for long.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass

import numpy as np

from agent.audio.jitter import JitterBuffer
from agent.audio.pcm import PCM_RATE_HZ, ToMono24k, to_float, to_pcm
from agent.audio.settings import SpeakerSettings

__all__ = ["PlayedBlock", "Playout", "StateChange"]

log = logging.getLogger(__name__)

_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class PlayedBlock:
    """What one device pull wrote: 24 kHz mono PCM16, after volume."""

    pcm: bytes
    pulled_mono_ns: int  # when the device asked for it (written to the device buffer)
    play_mono_ns: int  # estimated time its first sample leaves the loudspeaker
    real_samples: int  # samples that were audio, not padding
    stream_id: str
    playing: bool  # the speaker state when it was written (idle blocks are only recorded)


@dataclass(frozen=True, slots=True)
class StateChange:
    playing: bool
    at_mono_ns: int


class Playout:
    def __init__(self, settings: SpeakerSettings, *, history: int = 500, keep_idle: bool = False):
        """``keep_idle``: also hand out the silent blocks written while idle (recording)."""
        self._settings = settings
        self._keep_idle = keep_idle
        self._lock = threading.Lock()
        self._jitter = JitterBuffer(
            target_ms=settings.jitter_target_ms, max_ms=settings.jitter_max_ms
        )
        self._convert = ToMono24k()
        self._volume = settings.volume
        self._hold_until_ns = 0
        self._interrupted: str | None = None
        self._stream_id = ""
        self._last_push_ns = 0
        # A stream that stops for this long has ended: the resampler's tail is played.
        self._tail_after_ns = max(20, settings.jitter_target_ms // 2) * _MS
        self._idle_ns = settings.idle_after_ms * _MS
        self._playing = False
        self._last_real_ns = 0
        # device thread -> loop: played blocks and state changes, oldest dropped
        self._out: collections.deque[PlayedBlock | StateChange] = collections.deque(maxlen=history)
        # latency bookkeeping: (stream position after the chunk, receive time)
        self._stamps: collections.deque[tuple[int, int]] = collections.deque(maxlen=10_000)
        self._pushed = 0  # samples pushed into the jitter buffer, ever
        # _pushed after the last audible chunk: nothing audible is queued once the device
        # has consumed this far (a live voice track never leaves the queue empty)
        self._audible_upto = 0
        self.latencies_ns: collections.deque[int] = collections.deque(maxlen=10_000)
        self.dropped_after_barge_in = 0
        self.barge_ins = 0

    # -- event loop side ---------------------------------------------------------------------

    def push(
        self, pcm: bytes, sample_rate_hz: int, channels: int, stream_id: str, now_ns: int
    ) -> bool:
        """Queue received voice; False when it was dropped (just after a barge-in)."""
        if now_ns < self._hold_until_ns or (stream_id and stream_id == self._interrupted):
            self.dropped_after_barge_in += 1
            return False
        mono = self._convert.convert(pcm, sample_rate_hz, channels)
        self._last_push_ns = now_ns
        self._queue(mono, stream_id, now_ns)
        return True

    def _queue(self, mono: bytes, stream_id: str, now_ns: int) -> None:
        with self._lock:
            self._stream_id = stream_id
            self._jitter.push(mono, now_ns)
            self._pushed += len(mono) // 2
            if _audible(mono):
                self._audible_upto = self._pushed
            self._stamps.append((self._pushed, now_ns))

    def barge_in(self, now_ns: int) -> int:
        """Drop everything queued; drop arriving audio for ``barge_in_hold_ms`` and the rest
        of the interrupted stream. Returns the samples dropped."""
        with self._lock:
            dropped = self._jitter.flush()
            self._stamps.clear()
            self._interrupted = self._stream_id or None
        self._hold_until_ns = now_ns + self._settings.barge_in_hold_ms * _MS
        self._convert.reset()
        self.barge_ins += 1
        return dropped

    def set_volume(self, level: float) -> None:
        self._volume = min(1.0, max(0.0, level))  # a float store: atomic for the device thread

    @property
    def volume(self) -> float:
        return self._volume

    @property
    def playing(self) -> bool:
        return self._playing

    def stats(self) -> tuple[float, int, int]:
        """(queued_ms, underruns, overruns)."""
        with self._lock:
            return self._jitter.queued_ms, self._jitter.underruns, self._jitter.overruns

    def audible_queued_ms(self) -> float:
        """How much audible voice is still queued (the silent tail of a stream not counted)."""
        with self._lock:
            consumed = self._pushed - self._jitter.queued_samples
            return max(0, self._audible_upto - consumed) * 1000 / PCM_RATE_HZ

    def drain(self) -> list[PlayedBlock | StateChange]:
        out: list[PlayedBlock | StateChange] = []
        while self._out:
            out.append(self._out.popleft())
        return out

    def tick(self, now_ns: int) -> None:
        """Called by the shell after device pulls and now and then: when the stream has paused,
        queue the resampler's tail; go idle when nothing audible has played for
        ``idle_after_ms`` and none is queued, even if the device stopped pulling (the change
        comes out of drain())."""
        if self._convert.pending and now_ns - self._last_push_ns >= self._tail_after_ns:
            tail = self._convert.flush()
            if tail:
                self._queue(tail, self._stream_id, now_ns)
        with self._lock:
            self._maybe_idle(now_ns)

    # -- device thread side ------------------------------------------------------------------

    def pull(self, n: int, now_ns: int, play_ns: int) -> bytes:
        """Exactly ``n`` samples for the device (silence when nothing is queued)."""
        with self._lock:
            pcm, real = self._jitter.pop(n, now_ns)
            consumed = self._pushed - self._jitter.queued_samples
            while self._stamps and self._stamps[0][0] <= consumed:
                self.latencies_ns.append(now_ns - self._stamps.popleft()[1])
            if real and _audible(pcm):
                self._last_real_ns = now_ns
                if not self._playing:
                    self._playing = True
                    self._out.append(StateChange(True, now_ns))
            else:
                self._maybe_idle(now_ns)
            stream_id = self._stream_id
        volume = self._volume
        if real and volume != 1.0:
            pcm = to_pcm(to_float(pcm) * np.float32(volume))
        if self._playing or self._keep_idle:
            self._out.append(PlayedBlock(pcm, now_ns, play_ns, real, stream_id, self._playing))
        return pcm

    def _maybe_idle(self, now_ns: int) -> None:
        if (
            self._playing
            and self._pushed - self._jitter.queued_samples >= self._audible_upto
            and now_ns - self._last_real_ns >= self._idle_ns
        ):
            self._playing = False
            self._out.append(StateChange(False, now_ns))


# Below this peak (about -54 dBFS) a block is silence for speaker.state: the WebRTC voice
# track sends silence between utterances, and "playing" must mean the avatar is talking
# (echo gating, end_after_speech), not that samples arrive.
AUDIBLE_PEAK = 64


def _audible(pcm: bytes) -> bool:
    x = np.frombuffer(pcm, dtype="<i2")
    return bool(x.size) and (int(x.max()) >= AUDIBLE_PEAK or int(x.min()) <= -AUDIBLE_PEAK)
