"""Restart benchmark: SIGKILL a service -> back in service, for every service.

The whole agent runs under the real supervisor (``navtalk-agent run``, subprocess) with
the embedded emulator, the virtual devices (run under ``scripts/with-virtual-devices.sh``)
and the default supervisor settings. This process watches ``health.*`` on the bus and, round
after round, SIGKILLs each service's current process, then waits for the first heartbeat
of its replacement. "Back in service" is that first heartbeat: a service sends it only once
its own bus has started (its subscriptions are in place at the proxy; agent.runtime), so it
is not "process up".

Each restart is split (``/proc/PID/stat`` start time, 10 ms resolution) into
- ``spawn``: SIGKILL -> the new process exists (reap, restart delay, fork/exec), and
- ``start``: the new process -> its first heartbeat (interpreter, imports, devices, bus).

A service is killed again only after it ran ``restart_stable_s`` (a death after a stable
run is restarted at once; quicker ones back off, as a crash loop should).

    scripts/with-virtual-devices.sh .venv/bin/python -m bench.bench_restart [--kills 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent import topics
from agent.bus import Bus
from agent.config import BusSettings, ControlPlane, MediaPlane, bus_toml, load
from agent.messages import Heartbeat
from bench.common import percentiles, save, start_supervisor, stop_supervisor, table

ROOT = Path(__file__).resolve().parents[1]
# every service a default profile runs (the camera runs only with camera.enabled)
SERVICES = tuple(s for s in topics.SERVICES if s != topics.CAMERA)
_TICK = os.sysconf("SC_CLK_TCK")


def _bus_settings(d: str) -> BusSettings:
    return BusSettings(
        control=ControlPlane(publish=f"ipc://{d}/c-in", subscribe=f"ipc://{d}/c-out", hwm=100_000),
        media=MediaPlane(publish=f"ipc://{d}/m-in", subscribe=f"ipc://{d}/m-out", hwm=100),
    )


def _config(d: str, *, headless: bool) -> Path:
    path = Path(d) / "restart.toml"
    display = 'backend = "null"' if headless else 'backend = "window"'
    path.write_text(
        bus_toml(_bus_settings(d))
        + f"""
[emulator]
embedded = true
port = 0

[session]
history_db_path = "{d}/history.sqlite3"

[display]
{display}

[tools]
disabled_builtins = ["take_photo"]
"""
    )
    return path


def _boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _started_at(pid: int) -> float | None:
    """When ``pid`` was created, on the CLOCK_BOOTTIME scale (10 ms resolution)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]) / _TICK  # field 22 overall: starttime, in clock ticks after boot


class Watcher:
    """The latest heartbeat of every service, and when its current process first beat."""

    def __init__(self, bus: Bus):
        self.bus = bus
        self.pid: dict[str, int] = {}
        self.first_beat: dict[str, float] = {}  # monotonic
        self.first_beat_boot: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def run(self) -> None:
        async for d in self.bus:
            msg = d.msg
            if isinstance(msg, Heartbeat) and msg.service in SERVICES:
                if self.pid.get(msg.service) != msg.pid:
                    self.pid[msg.service] = msg.pid
                    self.first_beat[msg.service] = time.monotonic()
                    self.first_beat_boot[msg.service] = _boottime()
                    self.changed.set()

    async def wait(self, cond: Any, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                self.changed.clear()
                await self.changed.wait()


async def bench(kills: int, services: list[str], headless: bool, log_path: Path) -> dict[str, Any]:
    d = tempfile.mkdtemp(prefix="ntr-")
    cfg = _config(d, headless=headless)
    settings = load(cfg)
    stable_s = settings.supervisor.restart_stable_s
    sup = start_supervisor(cfg, log_path)
    samples: dict[str, list[dict[str, float]]] = {s: [] for s in services}
    try:
        bus = Bus(settings.bus, "bench")
        bus.subscribe("health.")
        await bus.start(timeout=30)
        watcher = Watcher(bus)
        reader = asyncio.create_task(watcher.run())
        await watcher.wait(lambda: all(s in watcher.pid for s in services), 60)
        for round_no in range(kills):
            for service in services:
                # killed only after a stable run: the restart policy's normal case
                ran = time.monotonic() - watcher.first_beat[service]
                if ran < stable_s + 0.2:
                    await asyncio.sleep(stable_s + 0.2 - ran)
                old = watcher.pid[service]
                t_boot = _boottime()
                t0 = time.monotonic()
                os.kill(old, signal.SIGKILL)
                await watcher.wait(lambda s=service, o=old: watcher.pid.get(s) != o, 60)
                back_ms = (watcher.first_beat[service] - t0) * 1000
                new = watcher.pid[service]
                born = _started_at(new)
                spawn_ms = (born - t_boot) * 1000 if born is not None else float("nan")
                start_ms = (
                    (watcher.first_beat_boot[service] - born) * 1000
                    if born is not None
                    else float("nan")
                )
                samples[service].append(
                    {"back_ms": back_ms, "spawn_ms": spawn_ms, "start_ms": start_ms}
                )
                print(
                    f"round {round_no + 1}/{kills} {service:<8} pid {old} -> {new}: "
                    f"back in {back_ms:7.1f} ms (spawn {spawn_ms:6.0f}, start {start_ms:6.0f})",
                    flush=True,
                )
        reader.cancel()
        await bus.close()
    finally:
        await asyncio.to_thread(stop_supervisor, sup)
        shutil.rmtree(d, ignore_errors=True)
    rows = []
    for service, got in samples.items():
        row: dict[str, Any] = {"service": service}
        back = percentiles([g["back_ms"] for g in got])
        row.update({k: v for k, v in back.items()})
        row["spawn_p50_ms"] = percentiles([g["spawn_ms"] for g in got]).get("p50_ms")
        row["start_p50_ms"] = percentiles([g["start_ms"] for g in got]).get("p50_ms")
        rows.append(row)
    every = [g["back_ms"] for got in samples.values() for g in got]
    return {
        "kills_per_service": kills,
        "headless": headless,
        "supervisor_exit": sup.returncode,
        "all": percentiles(every),
        "per_service": rows,
        "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs per service")
    parser.add_argument("--services", nargs="+", default=list(SERVICES), choices=SERVICES)
    parser.add_argument("--headless", action="store_true", help="display backend null")
    parser.add_argument("--name", default="restart", help="results file name")
    args = parser.parse_args()
    log_path = Path(tempfile.gettempdir()) / f"bench-restart-{os.getpid()}.log"
    result = asyncio.run(bench(args.kills, args.services, args.headless, log_path))
    columns = ["service", "n", "p50_ms", "p90_ms", "p99_ms", "max_ms", "spawn_p50_ms",
               "start_p50_ms"]  # fmt: skip
    print()
    print(table("SIGKILL -> first heartbeat of the replacement", result["per_service"], columns))
    print(f"\nall services: {result['all']}; supervisor log: {log_path}")
    path = save(args.name, result)
    print(f"saved {path}")
    return 0 if result["supervisor_exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
