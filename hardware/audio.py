"""Audio devices behind two narrow interfaces: :class:`AudioInput` and :class:`AudioOutput`.

Everything on this side of the interface is **24 kHz mono PCM16** (little-endian): inputs
deliver fixed frames of it, outputs pull it. The backends convert from and to whatever the
device really runs at, with soxr's streaming resampler (never linear interpolation).

::

    AudioInput                                   AudioOutput
    ├── SoundDeviceInput   (PortAudio device)    ├── SoundDeviceOutput  (PortAudio device)
    ├── WavFileInput       (WAV, real time)      ├── WavFileOutput      (WAV, real time)
    └── SilenceInput       (silence, real time)  └── NullOutput         (discard, real time)

Threading. PortAudio calls our callbacks on its own thread. An input callback converts the
block, cuts it into frames and appends them to a bounded deque (oldest dropped), then wakes
the event loop with ``call_soon_threadsafe`` (at most one wake-up pending): it never waits.
An output callback *pulls* the samples it needs from a function the owner supplies
(:data:`PullFn`), which must not block either (the speaker guards its jitter buffer with a
lock held for microseconds). The file and null backends run the same pull/push from an
asyncio task paced by the monotonic clock, so a service cannot tell them apart.

PortAudio scans the devices when ``sounddevice`` is imported, so it is imported lazily,
on first use: set ``ALSA_CONFIG_PATH`` / ``PULSE_SERVER`` before that.

The interfaces live in :mod:`hardware.audio_base`, the PortAudio backends in
:mod:`hardware.portaudio`, the file and null ones in :mod:`hardware.audio_files`; this
module is the one to import (it has them all) and builds the one the settings ask for.
"""

from __future__ import annotations

from agent.audio.pcm import PCM_RATE_HZ
from agent.audio.settings import MicSettings, SpeakerSettings
from agent.errors import DeviceError
from hardware.audio_base import AudioInput, AudioOutput, CapturedFrame, PullFn, WriteRecord
from hardware.audio_files import (
    NullOutput,
    SilenceInput,
    WavFileInput,
    WavFileOutput,
    read_wav_24k_mono,
)
from hardware.portaudio import (
    SoundDeviceInput,
    SoundDeviceOutput,
    list_devices,
    rescan_devices,
    resolve_device,
)

__all__ = [
    "PCM_RATE_HZ",
    "AudioInput",
    "AudioOutput",
    "CapturedFrame",
    "NullOutput",
    "PullFn",
    "SilenceInput",
    "SoundDeviceInput",
    "SoundDeviceOutput",
    "WavFileInput",
    "WavFileOutput",
    "WriteRecord",
    "list_devices",
    "open_input",
    "open_output",
    "read_wav_24k_mono",
    "rescan_devices",
    "resolve_device",
]


# --- factories -----------------------------------------------------------------------------------


def open_input(settings: MicSettings) -> AudioInput:
    """The input backend the mic settings ask for (not started)."""
    if settings.backend == "sounddevice":
        return SoundDeviceInput(
            settings.device or None,
            frame_ms=settings.frame_ms,
            sample_rate_hz=settings.sample_rate_hz,
            channels=settings.channels,
            channel=settings.channel,
            latency=settings.latency,
            block_ms=settings.block_ms,
            queue_ms=settings.queue_ms,
        )
    if settings.backend == "file":
        if not settings.wav_path:
            raise DeviceError("mic.backend = 'file' needs mic.wav_path")
        return WavFileInput(
            settings.wav_path,
            frame_ms=settings.frame_ms,
            loop=settings.loop,
            pad_silence=settings.pad_silence,
        )
    return SilenceInput(frame_ms=settings.frame_ms)


def open_output(settings: SpeakerSettings) -> AudioOutput:
    """The output backend the speaker settings ask for (not started)."""
    if settings.backend == "sounddevice":
        return SoundDeviceOutput(
            settings.device or None,
            period_ms=settings.period_ms,
            sample_rate_hz=settings.sample_rate_hz,
            channels=settings.channels,
            latency=settings.latency,
        )
    if settings.backend == "file":
        return WavFileOutput(settings.wav_path, period_ms=settings.period_ms)
    return NullOutput(period_ms=settings.period_ms)
