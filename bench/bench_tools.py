"""Tools benchmark: ``tool.call`` published -> ``tool.result`` received, trivial handlers.

Three processes, as deployed: the bus proxy (``navtalk-agent proxy``), the tools
service (``navtalk-agent service tools``) and this one, which plays the session.
Each call is timed from ``publish()`` to the result's ``recv()`` (perf_counter).

- sequential: one call at a time, a sync handler (thread-pool hop) and an async one;
- burst: ``--burst`` calls in flight at once, throughput in calls/s.

Run with the tools service logging at INFO (the default: two log lines per call)
and at WARNING.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from agent import topics
from agent.bus import Bus
from agent.config import BusSettings, ControlPlane, MediaPlane, bus_toml
from agent.messages import ToolCall, ToolCatalog, ToolDescribe, ToolResult
from bench.common import percentiles, save, table

ROOT = Path(__file__).resolve().parents[1]

TRIVIAL_TOOLS = '''
from agent.tools import tool

@tool
def noop(n: int = 0) -> int:
    """Return n."""
    return n

@tool
async def noop_async(n: int = 0) -> int:
    """Return n, asynchronously."""
    return n
'''


def _bus_settings(d: str) -> BusSettings:
    return BusSettings(
        control=ControlPlane(publish=f"ipc://{d}/c-in", subscribe=f"ipc://{d}/c-out", hwm=100_000),
        media=MediaPlane(publish=f"ipc://{d}/m-in", subscribe=f"ipc://{d}/m-out", hwm=100),
    )


def _config(d: str, bus: BusSettings, level: str) -> Path:
    module = Path(d) / "trivial_tools.py"
    module.write_text(TRIVIAL_TOOLS)
    path = Path(d) / f"tools-{level}.toml"
    path.write_text(
        bus_toml(bus)
        + textwrap.dedent(
            f"""
            [log]
            level = "{level}"
            [tools]
            entry_points = false
            modules = ["{module}"]
            """
        )
    )
    return path


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def _wait_for(bus: Bus, kind: type, call_id: str | None = None) -> Any:
    while True:
        d = await bus.recv()
        if isinstance(d.msg, kind) and (
            call_id is None or getattr(d.msg, "call_id", "") == call_id
        ):
            return d.msg


async def _sequential(bus: Bus, name: str, n: int, warmup: int) -> list[float]:
    samples: list[float] = []
    for i in range(warmup + n):
        call_id = f"{name}-{i}"
        t0 = time.perf_counter()
        bus.publish(
            topics.TOOL_CALL,
            ToolCall(call_id=call_id, name=name, arguments_json=f'{{"n": {i}}}'),
        )
        result: ToolResult = await asyncio.wait_for(_wait_for(bus, ToolResult, call_id), 10)
        elapsed_ms = (time.perf_counter() - t0) * 1000
        if not result.ok:
            raise RuntimeError(f"{name} failed: {result.error}")
        if i >= warmup:
            samples.append(elapsed_ms)
    return samples


async def _burst(bus: Bus, name: str, size: int, rounds: int) -> tuple[list[float], float]:
    """``size`` calls published at once, ``rounds`` times; per-call latency and calls/s."""
    samples: list[float] = []
    total_s = 0.0
    for r in range(rounds):
        sent: dict[str, float] = {}
        t_start = time.perf_counter()
        for i in range(size):
            call_id = f"burst-{name}-{r}-{i}"
            sent[call_id] = time.perf_counter()
            bus.publish(topics.TOOL_CALL, ToolCall(call_id=call_id, name=name, arguments_json=""))
        async with asyncio.timeout(30):
            while sent:
                d = await bus.recv()
                if isinstance(d.msg, ToolResult) and d.msg.call_id in sent:
                    samples.append((time.perf_counter() - sent.pop(d.msg.call_id)) * 1000)
        total_s += time.perf_counter() - t_start
    return samples, size * rounds / total_s


async def _run(bus_settings: BusSettings, n: int, warmup: int, burst: int) -> dict[str, Any]:
    bus = Bus(bus_settings, "session")
    bus.subscribe(topics.TOOL_RESULT, topics.TOOL_CATALOG)
    async with bus:
        # the tools process may have published its start catalog before we connected: ask
        async with asyncio.timeout(30):
            while True:
                bus.publish(topics.TOOL_DESCRIBE, ToolDescribe())
                try:
                    await asyncio.wait_for(_wait_for(bus, ToolCatalog), 0.5)
                    break
                except TimeoutError:
                    continue
        sync = await _sequential(bus, "noop", n, warmup)
        async_ = await _sequential(bus, "noop_async", n, warmup)
        burst_sync, rate_sync = await _burst(bus, "noop", burst, 10)
        burst_async, rate_async = await _burst(bus, "noop_async", burst, 10)
    return {
        "sequential_sync": percentiles(sync),
        "sequential_async": percentiles(async_),
        f"burst{burst}_sync": {**percentiles(burst_sync), "calls_per_s": round(rate_sync)},
        f"burst{burst}_async": {**percentiles(burst_async), "calls_per_s": round(rate_async)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per handler")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--burst", type=int, default=50, help="calls in flight in a burst")
    args = parser.parse_args()

    d = tempfile.mkdtemp(prefix="ntb-")
    bus_settings = _bus_settings(d)
    results: dict[str, Any] = {"calls": args.calls, "warmup": args.warmup}
    proxy = _spawn("proxy", "--config", str(_config(d, bus_settings, "WARNING")))
    try:
        for level in ("INFO", "WARNING"):
            tools = _spawn("service", "tools", "--config", str(_config(d, bus_settings, level)))
            try:
                results[f"log_{level}"] = asyncio.run(
                    _run(bus_settings, args.calls, args.warmup, args.burst)
                )
            finally:
                tools.terminate()
                tools.wait(10)
    finally:
        proxy.terminate()
        proxy.wait(10)
        shutil.rmtree(d, ignore_errors=True)

    rows = []
    for level in ("INFO", "WARNING"):
        for case, stats in results[f"log_{level}"].items():
            rows.append({"tools log": level, "case": case, **stats})
    print(
        table(
            "tool.call -> tool.result over the real proxy (3 processes, ipc://)",
            rows,
            ["tools log", "case", "n", "p50_ms", "p90_ms", "p99_ms", "max_ms", "calls_per_s"],
        )
    )
    print("saved", save("tools", results))


if __name__ == "__main__":
    main()
