"""examples/gpio-button: its --simulate mode (presses from stdin) against a real bus."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from agent import topics
from agent.config import BusSettings, bus_toml
from agent.messages import SessionControl
from tests.conftest import MakeBus

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "gpio-button" / "gpio_button.py"


async def test_simulated_presses_reach_the_bus_as_control_session(
    bus_settings: BusSettings, make_bus: MakeBus, short_tmp: Path
) -> None:
    cfg = short_tmp / "c.toml"
    cfg.write_text(bus_toml(bus_settings))
    session = await make_bus("session", topics.CONTROL_SESSION)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "-c", str(cfg), "--simulate", "--min-interval-s", "60",
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    try:
        # the script is on the bus once it says so; presses before that would be lost
        async with asyncio.timeout(30):
            while b"on the bus" not in await proc.stderr.readline():
                pass
        proc.stdin.write(b"\n")  # a press: start
        await proc.stdin.drain()
        async with asyncio.timeout(10):
            d = await session.recv()
        assert d.topic == topics.CONTROL_SESSION and d.sender == "button"
        assert d.msg == SessionControl(action="start", reason="button")
        # a second start within --min-interval-s is the same press; garbage is no press;
        # so the next message is the end
        proc.stdin.write(b"start\nhello\nend\n")
        await proc.stdin.drain()
        async with asyncio.timeout(10):
            d = await session.recv()
        assert d.msg == SessionControl(action="end", reason="button")
        proc.stdin.close()  # end of input: the script stops
        async with asyncio.timeout(20):
            rest = await proc.stderr.read()
            assert await proc.wait() == 0, rest.decode()
        assert b"'hello' ignored" in rest and b"start press ignored" in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_bad_config_exits_2_naming_the_key(short_tmp: Path) -> None:
    bad = short_tmp / "bad.toml"
    bad.write_text("[bus]\nno_such_key = 1\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "-c", str(bad), "--simulate",
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2 and b"no_such_key" in err  # a config error: exit 2, the key


@pytest.mark.skipif(importlib.util.find_spec("gpiod") is not None, reason="gpiod is installed")
async def test_without_gpiod_it_says_what_to_install(short_tmp: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--chip", str(short_tmp / "no-chip"),
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 1 and b"pip install gpiod" in err and b"--simulate" in err
