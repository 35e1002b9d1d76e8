"""The emulator's server VAD: webrtcvad at 16 kHz after soxr resampling, sans I/O."""

from __future__ import annotations

import enum
from collections import deque

import numpy as np
import soxr
import webrtcvad

__all__ = ["IN_RATE_HZ", "UtteranceRecorder", "VadEvent", "VoiceDetector"]

IN_RATE_HZ = 24_000  # what clients send [seed]
VAD_RATE_HZ = 16_000
VAD_FRAME_MS = 30
VAD_FRAME_BYTES = VAD_RATE_HZ * VAD_FRAME_MS // 1000 * 2
PREROLL_S = 0.3  # audio kept from before the VAD's start (the onset of the first word)
MAX_UTTERANCE_S = 20.0  # an utterance's audio is bounded (the rest is not recognized)


class VadEvent(enum.Enum):
    START = "start"
    STOP = "stop"


class VoiceDetector:
    """PCM16 24 kHz in, (:class:`VadEvent`, audio time s) out. Audio time is the received
    audio's own clock (samples received), not the wall clock."""

    def __init__(self, mode: int = 3, start_ms: int = 90, end_ms: int = 600) -> None:
        self._vad = webrtcvad.Vad(mode)
        self._resampler = soxr.ResampleStream(IN_RATE_HZ, VAD_RATE_HZ, 1, dtype="int16")
        self._buf = bytearray()
        self._start_frames = max(1, start_ms // VAD_FRAME_MS)
        self._end_frames = max(1, end_ms // VAD_FRAME_MS)
        self._voiced = 0
        self._silent = 0
        self._frames = 0
        self.speaking = False
        self.started_at_s = 0.0

    def feed(self, pcm24k: bytes) -> list[tuple[VadEvent, float]]:
        usable = len(pcm24k) - len(pcm24k) % 2
        x = np.frombuffer(pcm24k[:usable], dtype="<i2")
        y = self._resampler.resample_chunk(x)
        self._buf += np.asarray(y, dtype="<i2").tobytes()
        out = []
        while len(self._buf) >= VAD_FRAME_BYTES:
            frame = bytes(self._buf[:VAD_FRAME_BYTES])
            del self._buf[:VAD_FRAME_BYTES]
            self._frames += 1
            t = self._frames * VAD_FRAME_MS / 1000
            if self._vad.is_speech(frame, VAD_RATE_HZ):
                self._voiced += 1
                self._silent = 0
            else:
                self._silent += 1
                self._voiced = 0
            if not self.speaking and self._voiced >= self._start_frames:
                self.speaking = True
                self.started_at_s = t - self._voiced * VAD_FRAME_MS / 1000
                out.append((VadEvent.START, self.started_at_s))
            elif self.speaking and self._silent >= self._end_frames:
                self.speaking = False
                out.append((VadEvent.STOP, t - self._silent * VAD_FRAME_MS / 1000))
        return out


class UtteranceRecorder:
    """The audio of one utterance, for the recognizer: what arrives between :meth:`start`
    and :meth:`stop`, plus :data:`PREROLL_S` from before the start (the VAD fires only
    after ``start_ms`` of voice), at most :data:`MAX_UTTERANCE_S`."""

    def __init__(self, preroll_s: float = PREROLL_S, max_s: float = MAX_UTTERANCE_S) -> None:
        self._preroll: deque[bytes] = deque()
        self._preroll_bytes = 0
        self._limit = int(preroll_s * IN_RATE_HZ * 2)
        self._max = int(max_s * IN_RATE_HZ * 2)
        self._current: bytearray | None = None

    def feed(self, pcm: bytes) -> None:
        if self._current is not None:
            room = self._max - len(self._current)
            if room > 0:
                self._current += pcm[:room]
        self._preroll.append(pcm)
        self._preroll_bytes += len(pcm)
        while self._preroll and self._preroll_bytes - len(self._preroll[0]) >= self._limit:
            self._preroll_bytes -= len(self._preroll.popleft())

    def start(self) -> None:
        self._current = bytearray(b"".join(self._preroll))

    def stop(self) -> bytes:
        pcm = bytes(self._current or b"")
        self._current = None
        return pcm
