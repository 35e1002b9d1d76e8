"""PCM16 helpers: the bus format (24 kHz mono PCM16) and streaming conversion to it (soxr).

Never linear interpolation: rate changes go through soxr's streaming resampler, which
keeps its filter state between blocks and removes its own delay from the stream (sample
``i`` of the output is input time ``i / out_rate``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

__all__ = [
    "PCM_RATE_HZ",
    "STREAM_QUALITY",
    "Float32Array",
    "Int16Array",
    "ToMono24k",
    "mix_to_mono",
    "stream_resampler",
    "to_float",
    "to_pcm",
]

PCM_RATE_HZ = 24_000  # every PCM block on the bus and at the hardware interfaces
SAMPLE_BYTES = 2

# soxr quality for live streams: "LQ" is soxr's 16-bit recipe (a linear-phase sinc filter,
# ~96 dB), as precise as the PCM16 it feeds; its block latency is ~10-15 ms where "HQ"
# (20-bit) works in ~35 ms bursts.
STREAM_QUALITY = "LQ"

Float32Array = npt.NDArray[np.float32]
Int16Array = npt.NDArray[np.int16]


def stream_resampler(in_rate: int, out_rate: int) -> soxr.ResampleStream:
    """A streaming mono float32 resampler for live audio."""
    return soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=STREAM_QUALITY)


def to_float(pcm: bytes) -> Float32Array:
    """PCM16 little-endian bytes -> float32 in [-1, 1)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) * np.float32(1.0 / 32768.0)


def to_pcm(x: Float32Array) -> bytes:
    """float32 -> PCM16 little-endian bytes (rounded, clipped)."""
    y = np.clip(np.rint(x * 32768.0), -32768, 32767).astype("<i2")
    return bytes(y.tobytes())


def mix_to_mono(block: Int16Array, channels: int, channel: int = -1) -> Float32Array:
    """Interleaved int16 -> mono float32: one channel, or the average of all (-1)."""
    frames = block.reshape(-1, channels)
    if channels == 1:
        mono = frames[:, 0].astype(np.float32)
    elif channel >= 0:
        mono = frames[:, channel].astype(np.float32)
    else:
        mono = frames.astype(np.float32).mean(axis=1, dtype=np.float32)
    return mono * np.float32(1.0 / 32768.0)


class ToMono24k:
    """Streaming converter of PCM16 blocks of any rate/channel count to 24 kHz mono PCM16.

    A change of format (or :meth:`reset`) starts a fresh resampler stream.
    """

    def __init__(self) -> None:
        self._format: tuple[int, int] | None = None
        self._resample: soxr.ResampleStream | None = None
        self.pending = False  # the resampler holds the tail of a stream

    def reset(self) -> None:
        self._format = None
        self._resample = None
        self.pending = False

    def flush(self) -> bytes:
        """The tail the resampler still holds (end of a stream); the next block starts a fresh
        stream. Without this, the last ~15 ms of an utterance would wait for the next one."""
        tail = b""
        if self._resample is not None and self.pending:
            tail = to_pcm(self._resample.resample_chunk(np.zeros(0, np.float32), last=True))
        self.reset()
        return tail

    def convert(self, pcm: bytes, sample_rate_hz: int, channels: int) -> bytes:
        usable = len(pcm) - len(pcm) % (SAMPLE_BYTES * channels)
        if (sample_rate_hz, channels) == (PCM_RATE_HZ, 1):
            self._format = (sample_rate_hz, channels)
            return pcm[:usable]
        if self._format != (sample_rate_hz, channels):
            self._format = (sample_rate_hz, channels)
            self._resample = (
                None
                if sample_rate_hz == PCM_RATE_HZ
                else stream_resampler(sample_rate_hz, PCM_RATE_HZ)
            )
        mono = mix_to_mono(np.frombuffer(pcm[:usable], dtype="<i2"), channels)
        if self._resample is None:
            return to_pcm(mono)
        self.pending = True
        return to_pcm(self._resample.resample_chunk(mono))
