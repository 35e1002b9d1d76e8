"""The software echo cancellers behind ``mic.echo_mode = "software_aec"`` (``mic.aec``).

Two maintained cancellers, both native code called through ctypes (which releases the GIL for
the call); figures on the offline room and the choice in docs/aec.md:

``speex`` (the default)
    SpeexDSP's MDF echo canceller plus its preprocessor (residual echo suppression and noise
    suppression), from Debian's ``libspeexdsp1`` through a small ctypes binding; 10 ms
    blocks, 250 ms adaptive filter. Keeps the guest's voice intact in double talk.
``webrtc``
    WebRTC's audio processing module, as shipped in the ``livekit`` wheel
    (``livekit.rtc.AudioProcessingModule``, extra ``navtalk-agent[webrtc]``): AEC3 with its
    residual echo suppressor, noise suppression and the high-pass filter; 10 ms blocks.
    Deeper echo cut, but it suppresses the guest during double talk.

Both sit behind :class:`AlignedCanceller`, the :class:`~agent.audio.echo.EchoCanceller` the mic
calls: it tracks the delay between the reference it is handed (already lined up with the frame
by the speaker's play stamps) and the echo in the mic (:class:`~agent.audio.delay.DelayEstimator`,
GCC-PHAT), delays the reference by it (less ``lead_ms``, so the filter keeps a little room
before the direct path; a new delay restarts the engine, which re-converges faster than it
follows a jump) and feeds both, block by block, to the engine::

    reference ─▶ delay line (tracked delay − lead) ─┐
                                                    ├─▶ engine (AEC + NS) ─▶ cleaned frame
    mic ─────────────┬──────────────────────────────┘                 │
                     └─▶ DelayEstimator ◀── reference                  ▼
                                            barge-in gate ─▶ echo_only (VAD hears silence)

Barge-in gate: a canceller leaves some residual echo (reverberation longer than its filter,
bursts while it re-adapts). The VAD must not start a turn on it, so while the avatar speaks
(and ``hangover_ms`` after) each cleaned frame is judged ``echo_only`` when the canceller has
not converged yet (echo down ``converge_db`` over ``converge_window_ms``, at least
``warmup_ms`` of reference after a (re)start; it fails closed: a canceller that never converges
keeps barge-in off while the avatar speaks, and says so), or the frame is ``gate_db`` below the
mic's energy envelope (which decays like a room's tail), or below ``floor_dbfs``. The VAD hears
silence instead of such a frame; the published frame is the cleaned one, except before
convergence (``mute_until_converged``): then it is silence, as with ``half_duplex``, so that
no echo reaches the cloud's VAD either.

A failing engine never kills the mic: the frame passes unchanged, the error is counted and
logged once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.audio.delay import DelayEstimator
from agent.errors import ConfigError

__all__ = [
    "BUILTIN",
    "AlignedCanceller",
    "Engine",
    "SpeexEngine",
    "WebRtcEngine",
    "speex",
    "webrtc",
]

log = logging.getLogger(__name__)

Int16Array = npt.NDArray[np.int16]

# mic.aec -> the factory (mic.aec_factory, when set, takes precedence)
BUILTIN = {"speex": "agent.audio.aec:speex", "webrtc": "agent.audio.aec:webrtc"}


class Engine(Protocol):
    """One canceller library: a block of mic and of (aligned) reference in, cleaned mic out."""

    name: str
    block_samples: int

    def process(self, mic: Int16Array, ref: Int16Array) -> Int16Array: ...

    def reset(self) -> None:
        """Forget the echo path (the reference moved): adapt again from scratch."""

    def close(self) -> None: ...


class WebRtcEngine:
    """WebRTC APM (AEC3 + NS + high-pass) from the ``livekit`` wheel; 10 ms blocks."""

    name = "webrtc"

    def __init__(
        self,
        sample_rate_hz: int,
        *,
        noise_suppression: bool = True,
        high_pass_filter: bool = True,
        stream_delay_ms: int = 10,
    ):
        try:
            from livekit import rtc
        except ImportError as exc:  # pragma: no cover - the dependency is declared
            raise ConfigError(
                f"mic.aec = 'webrtc' needs the livekit package "
                f"(pip install 'navtalk-agent[webrtc]'): {exc}"
            ) from exc
        self._rtc = rtc
        self._rate = sample_rate_hz
        self.block_samples = sample_rate_hz // 100
        self._delay_ms = stream_delay_ms
        self._options = {
            "noise_suppression": noise_suppression,
            "high_pass_filter": high_pass_filter,
        }
        self._apm = self._new()

    def _new(self) -> Any:
        return self._rtc.AudioProcessingModule(echo_cancellation=True, **self._options)

    def reset(self) -> None:
        # AEC3 that has locked on one delay takes seconds to follow a jump of its reference;
        # a fresh one converges in under a second.
        self._apm = self._new()

    def process(self, mic: Int16Array, ref: Int16Array) -> Int16Array:
        n = self.block_samples
        far = self._rtc.AudioFrame(bytearray(ref.tobytes()), self._rate, 1, n)
        self._apm.process_reverse_stream(far)
        near = self._rtc.AudioFrame(bytearray(mic.tobytes()), self._rate, 1, n)
        self._apm.set_stream_delay_ms(self._delay_ms)
        self._apm.process_stream(near)  # in place
        return np.frombuffer(near.data, dtype=np.int16).copy()

    def close(self) -> None:
        self._apm = None  # the native handle is dropped with the object


# --- SpeexDSP through ctypes (speex/speex_echo.h, speex/speex_preprocess.h) -----------------------

_SPEEX_ECHO_SET_SAMPLING_RATE = 24
_SPEEX_PREPROCESS_SET_DENOISE = 0
_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS = 20
_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE = 22
_SPEEX_PREPROCESS_SET_ECHO_STATE = 24


@functools.cache
def _speexdsp() -> ctypes.CDLL:
    path = ctypes.util.find_library("speexdsp")
    if path is None:
        raise ConfigError("mic.aec = 'speex' needs libspeexdsp (apt-get install libspeexdsp1)")
    lib = ctypes.CDLL(path)
    vp, i = ctypes.c_void_p, ctypes.c_int
    lib.speex_echo_state_init.restype = vp
    lib.speex_echo_state_init.argtypes = [i, i]
    lib.speex_echo_state_destroy.argtypes = [vp]
    lib.speex_echo_cancellation.argtypes = [vp, vp, vp, vp]
    lib.speex_echo_ctl.argtypes = [vp, i, vp]
    lib.speex_echo_state_reset.argtypes = [vp]
    lib.speex_preprocess_state_init.restype = vp
    lib.speex_preprocess_state_init.argtypes = [i, i]
    lib.speex_preprocess_state_destroy.argtypes = [vp]
    lib.speex_preprocess_ctl.argtypes = [vp, i, vp]
    lib.speex_preprocess_run.argtypes = [vp, vp]
    return lib


class SpeexEngine:
    """SpeexDSP MDF echo canceller + preprocessor (residual echo and noise suppression)."""

    name = "speex"

    def __init__(
        self,
        sample_rate_hz: int,
        *,
        tail_ms: int = 250,
        preprocess: bool = True,
        echo_suppress_db: int = -40,
        echo_suppress_active_db: int = -15,
    ):
        self._lib = _speexdsp()
        self.block_samples = sample_rate_hz // 100
        self._echo = self._lib.speex_echo_state_init(
            self.block_samples, sample_rate_hz * tail_ms // 1000
        )
        if not self._echo:
            raise ConfigError("libspeexdsp: speex_echo_state_init failed")
        rate = ctypes.c_int(sample_rate_hz)
        self._lib.speex_echo_ctl(self._echo, _SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(rate))
        self._pre: int | None = None
        if preprocess:
            self._pre = self._lib.speex_preprocess_state_init(self.block_samples, sample_rate_hz)
            on = ctypes.c_int(1)
            self._lib.speex_preprocess_ctl(
                self._pre, _SPEEX_PREPROCESS_SET_DENOISE, ctypes.byref(on)
            )
            self._lib.speex_preprocess_ctl(
                self._pre, _SPEEX_PREPROCESS_SET_ECHO_STATE, ctypes.c_void_p(self._echo)
            )
            # residual echo attenuation, with the guest silent / talking (speexdsp: -40 / -15)
            for request, db in (
                (_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS, echo_suppress_db),
                (_SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE, echo_suppress_active_db),
            ):
                value = ctypes.c_int(db)
                self._lib.speex_preprocess_ctl(self._pre, request, ctypes.byref(value))
        self._out = np.zeros(self.block_samples, np.int16)

    def process(self, mic: Int16Array, ref: Int16Array) -> Int16Array:
        m = np.ascontiguousarray(mic, dtype=np.int16)
        r = np.ascontiguousarray(ref, dtype=np.int16)
        out = self._out
        self._lib.speex_echo_cancellation(self._echo, m.ctypes.data, r.ctypes.data, out.ctypes.data)
        if self._pre is not None:
            self._lib.speex_preprocess_run(self._pre, out.ctypes.data)
        return out.copy()

    def reset(self) -> None:
        self._lib.speex_echo_state_reset(self._echo)

    def close(self) -> None:
        if self._pre is not None:
            self._lib.speex_preprocess_state_destroy(self._pre)
            self._pre = None
        if self._echo:
            self._lib.speex_echo_state_destroy(self._echo)
            self._echo = None

    def __del__(self) -> None:
        self.close()


# --- the EchoCanceller the mic calls ------------------------------------------------------------


class AlignedCanceller:
    """Tracks the reference -> mic delay, shifts the reference, runs the engine per block."""

    def __init__(
        self,
        engine: Engine,
        *,
        sample_rate_hz: int = 24_000,
        frame_samples: int = 480,
        max_delay_ms: int = 300,
        lead_ms: int = 10,
        lookahead_ms: int = 20,
        warmup_ms: int = 3000,
        max_warmup_ms: int = 8000,
        converge_db: float = 20.0,
        converge_window_ms: int = 500,
        gate_db: float = 12.0,
        tail_decay_db_s: float = 30.0,
        active_dbfs: float = -50.0,
        floor_dbfs: float = -55.0,
        hangover_ms: int = 1000,
        mute_until_converged: bool = True,
    ):
        if frame_samples % engine.block_samples:
            raise ConfigError(
                f"mic.frame_ms: {frame_samples} samples is not a multiple of the "
                f"{engine.name} canceller's {engine.block_samples}-sample block"
            )
        self.engine = engine
        self.frame_samples = frame_samples
        # EchoControl hands over the reference this far ahead of each frame: the echo may come
        # before the play stamps say (the estimated delay includes it)
        self.lookahead_ms = lookahead_ms
        self.estimator = DelayEstimator(sample_rate_hz=sample_rate_hz, max_delay_ms=max_delay_ms)
        self._lead = sample_rate_hz * lead_ms // 1000
        self._history = np.zeros(self.estimator.max_lag + frame_samples, np.int16)
        self._shift = 0
        self._rate = sample_rate_hz
        self._warmup = sample_rate_hz * warmup_ms // 1000
        self._max_warmup = sample_rate_hz * max_warmup_ms // 1000
        self._converge = 10 ** (converge_db / 10)
        self._converge_window = sample_rate_hz * converge_window_ms // 1000
        self._mic_avg = self._out_avg = 0.0  # energies smoothed over ~converge_window_ms
        # Until then, every frame with the reference active is echo_only (barge-in waits).
        self.converged = False
        self._adapted = 0  # samples processed with the reference active since the last restart
        self._gate = 10 ** (-gate_db / 10)
        self._decay = 10 ** (-tail_decay_db_s / 10 / sample_rate_hz)  # per sample
        self._envelope = 0.0
        self._floor = (10 ** (floor_dbfs / 20) * 32768) ** 2
        self._hangover = sample_rate_hz * hangover_ms // 1000
        self._quiet = self._hangover + 1  # samples since the reference was last active
        self._active = (10 ** (active_dbfs / 20) * 32768) ** 2
        # The frame just processed held only (residual) echo: see the module docstring.
        self.echo_only = False
        self.mute_until_converged = mute_until_converged
        self.cleaned = b""  # the canceller's output for the last frame, even when muted
        self.muted_frames = 0
        self.frames = 0
        self.resets = 0  # engine restarts (the tracked delay moved)
        self.errors = 0  # frames passed through because the engine failed or the input was bad

    @property
    def shift_samples(self) -> int:
        """How far the reference is delayed before the engine sees it."""
        d = self.estimator.delay_samples
        return 0 if d is None else max(0, d - self._lead)

    def process(self, mic: bytes, reference: bytes, capture_mono_ns: int) -> bytes:
        self.frames += 1
        n = self.frame_samples
        if len(mic) != 2 * n or len(reference) != 2 * n:
            self._failed(f"frame of {len(mic)} / {len(reference)} bytes, expected {2 * n}")
            return mic
        m = np.frombuffer(mic, dtype="<i2")
        r = np.frombuffer(reference, dtype="<i2")
        scale = np.float32(1.0 / 32768.0)
        self.estimator.feed(m.astype(np.float32) * scale, r.astype(np.float32) * scale)
        h = self._history
        h[:-n] = h[n:]
        h[-n:] = r
        shift = self.shift_samples
        if shift != self._shift:
            log.info(
                "= %s canceller: reference delayed %d -> %d samples, restarting it",
                self.engine.name,
                self._shift,
                shift,
            )
            self._shift = shift
            self.engine.reset()
            self._adapted = 0
            self.converged = False
            self._mic_avg = self._out_avg = 0.0
            self.resets += 1
        aligned = h[len(h) - n - shift : len(h) - shift]
        out = np.empty(n, np.int16)
        b = self.engine.block_samples
        try:
            for i in range(0, n, b):
                out[i : i + b] = self.engine.process(m[i : i + b], aligned[i : i + b])
        except Exception as exc:  # a failing engine must not end the mic
            self._failed(f"{self.engine.name} canceller: {exc!r}")
            self.echo_only = self._reference_active()
            return mic
        self._judge(m, out)
        self.cleaned = bytes(out.astype("<i2").tobytes())
        if self.mute_until_converged and self.echo_only and not self.converged:
            # not converged while the avatar speaks: publish silence, as half_duplex does, so
            # that no echo reaches the cloud's own VAD either
            self.muted_frames += 1
            return bytes(len(self.cleaned))
        return self.cleaned

    def _reference_active(self) -> bool:
        """The avatar spoke within the delay line or the hangover after it."""
        h = self._history.astype(np.float32)
        if float(np.mean(np.square(h))) > self._active:
            self._quiet = 0
        else:
            self._quiet += self.frame_samples
        return self._quiet <= self._hangover

    def _judge(self, mic: Int16Array, out: Int16Array) -> None:
        if not self._reference_active():
            self.echo_only = False
            return
        self._adapted += len(mic)
        e_mic = float(np.mean(np.square(mic.astype(np.float32))))
        e_out = float(np.mean(np.square(out.astype(np.float32))))
        if not self.converged:
            # converged: the echo is down by converge_db over the last converge_window_ms. Until
            # then barge-in stays off while the avatar speaks (fail closed: no false barge-in);
            # a canceller that does not converge at all is reported once (max_warmup_ms).
            a = min(1.0, len(mic) / self._converge_window)
            self._mic_avg += a * (e_mic - self._mic_avg)
            self._out_avg += a * (e_out - self._out_avg)
            down_db = 10 * np.log10(max(self._mic_avg, 1e-9) / max(self._out_avg, 1e-9))
            if self._adapted >= self._warmup and self._mic_avg >= self._out_avg * self._converge:
                log.info(
                    "= %s canceller converged after %d ms of reference (echo down %.1f dB)",
                    self.engine.name,
                    self._adapted * 1000 // self._rate,
                    down_db,
                )
                self.converged = True
            else:
                if self._adapted - len(mic) < self._max_warmup <= self._adapted:
                    log.warning(
                        "%s canceller has not converged after %d ms of the avatar's voice (echo "
                        "down %.1f dB): barge-in by voice stays off while the avatar speaks; "
                        "is the reference late, or does this mic cancel echo itself "
                        "(echo_mode = none)?",
                        self.engine.name,
                        self._adapted * 1000 // self._rate,
                        down_db,
                    )
                self.echo_only = True
                return
        # the mic's energy envelope decays like a room's tail: the residual of the reverberation
        # after a phrase is judged against the phrase, not against its own faded level
        self._envelope = max(e_mic, self._envelope * self._decay ** len(mic))
        self.echo_only = e_out < max(self._envelope * self._gate, self._floor)

    def _failed(self, why: str) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning("echo canceller passed a frame through (%d so far): %s", self.errors, why)

    def close(self) -> None:
        self.engine.close()


def webrtc(sample_rate_hz: int, frame_samples: int) -> AlignedCanceller:
    """``mic.aec = "webrtc"``: WebRTC AEC3 + noise suppression + high-pass."""
    return AlignedCanceller(
        WebRtcEngine(sample_rate_hz), sample_rate_hz=sample_rate_hz, frame_samples=frame_samples
    )


def speex(sample_rate_hz: int, frame_samples: int) -> AlignedCanceller:
    """``mic.aec = "speex"``: SpeexDSP echo canceller + preprocessor."""
    return AlignedCanceller(
        SpeexEngine(sample_rate_hz), sample_rate_hz=sample_rate_hz, frame_samples=frame_samples
    )
