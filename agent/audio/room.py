"""The offline room: the avatar's voice through a room into the mic, with a guest and noise.

Exact and deterministic (seeded), for the echo canceller's tests and ``bench/bench_aec.py``::

    avatar speech (espeak-ng, en-us) ─▶ RIR speaker→mic ─▶ + delay_ms ─▶ × echo gain ─┐
    guest speech (espeak-ng, en-gb+f3) ─▶ RIR guest→mic ─────────────────────────────┼▶ mic
    noise (seeded Gaussian, noise_dbfs) ─────────────────────────────────────────────┘

Room impulse responses come from ``pyroomacoustics`` (image source model of a shoebox room,
absorption from the RT60 by Sabine's formula). Its RIRs carry a 40-sample fractional-delay
offset plus the direct path's flight time; ``delay_ms`` is the extra speaker→mic delay
(converters, stamping error) on top. Levels: the guest's speech reaches the mic at
``GUEST_DBFS`` (RMS over its active frames); the echo at ``echo_gain_db`` over that.

:func:`play` runs a scene through the mic's real core (:class:`~agent.audio.capture.CaptureCore`:
echo control with the reference buffer, canceller, VAD) exactly as ``services/mic.py`` does,
frame by frame with capture and play stamps, and times the canceller's CPU.
"""

from __future__ import annotations

import functools
import io
import subprocess
import time
import wave
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import soxr

from agent.audio.capture import CaptureCore
from agent.audio.echo import EchoCanceller
from agent.audio.pcm import PCM_RATE_HZ
from agent.audio.settings import MicSettings
from agent.audio.vad import VadEvent

__all__ = [
    "AVATAR_VOICE",
    "GUEST_DBFS",
    "GUEST_VOICE",
    "ROOMS",
    "Room",
    "RoomRun",
    "Scene",
    "active_rms",
    "avatar_talk",
    "erle_db",
    "impulse_response",
    "near_correlation",
    "play",
    "render",
    "speech",
]

FloatArray = npt.NDArray[np.float32]
Vec3 = tuple[float, float, float]

RATE = PCM_RATE_HZ
AVATAR_VOICE = "en-us"
GUEST_VOICE = "en-gb+f3"
GUEST_DBFS = -30.0  # the guest's speech at the mic (active RMS)
_T0_NS = 10_000_000_000  # capture clock at the scene's first sample (any value)
# audio.played arrives ahead of its play time (the output latency): frames of reference
# handed to the mic before the frame captured at the same time
_REFERENCE_AHEAD = 3


@dataclass(frozen=True, slots=True)
class Room:
    name: str
    dims_m: Vec3
    rt60_s: float
    speaker_m: Vec3
    mic_m: Vec3
    guest_m: Vec3
    delay_ms: float  # extra speaker -> mic delay on top of the acoustic path
    echo_gain_db: float  # echo level at the mic over the guest's
    noise_dbfs: float = -65.0


ROOMS: tuple[Room, ...] = (
    Room("booth", (2.4, 2.0, 2.4), 0.15, (1.0, 0.5, 1.2), (1.2, 0.55, 1.25), (1.1, 1.5, 1.5),
         delay_ms=5, echo_gain_db=0),
    Room("office", (4.0, 3.5, 2.7), 0.3, (1.0, 1.0, 1.2), (1.3, 1.05, 1.25), (1.6, 2.5, 1.6),
         delay_ms=40, echo_gain_db=3),
    Room("meeting", (6.0, 4.5, 3.0), 0.45, (2.0, 1.0, 1.1), (2.25, 1.1, 1.3), (2.5, 2.8, 1.6),
         delay_ms=90, echo_gain_db=6),
    Room("lobby", (9.0, 7.0, 3.5), 0.7, (3.0, 2.0, 1.2), (3.4, 2.1, 1.3), (3.3, 3.5, 1.6),
         delay_ms=150, echo_gain_db=6),
    Room("kiosk", (5.0, 4.0, 3.0), 0.5, (2.0, 0.4, 1.3), (2.2, 0.45, 1.45), (2.1, 1.6, 1.6),
         delay_ms=20, echo_gain_db=6, noise_dbfs=-55.0),
)  # fmt: skip

AVATAR_LINES = (
    "Welcome to the Grand Hotel. How can I help you today?",
    "Your room is on the third floor, the elevator is just to your left.",
    "Breakfast is served from seven until ten every morning in the garden restaurant.",
    "The spa and the pool are open until nine in the evening.",
    "I can book a taxi to the airport for you, it takes about forty minutes.",
    "Checkout is at noon, but we can keep your luggage at the front desk.",
    "The museum is a short walk away, turn right at the square and follow the river.",
    "Would you like me to print a map of the old town for you?",
)
GUEST_LINES = (
    "Excuse me, where is the parking?",
    "Sorry, can I ask something?",
    "Wait, I need a late checkout.",
    "Hold on, is there a pharmacy nearby?",
)


@functools.cache
def speech(text: str, voice: str = AVATAR_VOICE, speed: int = 160) -> FloatArray:
    """espeak-ng speech at 24 kHz mono float32 (peak-normalized)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32)
    y = np.asarray(soxr.resample(x / 32768.0, rate, RATE), dtype=np.float32)
    return y / np.float32(max(float(np.abs(y).max()), 1e-9))


def avatar_talk(seconds: float, *, seed: int = 0) -> FloatArray:
    """The avatar talking for ``seconds``: seeded lines with 0.2-0.8 s pauses."""
    rng = np.random.default_rng(seed)
    parts: list[FloatArray] = []
    total = 0
    while total < seconds * RATE:
        line = speech(AVATAR_LINES[int(rng.integers(len(AVATAR_LINES)))])
        pause = np.zeros(int(rng.uniform(0.2, 0.8) * RATE), np.float32)
        parts += [line, pause]
        total += len(line) + len(pause)
    return np.concatenate(parts)[: int(seconds * RATE)]


@functools.cache
def impulse_response(room: Room, source: str = "speaker") -> FloatArray:
    """The room's impulse response from the speaker (or the guest) to the mic, 24 kHz."""
    import pyroomacoustics as pra  # type: ignore[import-untyped]  # no type hints shipped

    absorption, max_order = pra.inverse_sabine(room.rt60_s, room.dims_m)
    shoebox = pra.ShoeBox(
        room.dims_m, fs=RATE, materials=pra.Material(absorption), max_order=max_order
    )
    shoebox.add_source(list(room.speaker_m if source == "speaker" else room.guest_m))
    shoebox.add_microphone(list(room.mic_m))
    shoebox.compute_rir()
    return np.asarray(shoebox.rir[0][0], dtype=np.float32)


def _convolve(x: FloatArray, h: FloatArray) -> FloatArray:
    n = len(x) + len(h) - 1
    nfft = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(h, nfft), nfft)[: len(x)]
    return y.astype(np.float32)


def active_rms(x: FloatArray, frame: int = RATE // 50) -> float:
    """RMS over the frames within 30 dB of the loudest (speech, not its pauses)."""
    n = len(x) // frame
    if n == 0:
        return 0.0
    e = np.mean(np.square(x[: n * frame].reshape(n, frame).astype(np.float64)), axis=1)
    active = e[e > e.max() * 1e-3]
    return float(np.sqrt(active.mean())) if len(active) else 0.0


def _db(v: float) -> float:
    return float(10 ** (v / 20))


@dataclass(frozen=True)
class Scene:
    room: Room
    far: FloatArray  # what the speaker played (the reference)
    echo: FloatArray  # the avatar's voice as the mic hears it
    near: FloatArray  # the guest's voice as the mic hears it (zeros when no guest)
    noise: FloatArray
    guest_start: int  # sample where the guest starts speaking (len(far) when no guest)
    guest_end: int
    echo_delay_ms: float  # delay_ms + the RIR's direct-path arrival

    @property
    def mic(self) -> FloatArray:
        mixed: FloatArray = np.clip(self.echo + self.near + self.noise, -1.0, 32767 / 32768)
        return mixed.astype(np.float32)


def render(
    room: Room, far: FloatArray, guest: FloatArray | None = None, *, guest_at_s: float = 0.0,
    seed: int = 0,
) -> Scene:  # fmt: skip
    """The mic signal of ``room`` while the speaker plays ``far`` (and the guest speaks)."""
    n = len(far)
    h = impulse_response(room, "speaker")
    d = round(room.delay_ms * RATE / 1000)
    echo = np.concatenate((np.zeros(d, np.float32), _convolve(far, h)))[:n]
    echo *= np.float32(_db(GUEST_DBFS + room.echo_gain_db) / max(active_rms(echo), 1e-12))
    near = np.zeros(n, np.float32)
    start = end = n
    if guest is not None:
        g = _convolve(guest, impulse_response(room, "guest"))
        g *= np.float32(_db(GUEST_DBFS) / max(active_rms(g), 1e-12))
        start = round(guest_at_s * RATE) + int(np.argmax(np.abs(guest) > 0.02))
        at = round(guest_at_s * RATE)
        near[at : at + len(g)] = g[: n - at]
        loud = np.flatnonzero(np.abs(guest) > 0.02)
        end = min(n, at + int(loud[-1]) + 1) if len(loud) else start
    noise = np.random.default_rng(seed).normal(0.0, _db(room.noise_dbfs), n).astype(np.float32)
    arrival_ms = float(np.argmax(np.abs(h))) * 1000 / RATE
    return Scene(room, far, echo, near, noise, start, end, room.delay_ms + arrival_ms)


def erle_db(echo: FloatArray, cleaned: FloatArray, *, skip_s: float = 2.0) -> float:
    """Echo return loss enhancement after ``skip_s`` of convergence (far end only)."""
    s = int(skip_s * RATE)
    e = float(np.mean(np.square(echo[s:].astype(np.float64))))
    c = float(np.mean(np.square(cleaned[s:].astype(np.float64))))
    return 10 * float(np.log10(e / max(c, 1e-20)))


def near_correlation(
    scene: Scene, cleaned: FloatArray, *, max_lag_ms: float = 20.0
) -> tuple[float, float]:
    """(correlation, lag ms) of the cleaned signal with the clean guest while the guest talks.

    The best lag within ``max_lag_ms`` is taken (the canceller may delay its output a little).
    """
    a, b = scene.guest_start, scene.guest_end
    ref = scene.near[a:b].astype(np.float64)
    best, best_lag = -1.0, 0
    m = int(max_lag_ms * RATE / 1000)
    for lag in range(0, m + 1):
        c = cleaned[a + lag : b + lag].astype(np.float64)
        if len(c) < len(ref):
            break
        r = float(np.corrcoef(ref, c)[0, 1]) if np.any(c) else 0.0  # silence: nothing kept
        if r > best:
            best, best_lag = r, lag
    return best, best_lag * 1000 / RATE


@dataclass
class RoomRun:
    cleaned: FloatArray  # what the mic published
    unmuted: FloatArray  # the canceller's output, also where silence was published instead
    events: list[VadEvent]
    canceller_cpu_s: float  # CPU time spent in the canceller (process time: native threads too)
    frame_cpu_ms: list[float] = field(default_factory=list)  # per frame, in the canceller
    canceller: EchoCanceller | None = None

    def onsets_s(self) -> list[float]:
        """Capture times (s from the scene start) of the VAD onsets."""
        return [(e.at_mono_ns - _T0_NS) / 1e9 for e in self.events if e.speaking]

    def decided_s(self) -> list[float]:
        """When each onset was decided (end of the deciding frame, s from the scene start)."""
        return [(e.decided_mono_ns - _T0_NS) / 1e9 for e in self.events if e.speaking]


class _Timed:
    """An EchoCanceller that times the one it wraps (process CPU time: native threads too)."""

    def __init__(self, inner: EchoCanceller) -> None:
        self.inner = inner
        self.cpu_s = 0.0
        self.frame_ms: list[float] = []
        self.unmuted: list[bytes] = []

    def process(self, mic: bytes, reference: bytes, capture_mono_ns: int) -> bytes:
        t = time.process_time()
        out = self.inner.process(mic, reference, capture_mono_ns)
        dt = time.process_time() - t
        self.cpu_s += dt
        self.frame_ms.append(dt * 1000)
        # the canceller's own output, also where it published silence (not converged yet)
        self.unmuted.append(getattr(self.inner, "cleaned", out) or out)
        return out

    @property
    def echo_only(self) -> bool:
        return bool(getattr(self.inner, "echo_only", False))

    @property
    def lookahead_ms(self) -> int:
        return int(getattr(self.inner, "lookahead_ms", 0))


def play(scene: Scene, settings: MicSettings) -> RoomRun:
    """Run the scene through the mic's core (``settings.echo_mode``, ``settings.aec``)."""
    frame = RATE * settings.frame_ms // 1000
    timed: _Timed | None = None
    canceller: EchoCanceller | None = None
    if settings.echo_mode == "software_aec":
        from agent.audio.capture import build_canceller

        timed = _Timed(build_canceller(settings))
        canceller = timed
    core = CaptureCore(settings, canceller=canceller)
    mic = np.clip(np.rint(scene.mic * 32768.0), -32768, 32767).astype("<i2")
    far = np.clip(np.rint(scene.far * 32768.0), -32768, 32767).astype("<i2")
    out = np.zeros(len(mic), np.float32)
    events: list[VadEvent] = []
    frame_ns = settings.frame_ms * 1_000_000
    core.on_speaker_state(True, _T0_NS)
    n = len(mic) // frame

    def played(k: int) -> None:
        if k < n:
            core.on_reference(far[k * frame : (k + 1) * frame].tobytes(), _T0_NS + k * frame_ns)

    for k in range(_REFERENCE_AHEAD):
        played(k)
    for k in range(n):
        played(k + _REFERENCE_AHEAD)  # the speaker publishes what it plays ahead of time
        t = _T0_NS + k * frame_ns
        result = core.process(mic[k * frame : (k + 1) * frame].tobytes(), t)
        out[k * frame : (k + 1) * frame] = np.frombuffer(result.pcm, "<i2") / 32768.0
        events += result.events
    unmuted = out
    if timed is not None and timed.unmuted:
        unmuted = np.zeros(len(mic), np.float32)
        pcm = np.frombuffer(b"".join(timed.unmuted), "<i2")
        unmuted[: len(pcm)] = pcm / 32768.0
    return RoomRun(
        cleaned=out,
        unmuted=unmuted,
        events=events,
        canceller_cpu_s=timed.cpu_s if timed else 0.0,
        frame_cpu_ms=timed.frame_ms if timed else [],
        canceller=timed.inner if timed else None,
    )
