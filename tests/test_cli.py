"""The navtalk-agent command line, as a user runs it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    bad = _cli("service", "webcam")
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


def test_history_export_is_json_lines(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite3"
    with ConversationStore(db) as store:
        store.add(Role.USER, "Où est la piscine ?", wall_s=1.0, session_id="s1")
        store.add(Role.ASSISTANT, "Au sous-sol.", wall_s=2.0, session_id="s1")
    r = _cli("history", "export", "--set", f'session.history_db_path="{db}"')
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows == [
        {"wall_s": 1.0, "role": "user", "text": "Où est la piscine ?", "session_id": "s1"},
        {"wall_s": 2.0, "role": "assistant", "text": "Au sous-sol.", "session_id": "s1"},
    ]
    r = _cli("history", "export", "--set", f'session.history_db_path="{tmp_path / "none"}"')
    assert r.returncode == 0 and r.stdout == "" and not (tmp_path / "none").exists()


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


# --- bad input: one line, exit 2, no traceback -----------------------------------------------


def _cli_env(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env=env,
    )  # fmt: skip


def _one_clear_line(r: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("navtalk-agent: error: "), r.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def test_bad_command_lines_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('[display]\nwindow_title = "caf\xe9"\n'.encode("latin-1"))
    _one_clear_line(_cli("config", "check", str(bad)), "not UTF-8 text", "offset 29")
    _one_clear_line(_cli("run", "--config", str(bad)), "not UTF-8 text")
    _one_clear_line(_cli("tap", "--endpoint", "http://x"), "tap --endpoint 'http://x'")
    _one_clear_line(_cli("emulator", "--port", "99999"), "emulator --port 99999", "65535")
    missing = tmp_path / "no-script.toml"
    _one_clear_line(_cli("emulator", "--script", str(missing)), f"{missing}: no such file")


def test_config_show_into_a_closed_pipe_is_quiet() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that already left: every write gets EPIPE
    try:
        r = subprocess.run(
            [sys.executable, "-m", "agent", "config", "show"], cwd=ROOT, stdout=write_end,
            stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert r.stderr == "", r.stderr
    assert r.returncode == 1


START_UP_ERRORS = {
    "license": ("", {}, "NAVTALK_LICENSE is not set: the session needs the NavTalk license"),
    "mic_wav": ('[mic]\nbackend = "file"\nwav_path = "/nonexistent/guest.wav"\n', {},
                "mic.wav_path = '/nonexistent/guest.wav': no such file"),
    "tools_module": ('[tools]\nmodules = ["no_such_package_xyz.tools"]\n', {},
                     "tools.modules: 'no_such_package_xyz.tools': cannot import"),
    "tools_file": ('[tools]\nmodules = ["/nonexistent/tools.py"]\n', {},
                   "tools.modules: '/nonexistent/tools.py': no such file"),
    "mic_device": ('[mic]\ndevice = "NoSuchMicrophone"\n', {},
                   "mic.device = 'NoSuchMicrophone': no input device matching"),
    "speaker_device": ('[speaker]\ndevice = "99"\n', {}, "speaker.device = '99': no output device"),
    "url": ('[navtalk]\nurl = "http://example.invalid/x"\n', {}, "navtalk.url = 'http://"),
    "window": ('[display]\nbackend = "window"\n', {"DISPLAY": ""}, "DISPLAY is not set"),
    "emulator_script": ('[emulator]\nembedded = true\nscript_path = "/nonexistent.toml"\n', {},
                        "emulator.script_path = '/nonexistent.toml': no such file"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(START_UP_ERRORS))
def test_start_up_errors_are_found_by_config_check_and_run(case: str, short_tmp: Path) -> None:
    text, env_changes, expected = START_UP_ERRORS[case]
    cfg = short_tmp / "c.toml"
    cfg.write_text(bus_toml(ipc_bus_settings(str(short_tmp))) + "\n" + text)
    env = {k: v for k, v in os.environ.items() if k != "NAVTALK_LICENSE"}
    if case != "license":
        env["NAVTALK_LICENSE"] = "a-license"
    env.update(env_changes)
    _one_clear_line(_cli_env("config", "check", str(cfg), env=env), expected)
    _one_clear_line(_cli_env("run", "--config", str(cfg), env=env), expected)
    assert not [p.name for p in short_tmp.iterdir() if p.is_socket()], "started anyway"


def test_emulator_port_taken_is_found_before_start(short_tmp: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = short_tmp / "c.toml"
        cfg.write_text(
            bus_toml(ipc_bus_settings(str(short_tmp)))
            + f"\n[emulator]\nembedded = true\nport = {port}\n"
        )
        expected = f"emulator.port = {port}: cannot listen on 127.0.0.1:{port} (in use)"
        _one_clear_line(_cli("config", "check", str(cfg)), expected)
        _one_clear_line(_cli("emulator", "--port", str(port)), expected)


def test_a_session_alone_cannot_use_emulator_port_0(short_tmp: Path) -> None:
    cfg = short_tmp / "c.toml"
    cfg.write_text(
        bus_toml(ipc_bus_settings(str(short_tmp))) + "\n[emulator]\nembedded = true\nport = 0\n"
    )
    _one_clear_line(_cli("service", "session", "--config", str(cfg)), "emulator.port = 0")
    ok = _cli("config", "check", str(cfg), "--set", "session.enabled=false",
              "--set", 'display.backend="null"')  # fmt: skip
    assert ok.returncode == 0, ok.stderr  # under `run` the supervisor picks the port
