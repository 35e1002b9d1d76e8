"""Helpers to run the real supervisor as a subprocess and watch it on the bus."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from agent.bus import Bus, Delivery
from agent.config import BusSettings, bus_toml
from agent.messages import Heartbeat

__all__ = ["bus_toml"]  # re-exported for the tests that import it from here

ROOT = Path(__file__).resolve().parent.parent


def start_supervisor(
    config: Path, *args: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config), *args],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def environ_of(pid: int) -> dict[str, str]:
    """The environment a process was started with (/proc/PID/environ)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(
        item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
    )


async def next_beat(bus: Bus, service: str, timeout: float, *, not_pid: int = 0) -> Heartbeat:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no heartbeat from {service}")
        d = await asyncio.wait_for(bus.recv(), left)
        if isinstance(d.msg, Heartbeat) and d.msg.service == service and d.msg.pid != not_pid:
            return d.msg


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def descendants_of(pid: int) -> list[int]:
    """Children, grandchildren, ... (the services are the zygote's children)."""
    out = []
    for child in children_of(pid):
        out += [child, *descendants_of(child)]
    return out


def cmdline_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=timeout)


def tools_config(path: Path, bus: BusSettings, module: Path) -> Path:
    """A profile for a tools process that loads the tools of ``module`` (and no camera)."""
    path.write_text(
        bus_toml(bus)
        + textwrap.dedent(
            f"""
            [tools]
            entry_points = false
            disabled_builtins = ["take_photo"]
            modules = ["{module}"]
            """
        )
    )
    return path


def spawn_tools(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``navtalk-agent service tools`` as its own process, as the supervisor starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "service", "tools", "--config", str(config)],
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


class Tap:
    """Everything a test's bus client receives, in arrival order, and waits on it."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seen: list[Delivery] = []
        self._grew = asyncio.Event()

    async def pump(self) -> None:
        async for d in self.bus:
            self.seen.append(d)
            self._grew.set()

    async def wait(
        self, what: str, pred: Callable[[Delivery], bool], start: int = 0, timeout: float = 20.0
    ) -> int:
        """Index of the first delivery at or after ``start`` that ``pred`` accepts."""
        i = start
        try:
            async with asyncio.timeout(timeout):
                while True:
                    while i < len(self.seen):
                        if pred(self.seen[i]):
                            return i
                        i += 1
                    self._grew.clear()
                    await self._grew.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None
