"""Emulator speech recognition benchmark: accuracy over a script's ``hears`` lines and CPU.

Each line of the script is spoken by espeak-ng in several voices and recognized by
:class:`agent.emulator.recognizer.GrammarRecognizer`; so are questions that are in no
line (they must get ``None``, the fallback). Reports per-voice results, in-grammar
accuracy, out-of-grammar false accepts and CPU seconds per second of audio (this
thread's CPU: what the emulator's recognition worker spends)::

    .venv/bin/python -m bench.bench_recognizer [--script config/scripts/demo.toml]

Results go to bench/results/recognizer.json.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import soxr

from agent.emulator.recognizer import GrammarRecognizer
from agent.emulator.script import Script

VOICES = ("en-us", "en-gb", "en-us+f3", "en-us+m3")
OUTSIDE = (
    "Can you open the window please?",
    "I would like a taxi to the airport.",
    "What is the weather like?",
    "Do you have a swimming pool?",
)
RESULTS = Path(__file__).parent / "results" / "recognizer.json"


def speak(text: str, voice: str, speed: int = 160) -> bytes:
    """espeak-ng speech as PCM16 24 kHz mono (what clients send)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", "--", text],
        capture_output=True,
        check=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
    data = wav[wav.find(b"data", 12) + 8 :]
    x = np.frombuffer(data[: len(data) // 2 * 2], "<i2")
    return np.asarray(soxr.resample(x, rate, 24_000), dtype="<i2").tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", default="config/scripts/demo.toml")
    args = parser.parse_args()
    lines = list(Script.load(args.script).hears)
    recognizer = GrammarRecognizer(lines)
    rows = []
    cpu = audio = 0.0
    for voice in VOICES:
        for text in lines + list(OUTSIDE):
            pcm = speak(text, voice)
            started = time.thread_time()
            got = recognizer.recognize(pcm)
            cpu += time.thread_time() - started
            audio += len(pcm) / 48_000
            expected = text if text in lines else None
            rows.append({"voice": voice, "said": text, "heard": got, "ok": got == expected})
            print(f"{'ok ' if got == expected else 'BAD'} {voice:9s} {text!r} -> {got!r}")
    inside = [r for r in rows if r["said"] in lines]
    outside = [r for r in rows if r["said"] not in lines]
    summary = {
        "script": args.script,
        "voices": list(VOICES),
        "in_grammar_correct": sum(r["ok"] for r in inside),
        "in_grammar_total": len(inside),
        "out_of_grammar_false_accepts": sum(not r["ok"] for r in outside),
        "out_of_grammar_total": len(outside),
        "cpu_s_per_audio_s": round(cpu / audio, 4),
        "audio_s": round(audio, 1),
        "rows": rows,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"in-grammar {summary['in_grammar_correct']}/{summary['in_grammar_total']}, "
        f"out-of-grammar false accepts {summary['out_of_grammar_false_accepts']}/"
        f"{summary['out_of_grammar_total']}, {summary['cpu_s_per_audio_s']} CPU s per audio s"
    )


if __name__ == "__main__":
    main()
