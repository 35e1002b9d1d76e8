"""Echo handling for the mic: keep the avatar's own voice from coming back as the guest's.

Three modes (``mic.echo_mode``):

``none``
    The microphone array cancels echo itself (hardware AEC, e.g. a ReSpeaker or a
    conference speakerphone). Frames pass unchanged.

``half_duplex``
    While the speaker plays (``speaker.state``), and for ``echo_tail_ms`` after it stops
    (output latency plus room reverberation), every mic frame is replaced by digital silence
    and the VAD is gated, so the avatar cannot interrupt itself. The guest cannot barge in
    by voice in this mode.

``software_aec``
    A software echo canceller: the built-in ``mic.aec`` (``speex`` or ``webrtc``,
    :mod:`agent.audio.aec`, docs/aec.md) or one plugged in by the integrator
    (``mic.aec_factory = "package.module:factory"``). The speaker publishes what it played on
    ``audio.played`` (24 kHz mono PCM16; ``capture_mono_ns`` = when it reaches the
    loudspeaker, estimated from PortAudio's output latency). The mic keeps that reference in
    a :class:`ReferenceBuffer` and hands the canceller each mic frame together with the
    reference that was playing at the frame's capture time, sample-aligned and of the same
    length (silence where nothing played). The canceller still has to model the acoustic
    path (speaker -> room -> mic, typically 1-50 ms plus the converters and the stamping
    error): the built-in ones track that delay (:mod:`agent.audio.delay`).

The hook, :class:`EchoCanceller`::

    def factory(sample_rate_hz: int, frame_samples: int) -> EchoCanceller: ...

    class MyAec:
        def process(self, mic: bytes, reference: bytes, capture_mono_ns: int) -> bytes:
            # mic, reference: 24 kHz mono PCM16, same length (frame_samples samples);
            # return the cleaned mic frame (same length). Called on the event loop for
            # every 20 ms frame: keep it well under a millisecond, or use native code.
            ...

Optional attributes a canceller may have (the built-in ones do): ``lookahead_ms`` (the
reference handed over runs this far ahead of the frame, for echo that comes before its play
stamp) and ``echo_only`` (after ``process``: the frame held only residual echo, so the VAD
must not start a turn on it; the published frame is unchanged).

Everything here is sans-I/O: times are passed in.
"""

from __future__ import annotations

import collections
import enum
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from agent.errors import ConfigError

__all__ = [
    "EchoCanceller",
    "EchoControl",
    "EchoMode",
    "EchoResult",
    "ReferenceBuffer",
    "load_canceller",
]

log = logging.getLogger(__name__)

_SAMPLE_BYTES = 2
_SNAP_MS = 100  # software_aec: play stamp jitter absorbed to keep the reference continuous
_CAPTURE_SNAP_MS = 20  # software_aec: capture stamp jitter absorbed (they are smoothed already)
_STEP_BLOCKS = 5  # continuous reference: a step must persist this many blocks ...
_STEP_NS = 5_000_000  # ... beyond this to move the chain


class EchoMode(enum.StrEnum):
    NONE = "none"
    HALF_DUPLEX = "half_duplex"
    SOFTWARE_AEC = "software_aec"


@runtime_checkable
class EchoCanceller(Protocol):
    """The software-AEC hook; see the module docstring."""

    def process(self, mic: bytes, reference: bytes, capture_mono_ns: int) -> bytes: ...


CancellerFactory = Callable[[int, int], EchoCanceller]


def load_canceller(spec: str, sample_rate_hz: int, frame_samples: int) -> EchoCanceller:
    """Build the canceller named by ``"module:callable"``; ConfigError when it cannot."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"mic.aec_factory = {spec!r}: expected 'package.module:callable'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"mic.aec_factory = {spec!r}: {exc}") from exc
    canceller = factory(sample_rate_hz, frame_samples)
    if not isinstance(canceller, EchoCanceller):
        raise ConfigError(f"mic.aec_factory = {spec!r} returned {canceller!r}, no process()")
    return canceller


class ReferenceBuffer:
    """What the speaker played, by play time: gives the reference under a mic frame."""

    def __init__(self, *, max_ms: int = 1000, sample_rate_hz: int = 24_000, snap_ms: int = 0):
        self._rate = sample_rate_hz
        self._max_ns = max_ms * 1_000_000
        # Continuous mode (snap_ms > 0), for an echo canceller, which needs a continuous
        # reference: a gap or an overlap of a few samples is a jump of its echo path. Play
        # stamps jitter (PulseAudio: +-10 ms, up to 40), so a block stamped within snap_ms of the
        # previous block's end continues it exactly; only a step that persists (the median of
        # the last _STEP_BLOCKS deviations beyond _STEP_NS: a real gap in playback, drift)
        # moves the chain, and a deviation beyond snap_ms (a new utterance) re-anchors it.
        self._snap_ns = snap_ms * 1_000_000
        self._deviations: collections.deque[int] = collections.deque(maxlen=_STEP_BLOCKS)
        self.reanchors = 0  # chain re-anchored on a stamp (new utterance, big gap)
        self.steps = 0  # chain moved by a persistent step
        self._blocks: collections.deque[tuple[int, bytes]] = collections.deque()

    def add(self, pcm: bytes, play_mono_ns: int) -> None:
        if self._snap_ns and self._blocks:
            play_mono_ns = self._continue(play_mono_ns)
        self._blocks.append((play_mono_ns, pcm))
        newest_end = play_mono_ns + self._duration_ns(pcm)
        while self._blocks and self._end(self._blocks[0]) < newest_end - self._max_ns:
            self._blocks.popleft()

    def _continue(self, play_mono_ns: int) -> int:
        end = self._end(self._blocks[-1])
        deviation = play_mono_ns - end
        if abs(deviation) > self._snap_ns:
            self._deviations.clear()
            self.reanchors += 1
            return play_mono_ns
        self._deviations.append(deviation)
        if len(self._deviations) == self._deviations.maxlen:
            step = sorted(self._deviations)[len(self._deviations) // 2]
            if abs(step) > _STEP_NS:
                self._deviations.clear()
                self.steps += 1
                return end + step
        return end

    def _duration_ns(self, pcm: bytes) -> int:
        return (len(pcm) // _SAMPLE_BYTES) * 1_000_000_000 // self._rate

    def _end(self, block: tuple[int, bytes]) -> int:
        return block[0] + self._duration_ns(block[1])

    def window(self, start_mono_ns: int, n_samples: int) -> bytes:
        """``n_samples`` of reference starting at ``start_mono_ns``; silence where none."""
        out = bytearray(n_samples * _SAMPLE_BYTES)
        for t0, pcm in self._blocks:
            # sample offset of this block relative to the window start
            offset = round((t0 - start_mono_ns) * self._rate / 1e9)
            n = len(pcm) // _SAMPLE_BYTES
            lo, hi = max(0, offset), min(n_samples, offset + n)
            if lo < hi:
                out[lo * 2 : hi * 2] = pcm[(lo - offset) * 2 : (hi - offset) * 2]
        return bytes(out)


@dataclass(frozen=True, slots=True)
class EchoResult:
    pcm: bytes  # the frame to publish
    gated: bool  # True: the frame was silenced; do not feed the VAD
    # software_aec: the canceller judged the frame to hold only (residual) echo; the VAD must
    # not start a turn on it (a canceller says so with an ``echo_only`` attribute)
    echo_only: bool = False


class EchoControl:
    """Applies the echo mode to each mic frame; fed with speaker state and reference."""

    def __init__(
        self,
        mode: EchoMode,
        *,
        tail_ms: int = 200,
        canceller: EchoCanceller | None = None,
        reference_ms: int = 1000,
        sample_rate_hz: int = 24_000,
    ):
        if mode is EchoMode.SOFTWARE_AEC and canceller is None:
            raise ConfigError("mic.echo_mode = 'software_aec' needs mic.aec_factory")
        self.mode = mode
        self._tail_ns = tail_ms * 1_000_000
        self._canceller = canceller
        self._reference = ReferenceBuffer(
            max_ms=reference_ms, sample_rate_hz=sample_rate_hz, snap_ms=_SNAP_MS
        )
        self._rate = sample_rate_hz
        self._next_ref_ns: int | None = None  # software_aec: where the last window ended
        self._playing = False
        self._stopped_at_ns: int | None = None
        self.gated_frames = 0

    @property
    def speaker_playing(self) -> bool:
        return self._playing

    def on_speaker_state(self, playing: bool, at_mono_ns: int) -> None:
        if playing == self._playing:
            return
        log.debug("= echo: speaker %s", "playing" if playing else "idle")
        self._playing = playing
        self._stopped_at_ns = None if playing else at_mono_ns

    def on_reference(self, pcm: bytes, play_mono_ns: int) -> None:
        if self.mode is EchoMode.SOFTWARE_AEC:
            self._reference.add(pcm, play_mono_ns)

    def is_gated(self, capture_mono_ns: int) -> bool:
        if self.mode is not EchoMode.HALF_DUPLEX:
            return False
        if self._playing:
            return True
        stopped = self._stopped_at_ns
        return stopped is not None and capture_mono_ns < stopped + self._tail_ns

    def process(self, pcm: bytes, capture_mono_ns: int) -> EchoResult:
        if self.mode is EchoMode.HALF_DUPLEX:
            if self.is_gated(capture_mono_ns):
                self.gated_frames += 1
                return EchoResult(bytes(len(pcm)), gated=True)
            return EchoResult(pcm, gated=False)
        if self.mode is EchoMode.SOFTWARE_AEC and self._canceller is not None:
            n = len(pcm) // _SAMPLE_BYTES
            # The reference continues where the last window ended, while the capture stamps
            # agree with that within _CAPTURE_SNAP_MS (their jitter would cut the reference into
            # pieces); a larger step (a gap in capture, clock drift) re-aligns on the stamp.
            start = self._next_ref_ns
            if start is None or abs(capture_mono_ns - start) > _CAPTURE_SNAP_MS * 1_000_000:
                start = capture_mono_ns
            self._next_ref_ns = start + n * 1_000_000_000 // self._rate
            # A canceller may ask for some of the reference's future (``lookahead_ms``): play
            # stamps can run late of the echo (PulseAudio: the echo arrived 12 ms before its
            # stamp), and a canceller needs the reference first; the built-in ones estimate the
            # delay, lookahead included.
            ahead_ns = int(getattr(self._canceller, "lookahead_ms", 0)) * 1_000_000
            ref = self._reference.window(start + ahead_ns, n)
            cleaned = self._canceller.process(pcm, ref, capture_mono_ns)
            echo_only = bool(getattr(self._canceller, "echo_only", False))
            return EchoResult(cleaned, gated=False, echo_only=echo_only)
        return EchoResult(pcm, gated=False)
