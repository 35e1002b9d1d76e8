"""Speech for the emulator: espeak-ng in a subprocess, resampled to 24 kHz mono PCM16 by soxr.

Results are cached by text (the script repeats itself). Without espeak-ng a
buzzing stand-in of about the right length is produced, so the emulator still
runs (logged once).
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import shutil
import wave

import numpy as np
import soxr

__all__ = ["OUT_RATE_HZ", "Tts"]

logger = logging.getLogger(__name__)

OUT_RATE_HZ = 24_000
CACHE_SIZE = 128


class Tts:
    def __init__(self, voice: str = "en-us", words_per_minute: int = 160) -> None:
        self.voice = voice
        self.words_per_minute = words_per_minute
        self._cache: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._exe = shutil.which("espeak-ng")
        if self._exe is None:
            logger.warning("= espeak-ng not found: the emulator speaks in buzzes")

    async def synthesize(self, text: str) -> bytes:
        """PCM16 little-endian, 24 kHz, mono for ``text``."""
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        pcm = await self._espeak(text) if self._exe else _buzz(text)
        self._cache[text] = pcm
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return pcm

    async def _espeak(self, text: str) -> bytes:
        assert self._exe is not None
        proc = await asyncio.create_subprocess_exec(
            self._exe,
            "-v",
            self.voice,
            "-s",
            str(self.words_per_minute),
            "--stdout",
            "--",
            text,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            wav, err = await proc.communicate()
        except asyncio.CancelledError:
            proc.kill()
            await asyncio.shield(proc.wait())
            raise
        if proc.returncode != 0 or not wav:
            logger.warning("= espeak-ng failed (%s): %s", proc.returncode, err[:200])
            return _buzz(text)
        return _to_24k(wav)


def _to_24k(wav_bytes: bytes) -> bytes:
    # espeak-ng's --stdout WAV header has unknown (0xFFFFFFFF) sizes; read the data by hand.
    with wave.open(io.BytesIO(wav_bytes)) as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
    data_at = wav_bytes.find(b"data", 12)
    if data_at < 0:
        raise ValueError("espeak-ng wrote no WAV data chunk")
    data = wav_bytes[data_at + 8 :]
    data = data[: len(data) - len(data) % (width * channels)]
    if width != 2:
        raise ValueError(f"espeak-ng wrote {width * 8}-bit audio")
    x = np.frombuffer(data, dtype="<i2").reshape(-1, channels)[:, 0]
    y = soxr.resample(x, rate, OUT_RATE_HZ) if rate != OUT_RATE_HZ else x
    return np.asarray(y, dtype="<i2").tobytes()


def _buzz(text: str) -> bytes:
    seconds = max(0.3, 0.06 * len(text))
    t = np.arange(int(seconds * OUT_RATE_HZ)) / OUT_RATE_HZ
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    x = 0.2 * 32767 * envelope * np.sin(2 * np.pi * 180 * t)
    return x.astype("<i2").tobytes()
