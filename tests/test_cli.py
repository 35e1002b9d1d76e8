"""The navtalk-agent command line, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from agent import __version__
from agent.config import bus_toml
from agent.navtalk.history import ConversationStore, Role
from tests.conftest import ipc_bus_settings

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_version_and_help() -> None:
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"navtalk-agent {__version__}"
    r = _cli("--help")
    for command in ("run", "service", "proxy", "tap", "emulator", "devices", "history", "config"):
        assert command in r.stdout
    bad = _cli("service", "camera")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_history_clear(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite3"
    with ConversationStore(db) as store:
        store.add(Role.USER, "I booked a room", wall_s=time.time())
        store.add(Role.ASSISTANT, "Welcome back", wall_s=time.time())
    r = _cli("history", "clear", "--set", f'session.history_db_path="{db}"')
    assert r.returncode == 0, r.stderr
    assert "2 message(s) removed" in r.stdout
    with ConversationStore(db) as store:
        assert store.count() == 0


def test_config_show_is_json_with_overrides() -> None:
    r = _cli("config", "show", "--config", "config/robot.toml", "--set", "mic.vad_aggressiveness=3")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["mic"]["vad_aggressiveness"] == 3
    assert shown["display"]["enabled"] is False  # from robot.toml
    assert shown["source"] == "config/robot.toml"


def test_devices_lists_the_virtual_alsa_devices() -> None:
    # tests/audio_fixtures.py (loaded by conftest) points ALSA at the virtual devices
    r = _cli("devices")
    assert r.returncode == 0, r.stderr
    assert "vplay" in r.stdout and "vrec" in r.stdout


def test_service_without_proxy_fails_clearly(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(bus_toml(ipc_bus_settings(str(tmp_path))))  # no proxy runs there
    r = _cli("service", "tools", "--config", str(cfg))
    assert r.returncode == 1
    assert "bus not reachable" in r.stderr
    assert "Traceback" not in r.stderr


async def test_proxy_command_carries_messages_and_stops_on_sigterm(short_tmp: Path) -> None:
    import asyncio
    import signal

    from agent import topics
    from agent.bus import Bus
    from agent.messages import ToolCall

    settings = ipc_bus_settings(str(short_tmp))
    cfg = short_tmp / "p.toml"
    cfg.write_text(bus_toml(settings))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "proxy", "--config", str(cfg), cwd=ROOT
    )
    try:
        bus = Bus(settings, "tools")
        bus.subscribe(topics.TOOL_CALL)
        async with bus:  # start() returns once the proxy answers
            other = Bus(settings, "session")
            await other.start(timeout=30)
            other.publish(topics.TOOL_CALL, ToolCall(call_id="p", name="t", arguments_json="{}"))
            got = await asyncio.wait_for(bus.recv(), 5)
            await other.close()
        assert isinstance(got.msg, ToolCall) and got.msg.call_id == "p"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
