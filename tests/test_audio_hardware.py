"""hardware/audio.py on real sounddevice (ALSA file devices vrec/vplay), and the file/null
backends."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from agent.errors import DeviceError
from hardware.audio import (
    NullOutput,
    SilenceInput,
    SoundDeviceInput,
    SoundDeviceOutput,
    WavFileInput,
    WavFileOutput,
    list_devices,
    resolve_device,
)
from tests.audio_fixtures import (
    Int16Array,
    VirtualFiles,
    write_wav,
)

RATE = 24_000
pytestmark_alsa = pytest.mark.usefixtures("alsa_audio")


def _chirp(seconds: float, rate: int = RATE) -> Int16Array:
    t = np.arange(int(seconds * rate)) / rate
    return (12000 * np.sin(2 * np.pi * (300 * t + 1500 * t * t))).astype(np.int16)


def _corr(a: Int16Array, b: Int16Array) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


# --- discovery ---------------------------------------------------------------------------------


@pytestmark_alsa
def test_list_devices_shows_the_virtual_devices() -> None:
    table = list_devices()
    assert "vplay" in table and "vrec" in table
    assert "default input" in table


@pytestmark_alsa
def test_resolve_by_name_index_and_errors() -> None:
    import sounddevice as sd

    names = [d["name"] for d in sd.query_devices()]
    assert resolve_device("vrec", "input") == names.index("vrec")
    assert resolve_device("VPLA", "output") == names.index("vplay")  # substring, any case
    assert resolve_device(str(names.index("vplay")), "output") == names.index("vplay")
    with pytest.raises(DeviceError, match=r"no input device matching 'nope'.*'vrec'"):
        resolve_device("nope", "input")
    with pytest.raises(DeviceError, match=r"no output device with index 99.*'vplay'"):
        resolve_device(99, "output")
    with pytest.raises(DeviceError, match="ambiguous"):
        resolve_device("v", "input")  # vplay and vrec both have input channels


# --- sounddevice: capture ------------------------------------------------------------------------


async def _read_n(source: SoundDeviceInput, n: int) -> bytes:
    out = b""
    async with asyncio.timeout(10):
        for _ in range(n):
            f = await source.read()
            assert f is not None
            out += f.pcm
    return out


async def test_capture_at_24k_mono_is_bit_exact(vaudio: VirtualFiles) -> None:  # noqa: F811
    x = _chirp(1.0)
    vaudio.set_input(x.tobytes())
    mic = SoundDeviceInput("vrec", sample_rate_hz=RATE, channels=1, queue_ms=600_000)
    await mic.start()
    try:
        got = np.frombuffer(await _read_n(mic, 50), "<i2")
    finally:
        await mic.close()
    assert (mic.rate, mic.channels) == (RATE, 1)
    assert np.array_equal(got, x)


@pytest.mark.parametrize("rate,channels", [(44_100, 2), (16_000, 1), (48_000, 4)])
async def test_capture_at_other_formats_is_converted_with_soxr(
    vaudio: VirtualFiles,  # noqa: F811
    rate: int,
    channels: int,
) -> None:
    x = _chirp(1.0)
    native = soxr.resample(x, RATE, rate).astype(np.int16)
    vaudio.set_input(np.repeat(native, channels).tobytes(), rate=rate, ch=channels)
    mic = SoundDeviceInput("vrec", sample_rate_hz=rate, channels=channels, queue_ms=600_000)
    await mic.start()
    try:
        got = np.frombuffer(await _read_n(mic, 50), "<i2")
    finally:
        await mic.close()
    upper = min(rate, RATE) / 2 * 0.9  # the chirp goes to 3.3 kHz: inside every band here
    assert upper > 3300
    assert _corr(got[:RATE], x) > 0.9995


# --- sounddevice: playback -----------------------------------------------------------------------


class _Source:
    """A pull function serving ``pcm`` then silence; ``done`` is set (on the loop) once it
    has served ``pcm`` plus ``tail`` samples."""

    def __init__(self, pcm: bytes, tail: int = 0) -> None:
        self.pcm = pcm
        self.pos = 0
        self._end = len(pcm) + 2 * tail
        self._loop = asyncio.get_running_loop()
        self.done = asyncio.Event()

    def __call__(self, n: int, play_ns: int) -> bytes:  # the device's thread
        chunk = self.pcm[self.pos : self.pos + 2 * n]
        self.pos += 2 * n
        if self.pos >= self._end and not self.done.is_set():
            self._loop.call_soon_threadsafe(self.done.set)
        return chunk + bytes(2 * n - len(chunk))


async def _play(out: SoundDeviceOutput, pcm: bytes) -> None:
    source = _Source(pcm, tail=RATE // 5)
    await out.start(source)
    try:
        await asyncio.wait_for(source.done.wait(), 10)
    finally:
        await out.close()


async def test_playback_at_24k_mono_is_bit_exact(vaudio: VirtualFiles) -> None:  # noqa: F811
    x = _chirp(0.5)
    x[0] = 1  # so that the first sample is not mistaken for padding
    await _play(SoundDeviceOutput("vplay", sample_rate_hz=RATE, channels=1), x.tobytes())
    y = vaudio.output_samples()[:, 0]
    i = int(np.flatnonzero(y)[0])
    assert np.array_equal(y[i : i + len(x)], x)


async def test_playback_at_48k_stereo_is_converted_with_soxr(
    vaudio: VirtualFiles,  # noqa: F811
) -> None:
    x = _chirp(0.5)
    out = SoundDeviceOutput("vplay", sample_rate_hz=48_000, channels=2, period_ms=10)
    await _play(out, x.tobytes())
    y = vaudio.output_samples(channels=2)
    assert np.array_equal(y[:, 0], y[:, 1])
    back = soxr.resample(y[:, 0], 48_000, RATE).astype(np.int16)
    c = np.correlate(back[: len(x) + 4800].astype(float), x.astype(float), "valid")
    i = int(np.argmax(c))
    assert _corr(back[i : i + len(x)], x) > 0.9995
    assert all(w.samples == 480 for w in out.writes)  # 10 ms periods at 48 kHz


# --- file and null backends ----------------------------------------------------------------------


async def test_wav_input_resamples_loops_pads_and_ends(tmp_path: Path) -> None:
    x16 = _chirp(0.1, 16_000)  # 100 ms at 16 kHz: 5 frames at 24 kHz
    wav = write_wav(tmp_path / "g.wav", x16, rate=16_000)
    expected = soxr.resample(x16, 16_000, RATE, quality="HQ").astype(np.int16)

    async def frames(src: WavFileInput, n: int) -> list[bytes | None]:
        await src.start()
        out = [None if (f := await src.read()) is None else f.pcm for _ in range(n)]
        await src.close()
        return out

    ended = await frames(WavFileInput(wav, realtime=False), 7)
    assert ended[5:] == [None, None]
    assert _corr(np.frombuffer(b"".join(ended[:5]), "<i2"), expected) > 0.999  # type: ignore[arg-type]
    padded = await frames(WavFileInput(wav, pad_silence=True, realtime=False), 8)
    assert padded[5:] == [bytes(960)] * 3
    looped = await frames(WavFileInput(wav, loop=True, realtime=False), 10)
    assert looped[5:] == looped[:5]


async def test_wav_input_is_paced_in_real_time(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "g.wav", _chirp(0.2))
    src = WavFileInput(wav)
    await src.start()
    t0 = time.monotonic()
    stamps = []
    for _ in range(10):
        f = await src.read()
        assert f is not None
        stamps.append(f.capture_mono_ns)
    elapsed = time.monotonic() - t0
    await src.close()
    assert 0.19 <= elapsed <= 0.3, elapsed
    assert set(np.diff(stamps)) == {20_000_000}


async def test_bad_wav_is_a_device_error(tmp_path: Path) -> None:
    eight = tmp_path / "8bit.wav"
    with wave.open(str(eight), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes(800))
    with pytest.raises(DeviceError, match="16-bit"):
        await WavFileInput(eight).start()
    with pytest.raises(DeviceError, match="cannot read"):
        await WavFileInput(tmp_path / "missing.wav").start()


async def test_wav_output_records_what_is_pulled_in_real_time(tmp_path: Path) -> None:
    x = _chirp(0.2)
    source = _Source(x.tobytes())
    out = WavFileOutput(tmp_path / "o.wav", period_ms=20)
    t0 = time.monotonic()
    await out.start(source)
    await asyncio.wait_for(source.done.wait(), 5)
    elapsed = time.monotonic() - t0
    await out.close()
    assert 0.15 <= elapsed <= 0.35, elapsed
    with wave.open(str(tmp_path / "o.wav")) as w:
        y = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert np.array_equal(y[: len(x)], x)


async def test_null_output_and_silence_input() -> None:
    source = _Source(bytes(2 * 240 * 3))
    out = NullOutput(period_ms=10)
    await out.start(source)
    await asyncio.wait_for(source.done.wait(), 5)
    await out.close()
    assert len(out.writes) >= 3 and all(w.samples == 240 for w in out.writes)
    src = SilenceInput(realtime=False)
    await src.start()
    f = await src.read()
    assert f is not None and f.pcm == bytes(960)


class _ThreadLog(logging.Handler):
    """Every record, with the thread that emitted it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, logging.LogRecord]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((threading.current_thread().name, record))


async def test_callback_errors_are_logged_by_the_loop_not_the_device_thread(
    vaudio: VirtualFiles,  # noqa: F811
) -> None:
    """A failing pull never logs from PortAudio's thread: the loop's report() logs the burst
    once, with its count and first traceback, and the stream keeps going (silence)."""
    calls = 0
    enough = asyncio.Event()
    loop = asyncio.get_running_loop()

    def pull(n: int, play_ns: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 20:
            loop.call_soon_threadsafe(enough.set)
        raise ValueError("pull failed")

    handler = _ThreadLog()
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    out = SoundDeviceOutput("vplay", sample_rate_hz=RATE, channels=1, period_ms=5)
    try:
        await out.start(pull)
        await asyncio.wait_for(enough.wait(), 10)
        out.report()
        out.report()  # nothing new: nothing logged
    finally:
        await out.close()
        root.removeHandler(handler)
        root.setLevel(old_level)
    main = threading.current_thread().name
    assert [t for t, _ in handler.records if t != main] == []
    errors = [r for _, r in handler.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    text = errors[0].getMessage()
    assert "speaker callback failed" in text and "ValueError: pull failed" in text
    assert out.faults.count >= 20
