"""PortAudio (sounddevice) backends: :class:`SoundDeviceInput` and
:class:`SoundDeviceOutput`, device discovery, and the hand-off from PortAudio's threads.

PortAudio calls our callbacks on its own thread: they never block, never raise and never
log (errors are counted and logged by the event loop). PortAudio scans the devices when
``sounddevice`` is imported, so it is imported lazily, here, on first use: set
``ALSA_CONFIG_PATH`` / ``PULSE_SERVER`` before that.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
import traceback
from types import ModuleType
from typing import Any

import numpy as np
import soxr

from agent.aio import ThreadWakeup
from agent.audio.pcm import (
    PCM_RATE_HZ,
    Float32Array,
    mix_to_mono,
    stream_resampler,
    to_float,
    to_pcm,
)
from agent.audio.settings import Latency
from agent.errors import DeviceError
from hardware.audio_base import AudioInput, AudioOutput, CapturedFrame, Kind, PullFn, WriteRecord

__all__ = [
    "SoundDeviceInput",
    "SoundDeviceOutput",
    "list_devices",
    "rescan_devices",
    "resolve_device",
]

log = logging.getLogger(__name__)

_STALL_S = 2.0  # a running input that delivers nothing for this long has failed
_WRITE_LOG = 3000  # WriteRecords kept per output (30 s of 10 ms periods)


# --- helpers ---------------------------------------------------------------------------------


def _sounddevice() -> ModuleType:
    """Import sounddevice on first use (PortAudio scans the devices at import)."""
    try:
        import sounddevice
    except OSError as exc:  # libportaudio2 missing
        raise DeviceError(f"PortAudio is not available ({exc}); install libportaudio2") from exc
    module: ModuleType = sounddevice
    return module


def rescan_devices() -> None:
    """Make PortAudio scan the devices again (it lists them once, when it starts): for a
    device that came back under a new index. Only with no stream open in this process.

    sounddevice's ``_terminate``/``_initialize`` are the way its documentation gives for
    this (there is no public call).
    """
    sd = _sounddevice()
    sd._terminate()
    sd._initialize()


def _resampler(in_rate: int, out_rate: int) -> soxr.ResampleStream | None:
    return None if in_rate == out_rate else stream_resampler(in_rate, out_rate)


class _Framer:
    """Cuts a stream of 24 kHz float samples into fixed frames and dates each frame.

    Dating uses the sample count as the clock: 24 kHz sample ``i`` was captured at
    ``base + i / 24000`` (soxr removes its own delay from the stream). Each device block gives
    an observation of ``base`` (its capture time minus its position). A callback can only be
    late, never early, so ``base`` is the *smallest* observation of the last ``window_s``
    seconds of audio: it forgets start-up bursts and follows a device clock that drifts
    against CLOCK_MONOTONIC. Frame times are strictly increasing.
    """

    def __init__(self, frame_samples: int, dev_rate: int, window_s: float = 2.0):
        self._n = frame_samples
        self._dev_rate = dev_rate
        self._window = int(window_s * dev_rate)  # in device samples
        self._buf = np.zeros(0, np.float32)
        self._out_index = 0  # 24 kHz index of _buf[0]
        # (device index, observed base), increasing in both: the front is the window's min
        self._mins: collections.deque[tuple[int, float]] = collections.deque()
        self._last_t = -1

    def push(self, samples: Float32Array, dev_index: int, dev_ns: int) -> list[CapturedFrame]:
        observed = dev_ns - dev_index * 1e9 / self._dev_rate
        while self._mins and self._mins[-1][1] >= observed:
            self._mins.pop()
        self._mins.append((dev_index, observed))
        while self._mins[0][0] < dev_index - self._window:
            self._mins.popleft()
        base_ns = self._mins[0][1]
        self._buf = np.concatenate((self._buf, samples)) if len(self._buf) else samples
        frames: list[CapturedFrame] = []
        while len(self._buf) >= self._n:
            t = round(base_ns + self._out_index * 1e9 / PCM_RATE_HZ)
            t = max(t, self._last_t + 1, 0)
            self._last_t = t
            frames.append(CapturedFrame(to_pcm(self._buf[: self._n]), t))
            self._buf = self._buf[self._n :]
            self._out_index += self._n
        return frames


class _CallbackFaults:
    """Errors in a PortAudio callback, kept for the event loop to log: the device thread must
    not do logging's I/O (a handler's lock and write can stall it past its deadline).

    ``record`` (device thread) keeps a count and the first traceback of a burst; ``report``
    (event loop) logs that once and starts the next burst.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self.count = 0  # ever
        self._reported = 0
        self._first: str | None = None

    def record(self) -> None:  # the device thread, inside an ``except`` block
        self.count += 1
        if self._first is None:
            self._first = traceback.format_exc(limit=8)

    def report(self) -> None:  # the event loop
        first, self._first = self._first, None
        new = self.count - self._reported
        if new and first is not None:
            self._reported = self.count
            log.error("%s callback failed %d time(s); the first:\n%s", self._what, new, first)


class _Handoff:
    """Device thread -> event loop: a bounded deque plus at most one pending wake-up.

    ``put`` never blocks (the oldest frame is dropped when full). ``get`` awaits on the loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_items: int):
        self._items: collections.deque[CapturedFrame] = collections.deque(maxlen=max_items)
        self._wakeup = ThreadWakeup(loop)
        self.dropped = 0
        self.closed = False
        self.error: DeviceError | None = None

    def put(self, item: CapturedFrame) -> None:  # any thread
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(item)
        self._wakeup.wake()

    def fail(self, error: DeviceError) -> None:  # any thread
        self.error = error
        self._wakeup.wake()

    async def get(self, stall_s: float | None) -> CapturedFrame | None:
        while True:
            if self._items:
                return self._items.popleft()
            if self.error is not None:
                raise self.error
            if self.closed:
                return None
            self._wakeup.event.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # races the wake-up, and the reader would not stop.
            try:
                async with asyncio.timeout(stall_s):
                    await self._wakeup.event.wait()
            except TimeoutError:
                raise DeviceError(f"input device delivered nothing for {stall_s:.1f} s") from None


# --- device discovery --------------------------------------------------------------------------


def _devices(sd: ModuleType) -> list[dict[str, Any]]:
    return [dict(d) for d in sd.query_devices()]


def _channels_key(kind: Kind) -> str:
    return "max_input_channels" if kind == "input" else "max_output_channels"


def _device_names(sd: ModuleType, kind: Kind) -> str:
    key = _channels_key(kind)
    names = [f"{i}: {d['name']!r}" for i, d in enumerate(_devices(sd)) if d[key] > 0]
    return ", ".join(names) if names else "none (no sound card, or PortAudio sees no server)"


def resolve_device(spec: str | int | None, kind: Kind) -> int:
    """The PortAudio index of an ``kind`` device given by index, name substring or default.

    Matching is case-insensitive; an exact name wins over substrings; an ambiguous or
    missing name raises :class:`DeviceError` naming the devices that exist.
    """
    sd = _sounddevice()
    devices = _devices(sd)
    key = _channels_key(kind)
    text = "" if spec is None else str(spec).strip()
    if text == "":
        default = sd.default.device[0 if kind == "input" else 1]
        if default is None or int(default) < 0:
            raise DeviceError(
                f"no default {kind} device; {kind} devices: {_device_names(sd, kind)}"
            )
        return int(default)
    if text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < len(devices) and devices[index][key] > 0:
            return index
        raise DeviceError(
            f"no {kind} device with index {index}; {kind} devices: {_device_names(sd, kind)}"
        )
    wanted = text.lower()
    usable = [(i, d) for i, d in enumerate(devices) if d[key] > 0]
    exact = [i for i, d in usable if str(d["name"]).lower() == wanted]
    if exact:
        return exact[0]
    matches = [i for i, d in usable if wanted in str(d["name"]).lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DeviceError(
            f"no {kind} device matching {text!r}; {kind} devices: {_device_names(sd, kind)}"
        )
    names = ", ".join(f"{i}: {devices[i]['name']!r}" for i in matches)
    raise DeviceError(f"{kind} device {text!r} is ambiguous: {names}")


def list_devices() -> str:
    """A table of the audio devices PortAudio sees (for ``navtalk-agent devices``)."""
    sd = _sounddevice()
    devices = _devices(sd)
    hostapis = [dict(h)["name"] for h in sd.query_hostapis()]
    default_in, default_out = (int(x) if x is not None else -1 for x in sd.default.device)
    lines = [f"{'#':>3}  {'name':<40} {'api':<6} {'in':>3} {'out':>3} {'rate':>7}"]
    for i, d in enumerate(devices):
        mark = ("<" if i == default_in else " ") + (">" if i == default_out else " ")
        lines.append(
            f"{i:>3}{mark}{str(d['name'])[:40]:<40} {hostapis[d['hostapi']][:6]:<6} "
            f"{d['max_input_channels']:>3} {d['max_output_channels']:>3} "
            f"{int(d['default_samplerate']):>7}"
        )
    if not devices:
        lines.append("     (no devices: no sound card, or no PulseAudio server reachable)")
    lines.append("< default input, > default output. Select with mic.device / speaker.device")
    lines.append("(an index, or a case-insensitive part of the name).")
    return "\n".join(lines)


def _pick_format(
    sd: ModuleType, index: int, kind: Kind, rate: int, channels: int
) -> tuple[int, int]:
    """(rate, channels) to open the device with.

    rate 0: 24 kHz when the device takes it (the host converts, with no added latency; soxr's
    streaming resampler works in blocks and adds 10-15 ms), else the device's default rate.
    channels 0: mono, or stereo when the device refuses mono.
    """
    info = _devices(sd)[index]
    rates = [rate] if rate else [PCM_RATE_HZ, int(info["default_samplerate"])]
    chans = [channels] if channels else [1, min(2, int(info[_channels_key(kind)]))]
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    error: Exception | None = None
    for r in dict.fromkeys(rates):
        for ch in dict.fromkeys(chans):
            try:
                check(device=index, channels=ch, dtype="int16", samplerate=r)
            except Exception as exc:  # sounddevice raises PortAudioError or ValueError
                error = exc
                continue
            return r, ch
    raise DeviceError(
        f"{kind} device {index} ({info['name']!r}) refuses {rates} Hz x {chans} ch: {error}"
    )


# --- sounddevice --------------------------------------------------------------------------------


class SoundDeviceInput(AudioInput):
    """A PortAudio input device; any rate and channel count, converted to 24 kHz mono."""

    def __init__(
        self,
        device: str | int | None = None,
        *,
        frame_ms: int = 20,
        sample_rate_hz: int = 0,
        channels: int = 0,
        channel: int = -1,
        latency: Latency = "low",
        block_ms: int = 5,
        queue_ms: int = 2000,
        stall_s: float | None = _STALL_S,
    ):
        self.frame_ms = frame_ms
        self._block_ms = block_ms
        self._spec = device
        self._want_rate = sample_rate_hz
        self._want_channels = channels
        self._channel = channel
        self._latency = latency
        self._queue_frames = max(1, queue_ms // frame_ms)
        self._stall_s = stall_s
        self._stream: Any = None
        self._handoff: _Handoff | None = None
        self.device_index = -1
        self.device_name = ""
        self.rate = 0
        self.channels = 0
        self.status_errors = 0  # PortAudio overflow flags seen
        self.faults = _CallbackFaults("mic")
        self._dev_samples = 0
        self._framer: _Framer | None = None
        self._resample: soxr.ResampleStream | None = None

    @property
    def dropped(self) -> int:
        return self._handoff.dropped if self._handoff else 0

    async def start(self) -> None:
        if self._stream is not None:
            return
        sd = _sounddevice()
        self.device_index, self.device_name, self.rate, self.channels = _choose(
            sd, self._spec, "input", self._want_rate, self._want_channels
        )
        if self._channel >= self.channels:
            raise DeviceError(
                f"input channel {self._channel} asked, device opened with {self.channels}"
            )
        self._handoff = _Handoff(asyncio.get_running_loop(), self._queue_frames)
        self._resample = _resampler(self.rate, PCM_RATE_HZ)
        self._framer = _Framer(PCM_RATE_HZ * self.frame_ms // 1000, self.rate)
        self._dev_samples = 0
        self._stream = _start_stream(sd, self, "input", self._block_ms, self._latency)
        log.info(
            "= mic device %d %r open: %d Hz x %d ch, latency %.1f ms",
            self.device_index,
            self.device_name,
            self.rate,
            self.channels,
            float(self._stream.latency) * 1000,
        )

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's thread: convert, frame, hand off. Never block, never raise.
        now = time.monotonic_ns()
        try:
            if status:
                self.status_errors += 1
            # The first sample of the block is at least the block's duration old; PortAudio's
            # own estimate adds the host buffer (some host APIs report 0 or garbage).
            lag = float(time_info.currentTime) - float(time_info.inputBufferAdcTime)
            lag = max(lag if lag < 1.0 else 0.0, frames / self.rate)
            first_ns = now - int(lag * 1e9)
            mono = mix_to_mono(np.frombuffer(indata, dtype="<i2"), self.channels, self._channel)
            out = mono if self._resample is None else self._resample.resample_chunk(mono)
            assert self._framer is not None and self._handoff is not None
            for frame in self._framer.push(out, self._dev_samples, first_ns):
                self._handoff.put(frame)
            self._dev_samples += frames
        except Exception:  # an exception would abort the stream: note it (logged by read())
            self.faults.record()

    def _finished(self) -> None:
        if self._handoff is not None and not self._handoff.closed:
            self._handoff.fail(DeviceError(f"input device {self.device_name!r} stopped"))

    async def read(self) -> CapturedFrame | None:
        if self._handoff is None:
            raise DeviceError("SoundDeviceInput.read() before start()")
        self.faults.report()
        return await self._handoff.get(self._stall_s)

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if self._handoff is not None:
            self._handoff.closed = True
        if stream is not None:
            await asyncio.to_thread(_abort_close, stream)


def _choose(
    sd: ModuleType, spec: str | int | None, kind: Kind, want_rate: int, want_channels: int
) -> tuple[int, str, int, int]:
    """The device ``spec`` names and the format to open it with: (index, name, rate, ch)."""
    index = resolve_device(spec, kind)
    rate, channels = _pick_format(sd, index, kind, want_rate, want_channels)
    return index, str(_devices(sd)[index]["name"]), rate, channels


def _start_stream(
    sd: ModuleType,
    dev: SoundDeviceInput | SoundDeviceOutput,
    kind: Kind,
    block_ms: int,
    latency: Latency,
) -> Any:
    """Open and start ``dev``'s raw int16 PortAudio stream; a DeviceError naming the devices
    that exist when it is busy or gone."""
    cls = sd.RawInputStream if kind == "input" else sd.RawOutputStream
    stream = None
    try:
        stream = cls(
            device=dev.device_index,
            samplerate=dev.rate,
            channels=dev.channels,
            dtype="int16",
            blocksize=dev.rate * block_ms // 1000,
            latency=latency,
            callback=dev._callback,
            finished_callback=dev._finished,
        )
        stream.start()
    except Exception as exc:  # sd.PortAudioError, ValueError: busy or gone
        if stream is not None:
            _abort_close(stream)
        raise DeviceError(
            f"cannot open {kind} device {dev.device_index} ({dev.device_name!r}) at "
            f"{dev.rate} Hz x {dev.channels} ch: {exc}; "
            f"{kind} devices: {_device_names(sd, kind)}"
        ) from exc
    return stream


def _abort_close(stream: Any) -> None:
    with contextlib.suppress(Exception):
        stream.abort()
    with contextlib.suppress(Exception):
        stream.close()


class SoundDeviceOutput(AudioOutput):
    """A PortAudio output device; pulls 24 kHz mono, plays it at the device's rate/channels."""

    def __init__(
        self,
        device: str | int | None = None,
        *,
        period_ms: int = 5,
        sample_rate_hz: int = 0,
        channels: int = 0,
        latency: Latency = "low",
    ):
        self.period_ms = period_ms
        self._spec = device
        self._want_rate = sample_rate_hz
        self._want_channels = channels
        self._latency = latency
        self._stream: Any = None
        self._pull: PullFn | None = None
        self._resample: soxr.ResampleStream | None = None
        self._fifo = np.zeros(0, np.float32)  # device-rate mono samples pulled, not yet written
        self._flush_requested = False
        self._failed: DeviceError | None = None
        self._closing = False
        self.device_index = -1
        self.device_name = ""
        self.rate = 0
        self.channels = 0
        self.status_errors = 0  # PortAudio underflow flags seen
        self.faults = _CallbackFaults("speaker")
        self._last_callback_ns = 0
        self.callbacks = 0
        self.writes = collections.deque(maxlen=_WRITE_LOG)

    @property
    def failed(self) -> DeviceError | None:
        """Set when the stream stopped on its own, or stopped calling back (a device that
        hangs instead of failing)."""
        if self._failed is None and self._stream is not None:
            quiet_ns = time.monotonic_ns() - self._last_callback_ns
            if quiet_ns > _STALL_S * 1e9:
                self._failed = DeviceError(
                    f"output device {self.device_name!r} stalled: no callback for "
                    f"{quiet_ns / 1e9:.1f} s"
                )
        return self._failed

    async def start(self, pull: PullFn) -> None:
        """Open and start; after close() (a device that failed), opens it again."""
        if self._stream is not None:
            return
        sd = _sounddevice()
        self._pull = pull
        self._failed = None
        self._closing = False
        self._flush_requested = False
        self._fifo = np.zeros(0, np.float32)
        self._last_callback_ns = time.monotonic_ns()  # the stall clock starts at the open
        self.device_index, self.device_name, self.rate, self.channels = _choose(
            sd, self._spec, "output", self._want_rate, self._want_channels
        )
        self._resample = _resampler(PCM_RATE_HZ, self.rate)
        self._stream = _start_stream(sd, self, "output", self.period_ms, self._latency)
        log.info(
            "= speaker device %d %r open: %d Hz x %d ch, latency %.1f ms, period %d ms",
            self.device_index,
            self.device_name,
            self.rate,
            self.channels,
            float(self._stream.latency) * 1000,
            self.period_ms,
        )

    def flush(self) -> None:
        self._flush_requested = True  # seen by the next callback (a bool store is atomic)

    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's thread. Never block, never raise: on error, write silence.
        now = time.monotonic_ns()
        self._last_callback_ns = now
        self.callbacks += 1
        try:
            if status:
                self.status_errors += 1
            if self._flush_requested:
                self._flush_requested = False
                self._fifo = np.zeros(0, np.float32)
                if self._resample is not None:
                    self._resample.clear()
            lead = float(time_info.outputBufferDacTime) - float(time_info.currentTime)
            if not 0.0 <= lead < 1.0:
                lead = 0.0
            play_ns = now + int(lead * 1e9)
            self._fill(frames, play_ns)
            block, self._fifo = self._fifo[:frames], self._fifo[frames:]
            pcm = np.clip(np.rint(block * 32768.0), -32768, 32767).astype("<i2")
            if self.channels > 1:
                pcm = np.repeat(pcm, self.channels)
            outdata[:] = pcm.tobytes()
            peak = int(np.abs(block).max() * 32768.0) if len(block) else 0
            self.writes.append(WriteRecord(now, play_ns, frames, peak))
        except Exception:  # note it (logged by report(), on the loop) and write silence
            self.faults.record()
            outdata[:] = bytes(len(outdata))

    def _fill(self, frames: int, play_ns: int) -> None:
        """Pull until the FIFO holds ``frames`` device samples.

        soxr's streaming resampler emits its output in bursts (blocks of 10-40 ms), so this
        pulls ahead by up to one burst; a flush() drops what was pulled ahead.
        """
        assert self._pull is not None
        ratio = self.rate / PCM_RATE_HZ
        min_pull = PCM_RATE_HZ // 100  # 10 ms
        budget = PCM_RATE_HZ  # never pull more than 1 s of audio in one callback
        while len(self._fifo) < frames and budget > 0:
            n = min(budget, max(min_pull, math.ceil((frames - len(self._fifo)) / ratio)))
            budget -= n
            at_ns = play_ns + int(len(self._fifo) * 1e9 / self.rate)
            chunk = to_float(self._pull(n, at_ns))
            out = chunk if self._resample is None else self._resample.resample_chunk(chunk)
            self._fifo = np.concatenate((self._fifo, out)) if len(self._fifo) else out
        missing = frames - len(self._fifo)
        if missing > 0:  # only if the resampler misbehaves
            self._fifo = np.concatenate((self._fifo, np.zeros(missing, np.float32)))

    def _finished(self) -> None:
        if not self._closing:
            self._failed = DeviceError(f"output device {self.device_name!r} stopped")

    def report(self) -> None:
        self.faults.report()

    async def close(self) -> None:
        self._closing = True
        stream, self._stream = self._stream, None
        if stream is not None:
            await asyncio.to_thread(_abort_close, stream)
