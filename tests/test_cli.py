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
