"""What the emulator heard: speech recognition constrained to the script's ``hears`` lines.

Two modes (setting ``[emulator] recognizer``):

- ``speech`` (default): :class:`GrammarRecognizer`, pocketsphinx (the PyPI wheel ships its
  US English model; nothing is downloaded) with a JSGF grammar whose alternatives are the
  script's ``hears`` lines. An utterance is recognized as a line when the decoder reaches
  the line's end, or when the decoder's best partial path is a prefix of exactly one line
  that covers enough of it (:func:`_enough`: the FSG search sometimes loses the last word
  of synthetic speech). Anything else is "not recognized" and gets the script's fallback.
- ``order``: :class:`OrderRecognizer`, the n-th utterance is the n-th line whatever was said
  (the emulator's old behaviour; kept only as an explicit option).

:meth:`GrammarRecognizer.recognize` is CPU work (about 2 % of a core per second of audio):
the server runs it in an executor, never on the event loop.
"""

from __future__ import annotations

import enum
import importlib.util
import logging
import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import soxr

from agent.errors import ConfigError

__all__ = ["GrammarRecognizer", "OrderRecognizer", "RecognizerMode", "normalize"]

logger = logging.getLogger(__name__)

IN_RATE_HZ = 24_000
ASR_RATE_HZ = 16_000
PAD_S = 0.2  # silence around an utterance helps the decoder find its start and end


class RecognizerMode(enum.StrEnum):
    SPEECH = "speech"
    ORDER = "order"


def normalize(text: str) -> tuple[str, ...]:
    """Words of ``text`` as the dictionary spells them: lower case, punctuation dropped."""
    return tuple(re.sub(r"[^a-z']+", " ", text.lower()).split())


class OrderRecognizer:
    """The n-th utterance is the n-th line; past the end, nothing is recognized."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = tuple(lines)
        self._next = 0

    def recognize(self, pcm24k: bytes) -> str | None:
        index = self._next
        self._next += 1
        return self.lines[index] if index < len(self.lines) else None


class GrammarRecognizer:
    """pocketsphinx with a grammar of the script's lines. Thread-safe (one decoder, locked).

    The decoder (model load, about 0.3-2 s of CPU) is built in a worker thread started by
    :meth:`start_build` (the emulator: once it listens), so the port opens at once; the
    first :meth:`recognize` (or a read of :attr:`active` / :attr:`skipped`) waits for it. A
    missing package is still a :class:`ConfigError` from the constructor."""

    def __init__(self, lines: Sequence[str]) -> None:
        if importlib.util.find_spec("pocketsphinx") is None:
            raise ConfigError(
                "[emulator] recognizer = 'speech' needs the pocketsphinx package "
                "(pip install pocketsphinx), or set recognizer = 'order'"
            )
        self._lines = tuple(lines)
        self._decoder: Any = None
        self._lock = threading.Lock()
        self._by_words: dict[tuple[str, ...], str] = {}
        self._skipped: list[str] = []  # lines with words the dictionary does not know
        self._active = False
        self._error: BaseException | None = None
        self._built = threading.Event()
        self._started = False
        self._start_lock = threading.Lock()

    def start_build(self) -> None:
        """Start building the decoder in a worker thread (once). The emulator calls it once
        its port is open (the build holds the GIL for long stretches); the first use
        starts it otherwise."""
        with self._start_lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._build, name="emu-asr-init", daemon=True).start()

    def _build(self) -> None:
        try:
            from pocketsphinx import Config, Decoder

            decoder: Any = Decoder(Config(lm=None, loglevel="FATAL"))
            for line in self._lines:
                words = normalize(line)
                missing = [w for w in words if decoder.lookup_word(w) is None]
                if not words or missing:
                    logger.warning(
                        "= recognizer: %r can never be recognized (unknown words: %s)",
                        line,
                        missing,
                    )
                    self._skipped.append(line)
                    continue
                self._by_words.setdefault(words, line)
            if self._by_words:
                alternatives = " | ".join(f"( {' '.join(w)} )" for w in self._by_words)
                grammar = f"#JSGF V1.0;\ngrammar hears;\npublic <line> = {alternatives};\n"
                decoder.add_jsgf_string("hears", grammar)
                decoder.activate_search("hears")
            self._decoder = decoder
            self._active = bool(self._by_words)
        except Exception as exc:  # surfaced to every caller of wait_built
            logger.exception("= recognizer: cannot build the decoder")
            self._error = exc
        finally:
            self._built.set()

    def wait_built(self, timeout: float | None = None) -> bool:
        """Block until the decoder is built (True) or ``timeout`` passes (False)."""
        self.start_build()
        if not self._built.wait(timeout):
            return False
        if self._error is not None:
            raise RuntimeError("the recognizer's decoder could not be built") from self._error
        return True

    @property
    def active(self) -> bool:
        """Some line can be recognized (waits for the decoder)."""
        self.wait_built()
        return self._active

    @property
    def skipped(self) -> list[str]:
        """Lines with words the dictionary does not know (waits for the decoder)."""
        self.wait_built()
        return self._skipped

    def recognize(self, pcm24k: bytes) -> str | None:
        """The script line spoken in ``pcm24k`` (PCM16 LE, 24 kHz mono), or None."""
        if not self.active:  # waits for the decoder (the first utterance only)
            return None
        usable = len(pcm24k) - len(pcm24k) % 2
        x = np.frombuffer(pcm24k[:usable], dtype="<i2")
        y = np.asarray(soxr.resample(x, IN_RATE_HZ, ASR_RATE_HZ), dtype="<i2")
        pad = np.zeros(int(PAD_S * ASR_RATE_HZ), dtype="<i2")
        pcm16k = np.concatenate([pad, y, pad]).tobytes()
        with self._lock:
            self._decoder.start_utt()
            self._decoder.process_raw(pcm16k, full_utt=True)
            self._decoder.end_utt()
            hyp = self._decoder.hyp()
        words = tuple(hyp.hypstr.split()) if hyp is not None else ()
        return self.match(words)

    def match(self, words: tuple[str, ...]) -> str | None:
        """The line for a decoder hypothesis: the whole line, or a unique prefix of at least
        half of one line's words."""
        self.wait_built()
        if not words:
            return None
        if words in self._by_words:
            return self._by_words[words]
        candidates = [
            line
            for w, line in self._by_words.items()
            if w[: len(words)] == words and _enough(len(words), w[len(words) :])
        ]
        return candidates[0] if len(candidates) == 1 else None


def _enough(said: int, missing: tuple[str, ...]) -> bool:
    """A partial path stands for its line when it has at least two words and either covers
    two thirds of the line or lacks only short words (the FSG search tends to lose a short
    last word such as "is it"); "where is the" must not stand for "where is the breakfast
    room" (a question about the window ends that way too)."""
    if said < 2:
        return False
    return 3 * said >= 2 * (said + len(missing)) or all(len(w) <= 3 for w in missing)
