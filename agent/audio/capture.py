"""The mic's core: echo handling, local VAD and the pre-roll ring, per captured frame. Sans-I/O.

::

    captured frame ─▶ EchoControl ─▶ published frame ─▶ PreRollBuffer
                          │ (not gated)
                          ▼
                   VoiceActivityDetector ─▶ VAD events

The shell (``services/mic.py``) reads frames from the device, feeds them here and publishes
what comes out; speaker state, played reference and pre-roll requests come from the bus.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agent.audio.aec import BUILTIN
from agent.audio.echo import EchoCanceller, EchoControl, EchoMode, load_canceller
from agent.audio.pcm import PCM_RATE_HZ
from agent.audio.preroll import PreRollBuffer
from agent.audio.settings import MicSettings
from agent.audio.vad import VadEvent, VoiceActivityDetector

__all__ = ["CaptureCore", "CaptureResult", "build_canceller"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CaptureResult:
    pcm: bytes  # the frame to publish on audio.mic (silence when gated)
    gated: bool  # half-duplex: the speaker was playing
    events: tuple[VadEvent, ...]  # VAD changes decided by this frame


def build_canceller(settings: MicSettings) -> EchoCanceller:
    """The software echo canceller: ``mic.aec_factory`` if set, else the built-in ``mic.aec``."""
    frame_samples = PCM_RATE_HZ * settings.frame_ms // 1000
    spec = settings.aec_factory or BUILTIN[settings.aec]
    return load_canceller(spec, PCM_RATE_HZ, frame_samples)


class CaptureCore:
    def __init__(self, settings: MicSettings, *, canceller: EchoCanceller | None = None):
        self.settings = settings
        mode = EchoMode(settings.echo_mode)
        if mode is EchoMode.SOFTWARE_AEC and canceller is None:
            canceller = build_canceller(settings)
        self.echo = EchoControl(
            mode,
            tail_ms=settings.echo_tail_ms,
            canceller=canceller,
            reference_ms=settings.aec_reference_ms,
        )
        self.vad: VoiceActivityDetector | None = (
            VoiceActivityDetector(
                aggressiveness=settings.vad_aggressiveness,
                frame_ms=settings.vad_frame_ms,
                start_ms=settings.vad_start_ms,
                stop_ms=settings.vad_stop_ms,
            )
            if settings.vad_enabled
            else None
        )
        self.preroll = PreRollBuffer(max_ms=settings.preroll_ms)
        self.frames = 0
        self._was_gated = False

    def process(self, pcm: bytes, capture_mono_ns: int) -> CaptureResult:
        """One captured frame in; the frame to publish and any VAD changes out."""
        self.frames += 1
        echo = self.echo.process(pcm, capture_mono_ns)
        events: list[VadEvent] = []
        if self.vad is not None:
            if echo.gated:
                if not self._was_gated:  # gating starts: a turn in progress ends here
                    event = self.vad.force_silent(capture_mono_ns)
                    if event is not None:
                        events.append(event)
            elif echo.echo_only:  # residual echo only: the VAD hears silence, timing kept
                events += self.vad.feed(bytes(len(echo.pcm)), capture_mono_ns)
            else:
                events += self.vad.feed(echo.pcm, capture_mono_ns)
        self._was_gated = echo.gated
        self.preroll.append(echo.pcm, capture_mono_ns)
        return CaptureResult(echo.pcm, echo.gated, tuple(events))

    def on_speaker_state(self, playing: bool, at_mono_ns: int) -> None:
        self.echo.on_speaker_state(playing, at_mono_ns)

    def on_reference(self, pcm: bytes, play_mono_ns: int) -> None:
        self.echo.on_reference(pcm, play_mono_ns)

    def preroll_snapshot(self, duration_ms: int) -> tuple[bytes, int]:
        """(pcm, end_mono_ns) of the last ``duration_ms`` published."""
        pcm, _start, end = self.preroll.snapshot(duration_ms)
        return pcm, end
