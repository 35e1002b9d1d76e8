"""The audio device interfaces: :class:`AudioInput` and :class:`AudioOutput`, and what
crosses them (24 kHz mono PCM16). See :mod:`hardware.audio` for the backends."""

from __future__ import annotations

import abc
import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Self

from agent.audio.pcm import PCM_RATE_HZ
from agent.errors import DeviceError

__all__ = ["AudioInput", "AudioOutput", "CapturedFrame", "Kind", "PullFn", "WriteRecord"]


Kind = Literal["input", "output"]

# Called by an output with (n, play_mono_ns): return exactly n samples (2n bytes) of 24 kHz
# mono PCM16. play_mono_ns estimates when the first of them reaches the loudspeaker.
# Called on the device's thread for SoundDeviceOutput: must not block.
PullFn = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One block an output wrote to its device (kept for diagnostics and benchmarks)."""

    at_mono_ns: int  # when the device asked for it
    play_mono_ns: int  # estimated time its first sample leaves the loudspeaker
    samples: int  # device frames
    peak: int  # largest absolute sample value (0 = digital silence)


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    """One input frame: 24 kHz mono PCM16 and when its first sample was captured."""

    pcm: bytes
    capture_mono_ns: int  # CLOCK_MONOTONIC (time.monotonic_ns) of the first sample


# --- interfaces --------------------------------------------------------------------------------


class AudioInput(abc.ABC):
    """A source of 24 kHz mono PCM16 frames of ``frame_ms``, each dated at capture."""

    frame_ms: int

    @property
    def frame_samples(self) -> int:
        return PCM_RATE_HZ * self.frame_ms // 1000

    @property
    def dropped(self) -> int:
        """Frames dropped because the reader lagged behind."""
        return 0

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the device and start capturing (call from the event loop)."""

    @abc.abstractmethod
    async def read(self) -> CapturedFrame | None:
        """The next frame; None when the input has ended. Raises DeviceError on failure."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop and release the device. Idempotent."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AudioOutput(abc.ABC):
    """A sink that pulls 24 kHz mono PCM16 from a :data:`PullFn` once per period.

    ``writes`` keeps the last blocks written (time, estimated play time, peak level).
    """

    period_ms: int
    writes: collections.deque[WriteRecord]

    @abc.abstractmethod
    async def start(self, pull: PullFn) -> None:
        """Open the device and start pulling (call from the event loop)."""

    def flush(self) -> None:  # noqa: B027 - optional: backends holding no audio keep this
        """Drop the audio the backend itself still holds (barge-in). Any thread; no wait."""

    @property
    def failed(self) -> DeviceError | None:
        """Set when the device stopped on its own."""
        return None

    def report(self) -> None:  # noqa: B027 - optional: backends without a device thread
        """Log what the device thread noted (its callback errors). Call from the event loop."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop and release the device. Idempotent."""
