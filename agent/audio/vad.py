"""Local voice activity: webrtcvad plus turn logic (start/stop hangover). Sans-I/O.

Feed 24 kHz mono PCM16 blocks with the capture time of their first sample; get back the
changes of state. webrtcvad accepts only 8/16/32/48 kHz, so the input is resampled to 16 kHz
(soxr, streaming; soxr removes its own delay, so 16 kHz sample ``i`` is input time
``i / 16000``) and cut into 10, 20 or 30 ms frames.

Turn logic::

    SILENT ──(speech frames for start_ms in a row)──▶ SPEAKING   onset  = first speech frame
    SPEAKING ──(non-speech for stop_ms in a row)──▶ SILENT      offset = end of last speech frame

The reported times are capture times (CLOCK_MONOTONIC ns) of the labelled boundary, not of the
moment the decision was taken (which is later by the hangover and the resampler's latency).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import numpy as np
import webrtcvad

from agent.audio.pcm import stream_resampler, to_float, to_pcm

__all__ = ["VadEvent", "VadPhase", "VoiceActivityDetector"]

log = logging.getLogger(__name__)

_VAD_RATE_HZ = 16_000

# webrtcvad keeps flagging speech for a few frames after the voice stops (its built-in
# overhang, WebRTC common_audio/vad/vad_core.c kOverHangMax1*/kOverHangMax2*): per mode, for
# 10/20/30 ms frames; the second row applies after more than 6 speech frames in a row. The
# offset is moved back by it so that it marks the end of the voice, not of the overhang.
_OVERHANG: dict[int, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    0: ((8, 4, 3), (14, 7, 5)),
    1: ((8, 4, 3), (14, 7, 5)),
    2: ((6, 3, 2), (9, 5, 3)),
    3: ((6, 3, 2), (9, 5, 3)),
}
_MAX_SPEECH_FRAMES = 6


class VadPhase(enum.Enum):
    SILENT = "silent"
    SPEAKING = "speaking"


@dataclass(frozen=True, slots=True)
class VadEvent:
    """A change of voice activity: speaking started (onset) or stopped (offset)."""

    speaking: bool
    at_mono_ns: int  # capture time of the boundary (first speech frame / end of the last one)
    decided_mono_ns: int  # capture time of the end of the frame where it was decided


class VoiceActivityDetector:
    """webrtcvad on 16 kHz frames with start/stop hangover; see the module docstring."""

    def __init__(
        self,
        *,
        aggressiveness: int = 2,
        frame_ms: int = 30,
        start_ms: int = 60,
        stop_ms: int = 300,
        warmup_ms: int = 150,
        input_rate_hz: int = 24_000,
    ):
        if frame_ms not in (10, 20, 30):
            raise ValueError(f"webrtcvad frames are 10, 20 or 30 ms, not {frame_ms}")
        self._vad = webrtcvad.Vad(aggressiveness)
        short, long = _OVERHANG[aggressiveness]
        self._overhang = (short[frame_ms // 10 - 1], long[frame_ms // 10 - 1])
        self._speech_run = 0  # consecutive frames webrtcvad flagged as speech
        self._frame_ms = frame_ms
        self._n = _VAD_RATE_HZ * frame_ms // 1000
        self._frame_ns = frame_ms * 1_000_000
        self._start_frames = max(1, -(-start_ms // frame_ms))  # ceil
        self._stop_frames = max(1, -(-stop_ms // frame_ms))
        self._in_rate = input_rate_hz
        # LQ: still a band-limited (sinc) filter, and soxr's block latency is ~15 ms instead of
        # HQ's ~35 ms; the detector only needs the speech band.
        # float32, not int16: soxr's int16 output dithers, and webrtcvad calls dither speech
        # while it adapts.
        self._resample = stream_resampler(input_rate_hz, _VAD_RATE_HZ)
        self._buf = np.zeros(0, np.float32)
        # webrtcvad flags the first few frames of any faint noise as speech while its noise
        # model adapts: those frames may not start a turn.
        self._warmup_frames = -(-warmup_ms // frame_ms)
        self._in_index = 0  # input samples fed so far
        self._out_index = 0  # 16 kHz index of _buf[0]
        self._anchor_in = 0  # input index of the latest block's first sample ...
        self._anchor_ns = 0  # ... and its capture time
        self._phase = VadPhase.SILENT
        self._run = 0  # frames in a row that disagree with the phase
        self._run_start_ns = 0  # capture time of the first of them
        self.frames = 0  # VAD frames classified
        self.speech_frames = 0

    @property
    def phase(self) -> VadPhase:
        return self._phase

    @property
    def speaking(self) -> bool:
        return self._phase is VadPhase.SPEAKING

    def _set_phase(self, phase: VadPhase, at_ns: int) -> None:
        log.debug("= vad %s -> %s at %d", self._phase.value, phase.value, at_ns)
        self._phase = phase
        self._run = 0

    def _time_of(self, out_index: int) -> int:
        """Capture time of 16 kHz sample ``out_index``, from the latest input anchor."""
        in_pos = out_index * self._in_rate / _VAD_RATE_HZ
        return self._anchor_ns + round((in_pos - self._anchor_in) * 1e9 / self._in_rate)

    def feed(self, pcm: bytes, capture_mono_ns: int) -> list[VadEvent]:
        """Classify a block of 24 kHz mono PCM16 captured at ``capture_mono_ns``."""
        x = to_float(pcm)
        self._anchor_in, self._anchor_ns = self._in_index, capture_mono_ns
        self._in_index += len(x)
        y = self._resample.resample_chunk(x)
        self._buf = np.concatenate((self._buf, y)) if len(self._buf) else y
        events: list[VadEvent] = []
        while len(self._buf) >= self._n:
            frame, self._buf = self._buf[: self._n], self._buf[self._n :]
            start_ns = self._time_of(self._out_index)
            self._out_index += self._n
            pcm16 = to_pcm(frame)
            is_speech = bool(self._vad.is_speech(pcm16, _VAD_RATE_HZ))
            if self.frames < self._warmup_frames:
                is_speech = False
            event = self._step(is_speech, start_ns)
            if event is not None:
                events.append(event)
        return events

    def _step(self, is_speech: bool, start_ns: int) -> VadEvent | None:
        self.frames += 1
        self.speech_frames += is_speech
        end_ns = start_ns + self._frame_ns
        run_before = self._speech_run
        self._speech_run = self._speech_run + 1 if is_speech else 0
        if is_speech == self.speaking:
            self._run = 0
            return None
        if self._run == 0:
            self._run_start_ns = start_ns
            if self.speaking:  # the first non-speech frame: the voice ended `overhang` earlier
                long_run = run_before > _MAX_SPEECH_FRAMES + self._overhang[1]
                overhang = self._overhang[1] if long_run else self._overhang[0]
                overhang = min(overhang, max(0, run_before - 1))
                self._run_start_ns = start_ns - overhang * self._frame_ns
        self._run += 1
        if self.speaking and self._run >= self._stop_frames:
            at = self._run_start_ns
            self._set_phase(VadPhase.SILENT, at)
            return VadEvent(speaking=False, at_mono_ns=at, decided_mono_ns=end_ns)
        if not self.speaking and self._run >= self._start_frames:
            at = self._run_start_ns
            self._set_phase(VadPhase.SPEAKING, at)
            return VadEvent(speaking=True, at_mono_ns=at, decided_mono_ns=end_ns)
        return None

    def force_silent(self, now_mono_ns: int) -> VadEvent | None:
        """Gate the detector (half-duplex echo handling): end any turn now, forget the run.

        Returns the offset event when a turn was in progress. The resampler is reset, so the
        next :meth:`feed` starts a fresh stream.
        """
        self._resample.clear()
        self._buf = np.zeros(0, np.float32)
        self._out_index = 0
        self._in_index = 0
        self._run = 0
        if self.speaking:
            self._set_phase(VadPhase.SILENT, now_mono_ns)
            return VadEvent(speaking=False, at_mono_ns=now_mono_ns, decided_mono_ns=now_mono_ns)
        return None
