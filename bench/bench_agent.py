"""Whole agent: CPU and PSS of every process during the scripted conversation.

The whole agent runs under the real supervisor (``navtalk-agent run``, subprocess) with the
embedded emulator (WebRTC avatar video on), null mic and speaker, and the display backend
asked for (``window`` by default: run under ``scripts/with-virtual-devices.sh`` for Xvfb) at
the size and rate asked for. This process plays the guest on the bus as bench_soak does (a
typed question every few seconds through the emulator's default script, tools included, the
session started again after its goodbye).

Start of the window: ``--warmup`` seconds after every service's first heartbeat (pids from
the ``health.*`` heartbeats; the emulator's and the zygote's from the supervisor's log and
process tree) with the conversation going. End: ``--seconds`` later. For each process,
CPU is (utime + stime at the end - at the start) / wall time, from ``/proc/PID/stat``, in %
of one core (a process that was restarted inside the window has no CPU figure); PSS and RSS
are the mean of the samples taken every 5 s from ``/proc/PID/smaps_rollup``. The 1-minute
load average at the start and the end is printed beside the figures.

    scripts/with-virtual-devices.sh .venv/bin/python -m bench.bench_agent \
        [--width 512 --height 512 --fps 25] [--backend window|null|file] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.config import bus_toml, load
from bench.bench_soak import (
    SERVICES,
    Guest,
    SpawnLog,
    _bus_settings,
    guest_on_bus,
    processes,
    read_proc,
)
from bench.common import save, start_supervisor, stop_supervisor, table

SAMPLE_S = 5.0


def config_text(d: str, backend: str, width: int, height: int, fps: int) -> str:
    return (
        bus_toml(_bus_settings(d))
        + f"""
[emulator]
embedded = true
port = 0
webrtc = true

[session]
history_db_path = "{d}/history.sqlite3"

[mic]
backend = "null"

[speaker]
backend = "null"

[display]
backend = "{backend}"
file_path = "{d}/avatar.mp4"
width = {width}
height = {height}
fps = {fps}

[tools]
disabled_builtins = ["take_photo"]
"""
    )


async def _sample(sup_pid: int, guest: Guest, spawn_log: SpawnLog, stop_at: float,
                  samples: dict[str, list[dict[str, float]]]) -> None:  # fmt: skip
    while True:
        for role, pid in processes(sup_pid, guest.pid, spawn_log.poll()).items():
            got = await asyncio.to_thread(read_proc, pid)
            if got is not None:
                samples.setdefault(role, []).append({"pid": float(pid), **got})
        if time.monotonic() >= stop_at:
            return
        await asyncio.sleep(min(SAMPLE_S, max(0.0, stop_at - time.monotonic())))  # sampling


def summarize(samples: dict[str, list[dict[str, float]]], wall_s: float) -> list[dict[str, Any]]:
    order = ("supervisor", "zygote", "emulator", *SERVICES)
    rows: list[dict[str, Any]] = []
    for role in sorted(samples, key=lambda r: order.index(r) if r in order else len(order)):
        got = samples[role]
        first, last = got[0], got[-1]
        same = first["pid"] == last["pid"] and len(got) >= 2
        rows.append(
            {
                "process": role,
                "pid": int(last["pid"]),
                "cpu_pct": round((last["cpu_s"] - first["cpu_s"]) / wall_s * 100, 1)
                if same
                else None,
                "pss_mb": round(sum(g["pss_kb"] for g in got) / len(got) / 1024, 1),
                "rss_mb": round(sum(g["rss_kb"] for g in got) / len(got) / 1024, 1),
                "threads": int(last["threads"]),
            }
        )
    agent = [r for r in rows if r["process"] != "emulator"]  # the emulator stands for the cloud
    rows.append(
        {
            "process": "AGENT (all but emulator)",
            "cpu_pct": round(sum(r["cpu_pct"] or 0.0 for r in agent), 1),
            "pss_mb": round(sum(r["pss_mb"] for r in agent), 1),
            "rss_mb": round(sum(r["rss_mb"] for r in agent), 1),
        }
    )
    return rows


async def bench(args: argparse.Namespace, log_path: Path) -> dict[str, Any]:
    d = tempfile.mkdtemp(prefix="nta-")
    cfg = Path(d) / "agent.toml"
    cfg.write_text(config_text(d, args.backend, args.width, args.height, args.fps))
    settings = load(cfg)
    sup = start_supervisor(cfg, log_path)
    samples: dict[str, list[dict[str, float]]] = {}
    try:
        bus, guest, reader = await guest_on_bus(settings, "bench-agent")
        t_up = time.monotonic()
        start_at = t_up + args.warmup
        stop_at = start_at + args.seconds
        talk = asyncio.create_task(guest.converse(stop_at, args.ask_every))
        await asyncio.sleep(args.warmup)  # the warm-up: the conversation runs meanwhile
        load_start = round(os.getloadavg()[0], 2)
        t0 = time.monotonic()
        await _sample(sup.pid, guest, SpawnLog(log_path), stop_at, samples)
        wall_s = time.monotonic() - t0
        load_end = round(os.getloadavg()[0], 2)
        await talk
        reader.cancel()
        await bus.close()
    finally:
        await asyncio.to_thread(stop_supervisor, sup)
        shutil.rmtree(d, ignore_errors=True)
    return {
        "display": f"{args.backend} {args.width}x{args.height}@{args.fps}",
        "window_s": round(wall_s, 1),
        "warmup_s": args.warmup,
        "load1_start": load_start,
        "load1_end": load_end,
        "asked": sum(guest.asked.values()),
        "answered": sum(guest.answered.values()),
        "processes": summarize(samples, wall_s),
        "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="window", choices=["window", "null", "file"])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=60.0, help="the measured window")
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--ask-every", type=float, default=8.0)
    parser.add_argument("--name", default=None, help="results file name")
    args = parser.parse_args()
    log_path = Path(tempfile.gettempdir()) / f"bench-agent-{os.getpid()}.log"
    r = asyncio.run(bench(args, log_path))
    title = (
        f"whole agent, {r['display']}, {r['window_s']} s of conversation "
        f"({r['answered']}/{r['asked']} answered), load {r['load1_start']} -> {r['load1_end']}"
    )
    cols = ["process", "pid", "cpu_pct", "pss_mb", "rss_mb", "threads"]
    print(table(title, r["processes"], cols))
    print(f"supervisor log: {log_path}")
    name = args.name or f"agent-{args.backend}-{args.width}x{args.height}-{args.fps}"
    print(f"saved {save(name, r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
