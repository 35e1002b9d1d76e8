"""Console commands against the real session service talking to the real emulator:
``say`` gets the avatar's reply, ``session end`` closes the session at the emulator,
``session start`` opens a new one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from agent.config import BusSettings, default_settings
from agent.emulator.brain import Script
from agent.emulator.server import Emulator
from agent.navtalk.settings import EmulatorSettings, NavTalkSettings, SessionSettings
from services import session as session_service
from tests.conftest import running_service
from tests.supervisor_helpers import ROOT, bus_toml

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).parent / "fixtures" / "navtalk" / "e2e_script.toml"
LICENSE = "Lic-console-e2e-1234567"


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    emu = Emulator(EmulatorSettings(port=0, pace=4.0), script=Script.load(SCRIPT))
    await emu.start()
    yield emu
    await emu.close()


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_say_and_session_against_the_emulator(
    emulator: Emulator, bus_settings: BusSettings, short_tmp: Path
) -> None:
    cfg = short_tmp / "c.toml"
    cfg.write_text(bus_toml(bus_settings))
    settings = msgspec.structs.replace(
        default_settings(),
        bus=bus_settings,
        navtalk=NavTalkSettings(url=emulator.base_url, name="navtalk.Leo"),
        session=SessionSettings(
            history_db_path=str(short_tmp / "h.sqlite3"),
            state_interval_s=0.2,
            catalog_wait_ms=0,
            declare_tools=False,
            preroll_ms=0,
        ),  # fmt: skip
    )
    async with running_service("session", session_service.run, settings, license=LICENSE):
        code, out, err = await cli("session", "start", "--wait", "30", "-c", str(cfg))
        assert code == 0 and out.splitlines()[-1].startswith("session: ready"), out + err
        code, out, err = await cli("say", "hello", "--wait", "30", "-c", str(cfg))
        assert code == 0, out + err
        assert out.splitlines()[-1] == "avatar: Hi there."
        assert "Hi there." in emulator.sessions[0].stats.replies  # the server made it
        code, out, err = await cli("session", "end", "--wait", "30", "-c", str(cfg))
        assert code == 0 and out.splitlines()[-1].startswith("session: idle"), out + err
        async with asyncio.timeout(10):
            await emulator.sessions[0].closed.wait()
        code, out, err = await cli("session", "start", "--wait", "30", "-c", str(cfg))
        assert code == 0 and out.splitlines()[-1].startswith("session: ready"), out + err
        assert len(emulator.sessions) == 2 and not emulator.sessions[1].closed.is_set()
