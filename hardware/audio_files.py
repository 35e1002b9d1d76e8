"""File and null audio backends, paced by the monotonic clock so that a service cannot
tell them from a device: :class:`WavFileInput`, :class:`SilenceInput`,
:class:`WavFileOutput`, :class:`NullOutput`."""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import logging
import time
import wave
from pathlib import Path

import numpy as np
import soxr

from agent.audio.pcm import PCM_RATE_HZ, mix_to_mono, to_pcm
from agent.errors import DeviceError
from hardware.audio_base import AudioInput, AudioOutput, CapturedFrame, PullFn, WriteRecord

__all__ = ["NullOutput", "SilenceInput", "WavFileInput", "WavFileOutput", "read_wav_24k_mono"]

log = logging.getLogger(__name__)

_SAMPLE_BYTES = 2
_WRITE_LOG = 3000  # WriteRecords kept per output (30 s of 10 ms periods)


# --- files and null, paced by the monotonic clock ----------------------------------------------


class _PacedInput(AudioInput):
    """Produces frames on a real-time schedule (frame k due at t0 + k * frame_ms)."""

    def __init__(self, *, frame_ms: int, realtime: bool):
        self.frame_ms = frame_ms
        self._realtime = realtime
        self._t0_ns = 0
        self._k = 0
        self._started = False
        self._closed = False

    async def start(self) -> None:
        self._started = True
        self._t0_ns = time.monotonic_ns()

    async def read(self) -> CapturedFrame | None:
        if not self._started:
            raise DeviceError(f"{type(self).__name__}.read() before start()")
        if self._closed:
            return None
        due_ns = self._t0_ns + self._k * self.frame_ms * 1_000_000
        if self._realtime:
            # Pacing, not waiting for an event: a frame "is captured" at its due time.
            delay = (due_ns + self.frame_ms * 1_000_000 - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
        pcm = self._next_pcm()
        if pcm is None:
            return None
        self._k += 1
        return CapturedFrame(pcm, due_ns)

    @abc.abstractmethod
    def _next_pcm(self) -> bytes | None: ...

    async def close(self) -> None:
        self._closed = True


class SilenceInput(_PacedInput):
    """Digital silence in real time (the null microphone)."""

    def __init__(self, *, frame_ms: int = 20, realtime: bool = True):
        super().__init__(frame_ms=frame_ms, realtime=realtime)
        self._silence = bytes(self.frame_samples * _SAMPLE_BYTES)

    def _next_pcm(self) -> bytes | None:
        return self._silence


def read_wav_24k_mono(path: str | Path) -> bytes:
    """A whole PCM16 WAV file as 24 kHz mono PCM16 (soxr)."""
    with _open_wav(path) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    mono = mix_to_mono(raw, channels, -1)
    if rate != PCM_RATE_HZ:
        mono = soxr.resample(mono, rate, PCM_RATE_HZ, quality="HQ").astype(np.float32)  # whole file
    return to_pcm(mono)


def _open_wav(path: str | Path) -> wave.Wave_read:
    try:
        w = wave.open(str(path), "rb")
    except (OSError, EOFError, wave.Error) as exc:
        raise DeviceError(f"cannot read WAV {path}: {exc}") from exc
    if w.getsampwidth() != 2:
        w.close()
        raise DeviceError(f"WAV {path}: {8 * w.getsampwidth()}-bit samples; need 16-bit PCM")
    return w


class WavFileInput(_PacedInput):
    """A WAV file played as a microphone, in real time: the demo's "guest".

    Any rate and channel count (16-bit PCM). At the end: start again (``loop``), or go on
    with silence (``pad_silence``), or end (``read()`` returns None).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        frame_ms: int = 20,
        loop: bool = False,
        pad_silence: bool = False,
        realtime: bool = True,
    ):
        super().__init__(frame_ms=frame_ms, realtime=realtime)
        self.path = Path(path)
        self._loop = loop
        self._pad = pad_silence
        self._pcm = b""
        self._pos = 0
        self.ended = False

    async def start(self) -> None:
        self._pcm = await asyncio.to_thread(read_wav_24k_mono, self.path)
        if not self._pcm:
            raise DeviceError(f"WAV {self.path} holds no audio")
        log.info("= mic file %s: %.2f s", self.path, len(self._pcm) / 2 / PCM_RATE_HZ)
        await super().start()

    def _next_pcm(self) -> bytes | None:
        size = self.frame_samples * _SAMPLE_BYTES
        out = self._pcm[self._pos : self._pos + size]
        self._pos += len(out)
        while len(out) < size:
            if self._loop:
                take = self._pcm[: size - len(out)]
                self._pos = len(take)
                out += take
            elif self._pad:
                self.ended = True
                out += bytes(size - len(out))
            else:
                self.ended = True
                return out + bytes(size - len(out)) if out else None
        return out


class _PacedOutput(AudioOutput):
    """Pulls one period every period_ms from an asyncio task (file and null outputs)."""

    def __init__(self, *, period_ms: int):
        self.period_ms = period_ms
        self._task: asyncio.Task[None] | None = None
        self.writes = collections.deque(maxlen=_WRITE_LOG)
        self._pull: PullFn | None = None

    async def start(self, pull: PullFn) -> None:
        if self._task is None:
            self._pull = pull
            self._open()
            self._task = asyncio.create_task(self._run(), name=type(self).__name__)

    def _open(self) -> None:
        pass

    async def _run(self) -> None:
        assert self._pull is not None
        n = PCM_RATE_HZ * self.period_ms // 1000
        period_ns = self.period_ms * 1_000_000
        t0 = time.monotonic_ns()
        k = 0
        while True:
            due = t0 + k * period_ns
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)  # pacing: this is the device's clock
            now = time.monotonic_ns()
            pcm = self._pull(n, now)
            peak = int(np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32)).max())
            self.writes.append(WriteRecord(now, now, n, peak))
            self._write(pcm)
            k += 1

    def _write(self, pcm: bytes) -> None:
        pass

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._close()

    def _close(self) -> None:
        pass


class NullOutput(_PacedOutput):
    """Plays nothing, at the pace of a real device (headless robots without a speaker)."""

    def __init__(self, *, period_ms: int = 20):
        super().__init__(period_ms=period_ms)


class WavFileOutput(_PacedOutput):
    """Writes what is played to a WAV (24 kHz mono PCM16), at the pace of a real device."""

    def __init__(self, path: str | Path, *, period_ms: int = 20):
        super().__init__(period_ms=period_ms)
        self.path = Path(path)
        self._wav: wave.Wave_write | None = None

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            w = wave.open(str(self.path), "wb")
        except OSError as exc:
            raise DeviceError(f"cannot write WAV {self.path}: {exc}") from exc
        w.setnchannels(1)
        w.setsampwidth(_SAMPLE_BYTES)
        w.setframerate(PCM_RATE_HZ)
        self._wav = w

    def _write(self, pcm: bytes) -> None:
        if self._wav is not None:
            self._wav.writeframesraw(pcm)

    def _close(self) -> None:
        w, self._wav = self._wav, None
        if w is not None:
            w.close()
