"""Speaker benchmark: the speaker process's CPU while it plays a continuous voice.

The speaker runs in its own process (null device, 5 ms periods: the default), fed 48 kHz
stereo voice on ``audio.out`` every 20 ms by this process through the real proxy. The CPU
figure starts once the speaker reports ``playing`` and stops ``--seconds`` later: user +
system time of the speaker process (/proc/PID/stat) over that wall time; ``load`` is the
1-minute load average at the end. ``audio.played`` counts the echo-reference blocks that
arrived here over the same window (published only with ``mic.echo_mode =
"software_aec"``).

::

    .venv/bin/python -m bench.bench_speaker [--seconds 8] [--baseline DIR [--rounds 2]]

With ``--baseline DIR`` (a checkout to compare with) the speaker runs alternately from DIR
and from this tree, ABBA, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from agent import topics
from agent.audio.settings import MicSettings, SpeakerSettings
from agent.bus import Bus, Proxy
from agent.config import default_settings
from agent.messages import AudioFrame, SpeakerState
from bench.bench_video import bus_settings, cpu_seconds
from bench.common import save, table

HERE = Path(__file__).resolve().parents[1]
CHILD = """
import asyncio, sys, msgspec
from agent.bus import Bus
from agent.config import Settings
from services import speaker
settings = msgspec.json.decode(sys.argv[1], type=Settings)
async def main():
    await speaker.run(settings, Bus(settings.bus, "speaker"))
try:
    asyncio.run(main())
except KeyboardInterrupt:
    pass
"""


def _start(root: Path, settings_json: str) -> subprocess.Popen[bytes]:
    """The speaker process, running the code of ``root`` (this tree or a baseline)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.Popen([sys.executable, "-c", CHILD, settings_json], cwd=root, env=env)


async def run_once(root: Path, echo_mode: str, seconds: float, workdir: str) -> dict[str, Any]:
    bs = bus_settings(workdir)
    settings = msgspec.structs.replace(
        default_settings(),
        bus=bs,
        speaker=SpeakerSettings(backend="null", period_ms=5),
        mic=MicSettings(echo_mode=echo_mode),  # type: ignore[arg-type]
    )
    tone = (np.sin(np.arange(960) * 2 * np.pi * 220 / 48_000) * 8000).astype("<i2")
    pcm = np.repeat(tone, 2).tobytes()  # 20 ms, 48 kHz stereo
    with Proxy(bs):
        test = Bus(bs, "display")
        test.subscribe(topics.SPEAKER_STATE, topics.AUDIO_PLAYED)
        await test.start()
        proc = _start(root, msgspec.json.encode(settings).decode())
        played = 0
        try:
            t_next = time.monotonic()
            playing_at: float | None = None
            cpu0 = t0 = 0.0
            while True:
                test.publish(topics.AUDIO_OUT, AudioFrame(sample_rate_hz=48_000, channels=2), pcm)
                t_next += 0.02
                while (wait := t_next - time.monotonic()) > 0:
                    try:
                        async with asyncio.timeout(wait):
                            d = await test.recv()
                    except TimeoutError:
                        break
                    if isinstance(d.msg, SpeakerState) and d.msg.playing and playing_at is None:
                        playing_at = time.monotonic()
                        cpu0, t0 = cpu_seconds(proc.pid), playing_at
                    played += d.topic == topics.AUDIO_PLAYED and playing_at is not None
                if playing_at is not None and time.monotonic() - t0 >= seconds:
                    break
                if playing_at is None and time.monotonic() > t_next + 30:
                    raise RuntimeError("the speaker never played")
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            load = os.getloadavg()[0]
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            await test.close()
    return {
        "code": "this tree" if root == HERE else "baseline",
        "echo_mode": echo_mode,
        "seconds": round(t1 - t0, 2),
        "speaker_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "audio_played_msgs_per_s": round(played / (t1 - t0), 1),
        "load": round(load, 2),
    }


async def main(seconds: float, baseline: Path | None, rounds: int) -> None:
    plan: list[tuple[Path, str]] = []
    if baseline is not None:
        plan += ([(baseline, "none"), (HERE, "none"), (HERE, "none"), (baseline, "none")] * rounds)[
            : 2 * rounds
        ]
    else:
        plan += [(HERE, "none")]
    plan.append((HERE, "software_aec"))
    rows = []
    for root, mode in plan:
        with tempfile.TemporaryDirectory(prefix="nts-") as workdir:
            row = await run_once(root, mode, seconds, workdir)
        print(row, flush=True)
        rows.append(row)
    print(
        table(
            f"speaker: {seconds:g} s playing, null device, 5 ms periods",
            rows,
            ["code", "echo_mode", "speaker_cpu_pct", "audio_played_msgs_per_s", "load"],
        )
    )
    ratio = None
    if baseline is not None:
        med = {
            c: float(np.median([r["speaker_cpu_pct"] for r in rows[:-1] if r["code"] == c]))
            for c in ("this tree", "baseline")
        }
        ratio = round(med["this tree"] / max(1e-9, med["baseline"]), 3)
        print(f"speaker CPU this tree / baseline (medians, echo_mode none): x{ratio}")
    print("saved", save("speaker", {"results": rows, "cpu_ratio_vs_baseline": ratio}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--baseline", type=Path, help="a checkout to compare with, interleaved")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    base = args.baseline.resolve() if args.baseline else None
    asyncio.run(main(args.seconds, base, args.rounds))
