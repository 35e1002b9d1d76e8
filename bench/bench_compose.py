"""Composer benchmark: the time to compose one display frame, this tree against a baseline.

One process, one thread: each frame is composed by this tree's
:class:`agent.video.compose.Composer` and by the baseline's (``--baseline DIR``, loaded
from ``DIR/agent/video/compose.py``), alternating ABBA frame by frame, so that both see the
same load. A figure starts when ``compose()`` is called and stops when it returns
(``time.perf_counter_ns``); the avatar frame is ready beforehand (decoding is not
included). Scenes: a 512² avatar on a 1280x720 canvas (letterbox bars) and a 1280x720
avatar on a 1280x720 canvas, each with and without captions (the avatar's caption
growing word by word every 5 frames, as live transcripts do).

::

    .venv/bin/python -m bench.bench_compose [--baseline DIR] [--frames 400]

Without ``--baseline`` only this tree is timed.

A last row times the MP4 screen's ``show()`` on the caller's (the render) thread for
1280x720 frames at 30 fps timestamps, this tree's :class:`hardware.screen.FileScreen`
(encoding on its own thread) against the baseline's (encoding inside ``show()``), also
alternating; it starts when ``show()`` is called and stops when it returns.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from agent.emulator.avatar import AvatarPainter
from agent.video import compose as current
from bench.common import percentiles, save, table
from hardware import screen as hw_screen

WORDS = "Welcome to the hotel, your room is on the second floor next to the lift".split()


def load_baseline(root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "baseline_compose", root / "agent/video/compose.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_compose"] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def load_baseline_screen(root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_screen", root / "hardware/screen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_screen"] = module
    spec.loader.exec_module(module)
    return module


def run_mp4(modules: list[ModuleType], frames: int, workdir: str) -> list[list[float]]:
    avatars = [AvatarPainter(1280, 720).paint(k / 10) for k in range(10)]
    screens = [m.FileScreen(f"{workdir}/{k}.mp4", 30, audio=False) for k, m in enumerate(modules)]
    for screen in screens:
        screen.open()
    times: list[list[float]] = [[] for _ in modules]
    for i in range(frames):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for k in order if len(modules) == 2 else (0,):
            t0 = time.perf_counter_ns()
            screens[k].show(avatars[i % 10], 100.0 + i / 30)
            times[k].append((time.perf_counter_ns() - t0) / 1e6)
    for screen in screens:
        screen.close()
    return times


def run_scene(
    modules: list[ModuleType], avatar_wh: tuple[int, int], captions: bool, frames: int
) -> list[list[float]]:
    avatars = [AvatarPainter(*avatar_wh).paint(k / 10) for k in range(10)]
    composers = [m.Composer(1280, 720) for m in modules]
    times: list[list[float]] = [[] for _ in modules]
    for i in range(frames):
        words = " ".join(WORDS[: (i // 5) % len(WORDS) + 1]) if captions else ""
        order = (0, 1) if i % 2 == 0 else (1, 0)  # AB, BA, AB, ...
        for k in order if len(modules) == 2 else (0,):
            m = modules[k]
            overlay = m.Overlay(m.Scene.LIVE, m.Badge.SPEAKING, "", words)
            t0 = time.perf_counter_ns()
            composers[k].compose(avatars[i % 10], overlay)
            times[k].append((time.perf_counter_ns() - t0) / 1e6)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="a checkout to compare with")
    parser.add_argument("--frames", type=int, default=400)
    args = parser.parse_args()
    modules = [load_baseline(args.baseline.resolve()), current] if args.baseline else [current]
    codes = ("baseline", "this tree") if args.baseline else ("this tree",)
    rows: list[dict[str, Any]] = []
    for avatar_wh in ((512, 512), (1280, 720)):
        for captions in (False, True):
            times = run_scene(modules, avatar_wh, captions, args.frames)
            load = round(os.getloadavg()[0], 2)
            scene = f"{avatar_wh[0]}x{avatar_wh[1]} on 1280x720" + (
                ", captions" if captions else ""
            )
            stats = [percentiles(t) for t in times]
            for code, st in zip(codes, stats, strict=True):
                rows.append({"scene": scene, "code": code, "load": load, **st})
            if len(stats) == 2:
                rows[-1]["p50_ratio"] = round(stats[1]["p50_ms"] / stats[0]["p50_ms"], 3)
            print(f"{scene}: p50 {[st['p50_ms'] for st in stats]} ms (load {load})", flush=True)
    screens = (
        [load_baseline_screen(args.baseline.resolve()), hw_screen] if args.baseline else [hw_screen]
    )
    with tempfile.TemporaryDirectory(prefix="ntc-") as workdir:
        times = run_mp4(screens, min(args.frames, 300), workdir)
    load = round(os.getloadavg()[0], 2)
    stats = [percentiles(t) for t in times]
    for code, st in zip(codes, stats, strict=True):
        rows.append({"scene": "MP4 show(), 1280x720", "code": code, "load": load, **st})
    if len(stats) == 2:
        rows[-1]["p50_ratio"] = round(stats[1]["p50_ms"] / stats[0]["p50_ms"], 3)
    print(f"MP4 show(): p50 {[st['p50_ms'] for st in stats]} ms (load {load})", flush=True)
    print(
        table(
            "compose() and MP4 show(): ms per 1280x720 frame, baseline and this tree interleaved",
            rows,
            ["scene", "code", "n", "p50_ms", "p90_ms", "p99_ms", "p50_ratio", "load"],
        )
    )
    baseline = str(args.baseline) if args.baseline else None
    print("saved", save("compose", {"baseline": baseline, "results": rows}))


if __name__ == "__main__":
    main()
