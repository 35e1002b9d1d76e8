"""Virtual audio devices and test speech for the audio tests.

Import this module from ``tests/conftest.py`` (``from tests.audio_fixtures import *``)
**before anything imports sounddevice**: PortAudio scans the devices once, at
``import sounddevice``, so the environment is set here, at import time:

- ``ALSA_CONFIG_PATH`` = the stock ``alsa.conf`` + ``config/alsa/virtual-audio.conf``, which
  adds the ALSA file devices ``vplay`` (speaker -> raw file ``$VAUDIO_OUT``) and ``vrec``
  (raw file ``$VAUDIO_IN`` -> microphone). Exact data path, but **not real time**.
- ``VAUDIO_IN`` / ``VAUDIO_OUT`` = files in a per-run temp dir. The input file is created
  here: a device whose input file is missing at import is listed with no input channels.
  Both variables are read again at every stream open, so :func:`vaudio` points them at a
  test's own files.
- ``PULSE_SERVER`` = the private PulseAudio server of ``scripts/virtual-audio.sh``, when it
  runs and the variable is not set already. Its null sink ``vsink`` is the speaker and its
  monitor the microphone (device ``pulse``): real time, with a loopback.

Gotchas kept in mind by the fixtures (shared/recipes/virtual-audio.md):
- capture from ``vrec`` past the end of its file returns stale junk, not silence: make the
  input file longer than what the test reads;
- ``vplay`` starts with ~43 ms of zeros; find the signal before comparing;
- ``sd.play`` loses the tail of a sound on ``pulse``; keep one stream open instead.

Tests that need PulseAudio skip with the command to run when it is not there; on CI the
Makefile starts it (``scripts/with-virtual-devices.sh`` runs ``scripts/virtual-audio.sh``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

__all__ = [
    "SpeechClip",
    "VirtualFiles",
    "alsa_audio",
    "make_speech",
    "pulse_audio",
    "speech_clip",
    "vaudio",
    "write_wav",
]

REPO = Path(__file__).resolve().parent.parent
ALSA_CONF = REPO / "config" / "alsa" / "virtual-audio.conf"
STOCK_ALSA_CONF = Path("/usr/share/alsa/alsa.conf")
VAUDIO_DIR = Path(os.environ.get("NAVTALK_VAUDIO_DIR", f"/tmp/navtalk-vaudio-{os.getuid()}"))
CACHE = Path(os.environ.get("NAVTALK_TEST_CACHE", REPO / ".cache" / "test-audio"))
START_HINT = 'eval "$(scripts/virtual-audio.sh start)"'

Int16Array = npt.NDArray[np.int16]

_SOUNDDEVICE_WAS_IMPORTED = "sounddevice" in sys.modules


def _setup_environment() -> Path:
    run_dir = Path(tempfile.mkdtemp(prefix="nt-vaudio-"))
    atexit.register(shutil.rmtree, run_dir, True)
    if STOCK_ALSA_CONF.exists() and "vplay" not in os.environ.get("ALSA_CONFIG_PATH", ""):
        # The stock file must come first (it defines the "null" device ours write through).
        os.environ["ALSA_CONFIG_PATH"] = f"{STOCK_ALSA_CONF}:{ALSA_CONF}"
    default_in, default_out = run_dir / "in.raw", run_dir / "out.raw"
    default_in.write_bytes(bytes(2 * 48_000))  # must exist when sounddevice is imported
    os.environ["VAUDIO_IN"] = str(default_in)
    os.environ["VAUDIO_OUT"] = str(default_out)
    socket = VAUDIO_DIR / "pulse" / "native"
    if "PULSE_SERVER" not in os.environ and socket.exists():
        os.environ["PULSE_SERVER"] = f"unix:{socket}"
    return run_dir


RUN_DIR = _setup_environment()


def _device_names() -> list[str]:
    import sounddevice as sd  # after the environment is set

    return [str(d["name"]) for d in sd.query_devices()]


# --- fixtures: devices --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def alsa_audio() -> None:
    """The ALSA file devices vplay/vrec are visible to PortAudio (else skip, with why)."""
    try:
        names = _device_names()
    except OSError as exc:
        pytest.skip(f"PortAudio not available: {exc}")
    if "vplay" not in names or "vrec" not in names:
        why = (
            "sounddevice was imported before tests/audio_fixtures.py"
            if _SOUNDDEVICE_WAS_IMPORTED
            else f"ALSA_CONFIG_PATH={os.environ.get('ALSA_CONFIG_PATH')!r}"
        )
        pytest.skip(f"ALSA file devices vplay/vrec not listed ({why}); devices: {names}")


@pytest.fixture(scope="session")
def pulse_audio() -> str:
    """The PulseAudio null sink is up and PortAudio sees it; returns the device name "pulse"."""
    if shutil.which("pactl") is None:
        pytest.skip("PulseAudio is not installed (scripts/install-system-deps.sh)")
    server = os.environ.get("PULSE_SERVER")
    if not server:
        pytest.skip(f"no PulseAudio virtual sink: run `{START_HINT}` first")
    probe = subprocess.run(
        ["pactl", "list", "short", "sinks"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if probe.returncode != 0 or "vsink" not in probe.stdout:
        pytest.skip(f"PulseAudio at {server} has no vsink ({probe.stderr.strip()}): {START_HINT}")
    try:
        names = _device_names()
    except OSError as exc:
        pytest.skip(f"PortAudio not available: {exc}")
    if "pulse" not in names:
        pytest.skip(
            "PortAudio lists no 'pulse' device (was sounddevice imported before "
            f"PULSE_SERVER was set?); devices: {names}"
        )
    return "pulse"


@dataclass
class VirtualFiles:
    """A test's own input/output files for the ALSA devices vrec/vplay."""

    input: Path
    output: Path

    def set_input(
        self, pcm: bytes, *, pad_s: float = 30.0, rate: int = 24_000, ch: int = 1
    ) -> None:
        """Write the raw input, padded with silence (reading past the end gives junk)."""
        self.input.write_bytes(pcm + bytes(int(pad_s * rate) * ch * 2))

    def output_samples(self, channels: int = 1) -> Int16Array:
        data = np.fromfile(self.output, dtype="<i2") if self.output.exists() else np.zeros(0)
        return data.astype(np.int16).reshape(-1, channels)


@pytest.fixture
def vaudio(alsa_audio: None, tmp_path: Path) -> Iterator[VirtualFiles]:
    """Point VAUDIO_IN/VAUDIO_OUT at this test's files (read at each stream open)."""
    saved = os.environ["VAUDIO_IN"], os.environ["VAUDIO_OUT"]
    files = VirtualFiles(tmp_path / "vrec-in.raw", tmp_path / "vplay-out.raw")
    files.input.write_bytes(bytes(2 * 48_000))
    os.environ["VAUDIO_IN"], os.environ["VAUDIO_OUT"] = str(files.input), str(files.output)
    yield files
    os.environ["VAUDIO_IN"], os.environ["VAUDIO_OUT"] = saved
    # vplay is not paced: an open stream writes minutes of audio per second; do not keep it.
    files.output.unlink(missing_ok=True)
    files.input.unlink(missing_ok=True)


# --- speech --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechClip:
    """24 kHz mono speech from espeak-ng, with where the voice is (by its energy envelope)."""

    samples: Int16Array
    voice_start: int  # first sample of the first 10 ms window above the energy threshold
    voice_end: int  # end of the last such window

    @property
    def pcm(self) -> bytes:
        return bytes(self.samples.astype("<i2").tobytes())


def write_wav(path: Path, samples: Int16Array, rate: int = 24_000, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


def _read_wav(path: Path) -> Int16Array:
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24_000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)


def voice_bounds(x: Int16Array, rate: int = 24_000, threshold_db: float = -35.0) -> tuple[int, int]:
    """First and last sample of the voice: 10 ms windows whose RMS is within
    ``threshold_db`` of the loudest window."""
    win = rate // 100
    n = len(x) // win
    rms = np.sqrt((x[: n * win].astype(np.float64).reshape(n, win) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (threshold_db / 20))
    return int(loud[0] * win), int((loud[-1] + 1) * win)


def make_speech(text: str, *, speed: int = 160, voice: str = "en-us") -> SpeechClip:
    """espeak-ng speech at 24 kHz mono PCM16, cached under .cache/test-audio."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed for test speech (scripts/install-system-deps.sh)")
    CACHE.mkdir(parents=True, exist_ok=True)
    key = f"{voice}-{speed}-" + "".join(c if c.isalnum() else "_" for c in text)[:60]
    out = CACHE / f"{key}.wav"
    if not out.exists():
        raw = CACHE / f"{key}.raw.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text],
            check=True,
            capture_output=True,
        )
        tmp = CACHE / f"{key}.tmp.wav"
        subprocess.run(
            ["sox", str(raw), "-r", "24000", "-c", "1", "-b", "16", "-e", "signed-integer",
             str(tmp)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        tmp.replace(out)
        raw.unlink(missing_ok=True)
    samples = _read_wav(out)
    start, end = voice_bounds(samples)
    return SpeechClip(samples, start, end)


@pytest.fixture(scope="session")
def speech_clip() -> SpeechClip:
    """A spoken sentence (about 2.7 s)."""
    return make_speech("Hello, I would like to check in please.")
