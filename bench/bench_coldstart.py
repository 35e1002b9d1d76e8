"""Cold start benchmark: ``navtalk-agent run`` with the embedded emulator -> session ready.

Each run starts the real supervisor (``python -m agent run --config ...``, subprocess) with the
embedded emulator and null devices (mic, speaker, display: no device or window is opened), so
what is timed is interpreters, imports, the bus, the emulator and the NavTalk handshake.

Start: just before the supervisor's ``Popen`` (the process start). Stop: the first
``session.state`` with phase READY (``realtime.session.updated`` received: audio flows) seen by
a bus client of this process. This bench binds the bus sockets itself (the agent's proxy is
started by the supervisor; this client connects to it and retries until it is up), so the stop
point is when a subscriber on the bus sees it, not when the session logs it.

Each row also counts how often the session's connect was refused or failed in the run's log
(the first connect racing the embedded emulator used to be refused once).

    .venv/bin/python -m bench.bench_coldstart [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent import topics
from agent.bus import Bus
from agent.config import BusSettings, ControlPlane, MediaPlane, bus_toml, load
from agent.messages import SessionPhase, SessionState
from bench.common import percentiles, save, table

ROOT = Path(__file__).resolve().parents[1]


def _bus_settings(d: str) -> BusSettings:
    return BusSettings(
        control=ControlPlane(publish=f"ipc://{d}/c-in", subscribe=f"ipc://{d}/c-out"),
        media=MediaPlane(publish=f"ipc://{d}/m-in", subscribe=f"ipc://{d}/m-out"),
    )


def config_text(d: str) -> str:
    """The emulator profile's shape with null devices (nothing opened, nothing written)."""
    return (
        bus_toml(_bus_settings(d))
        + f"""
[emulator]
embedded = true
port = 0
script_path = "{ROOT}/config/scripts/demo.toml"

[mic]
backend = "null"

[speaker]
backend = "null"

[display]
backend = "null"

[session]
history_db_path = "{d}/history.sqlite3"

[tools]
disabled_builtins = ["take_photo"]
"""
    )


def _stop(sup: subprocess.Popen[bytes]) -> None:
    if sup.poll() is None:
        sup.send_signal(signal.SIGTERM)
    try:
        sup.wait(timeout=30)
    except subprocess.TimeoutExpired:
        sup.kill()
        sup.wait()


def _start(cfg: Path, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip


def _finish(d: Path, log_path: Path, keep_log: Path | None) -> str:
    text = log_path.read_text(errors="replace")
    if keep_log is not None:
        keep_log.write_text(text)
    shutil.rmtree(d, ignore_errors=True)
    return text


async def _ready(bus: Bus, timeout: float) -> float:
    async with asyncio.timeout(timeout):
        async for d in bus:
            if isinstance(d.msg, SessionState) and d.msg.phase is SessionPhase.READY:
                return time.monotonic()
    raise TimeoutError


async def one_run(timeout: float, keep_log: Path | None = None) -> dict[str, Any]:
    d = tempfile.mkdtemp(prefix="ntc-")
    cfg = Path(d) / "cold.toml"
    cfg.write_text(config_text(d))
    settings = load(cfg)
    log_path = Path(d) / "agent.log"
    load1 = round(os.getloadavg()[0], 2)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    bus = Bus(settings.bus, "bench")
    bus.subscribe(topics.SESSION_STATE)
    t0 = time.monotonic()
    sup = _start(cfg, log_path, env)
    try:
        await bus.start(timeout=timeout)
        t_ready = await _ready(bus, timeout)
        await bus.close()
    finally:
        await asyncio.to_thread(_stop, sup)
    text = _finish(Path(d), log_path, keep_log)
    return {
        "ready_ms": (t_ready - t0) * 1000,
        "connect_failures": text.count("NavTalk session lost (cannot connect")
        + text.count("NavTalk session lost (connection refused"),
        "load1": load1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--name", default="coldstart", help="results file name")
    parser.add_argument("--log", type=Path, help="keep the last run's agent log here")
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        r = asyncio.run(one_run(args.timeout, args.log if i == args.runs - 1 else None))
        runs.append(r)
        print(
            f"run {i + 1}/{args.runs}: ready in {r['ready_ms']:7.1f} ms, "
            f"connect failures {r['connect_failures']}, load {r['load1']}",
            flush=True,
        )
    ready = [r["ready_ms"] for r in runs]
    stats = percentiles(ready)
    stats["p95_ms"] = round(float(np.percentile(ready, 95)), 1)
    row = {
        "figure": "process start -> session.state READY on the bus",
        **stats,
        "connect_failures": sum(r["connect_failures"] for r in runs),
        "load1": f"{min(r['load1'] for r in runs)}-{max(r['load1'] for r in runs)}",
    }
    print()
    cols = ["figure", "n", "p50_ms", "p95_ms", "max_ms", "connect_failures", "load1"]
    print(table("cold start (embedded emulator, null devices)", [row], cols))
    path = save(args.name, {"summary": row, "runs": runs})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
