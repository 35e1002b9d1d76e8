"""config/systemd units and ``navtalk-agent install systemd``: systemd's own checker
(``systemd-analyze verify`` and ``security --offline``), the unit's ExecStart read back as
settings, and the install command writing into a prefix or printing with --dry-run."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.apps.install import executable, render_unit
from agent.resources import data_file

ROOT = Path(__file__).resolve().parent.parent
EXE = executable()


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: run scripts/install-system-deps.sh (systemd)")
    return tool


def _render(tmp_path: Path, relative: str) -> Path:
    out = tmp_path / "navtalk-agent.service"
    out.write_text(render_unit(data_file(relative).read_text(), EXE))
    return out


def _verify(unit: Path, *, user: bool, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    args = [_analyze()]
    if user:  # the user manager's paths need a runtime dir, as a login session has
        runtime = tmp_path / "xdg-runtime"
        runtime.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        args.append("--user")
    return subprocess.run(
        [*args, "verify", str(unit)], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    ("relative", "user"),
    [("systemd/navtalk-agent.service", False), ("systemd/user/navtalk-agent.service", True)],
    ids=["system", "user"],
)
def test_systemd_analyze_verify_is_clean(tmp_path: Path, relative: str, user: bool) -> None:
    proc = _verify(_render(tmp_path, relative), user=user, tmp_path=tmp_path)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (
        proc.stdout + proc.stderr
    )


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The positive control: the same check rejects a unit with a typo."""
    unit = _render(tmp_path, "systemd/navtalk-agent.service")
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    proc = _verify(unit, user=False, tmp_path=tmp_path)
    assert "notifyy" in proc.stdout + proc.stderr


def _exposure(unit: Path) -> float:
    proc = subprocess.run(
        [_analyze(), "security", "--offline=true", str(unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    return float(m.group(1))


def test_system_unit_security_exposure_is_at_most_4(tmp_path: Path) -> None:
    score = _exposure(_render(tmp_path, "systemd/navtalk-agent.service"))
    print(f"systemd-analyze security exposure: {score}")
    assert score <= 4.0


def test_exposure_of_the_unit_without_its_hardening_is_high(tmp_path: Path) -> None:
    """The positive control: the issue's old unit scored 9.6; so would ours without the
    [Service] lines after 'UMask='."""
    unit = _render(tmp_path, "systemd/navtalk-agent.service")
    text = unit.read_text()
    start, end = text.index("DynamicUser=yes"), text.index("[Install]")
    unit.write_text(text[:start] + text[end:])
    assert _exposure(unit) > 8.0


def _exec_start(unit_text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", unit_text)
    line = next(x for x in joined.splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_exec_start_reads_as_the_settings_it_means(tmp_path: Path, user: bool) -> None:
    """Expand %E/%S/%t as systemd would, run the unit's command line as `config show`:
    the bus lives in the runtime dir, the history in the state dir, logs go to journald."""
    rel = "systemd/user/navtalk-agent.service" if user else "systemd/navtalk-agent.service"
    prefix = tmp_path / "root"
    subprocess.run(
        [sys.executable, "-m", "agent", "install", "systemd", "--prefix", str(prefix)]
        + (["--user"] if user else []),
        check=True, capture_output=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    etc = prefix / (".config" if user else "etc")
    argv = _exec_start(render_unit(data_file(rel).read_text(), EXE))
    spec = {"%E": str(etc), "%S": "/var/lib", "%t": "/run/user/1000" if user else "/run"}
    argv = [re.sub(r"%[ESt]", lambda m: spec[m.group(0)], a) for a in argv]
    assert argv[:2] == [str(EXE), "run"]
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "config", "show", *argv[2:]],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    run = spec["%t"]
    assert s["bus"]["control"]["publish"] == f"ipc://{run}/navtalk-agent/control-in"
    assert s["bus"]["media"]["subscribe"] == f"ipc://{run}/navtalk-agent/media-out"
    assert s["session"]["history_db_path"] == "/var/lib/navtalk-agent/history.sqlite3"
    assert s["log"]["dir"] == ""
    assert s["display"]["enabled"] is (user or False)  # kiosk: a screen; robot: none
    assert s["source"] == str(etc / "navtalk-agent" / "agent.toml")


def test_install_into_a_prefix_writes_unit_profile_and_a_private_env_file(
    tmp_path: Path,
) -> None:
    def install(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "install", "systemd", "--prefix", str(tmp_path),
             *args],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    out = install()
    unit = tmp_path / "etc/systemd/system/navtalk-agent.service"
    profile = tmp_path / "etc/navtalk-agent/agent.toml"
    env = tmp_path / "etc/navtalk-agent/env"
    assert f"ExecStart={EXE} run --config %E/navtalk-agent/agent.toml" in unit.read_text()
    assert "@NAVTALK_AGENT@" not in unit.read_text()
    assert "robot.toml" in profile.read_text() and "enabled = false" in profile.read_text()
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert "systemctl daemon-reload && systemctl enable --now navtalk-agent" in out
    # a second install keeps what the owner edited, and renews the unit
    profile.write_text("# mine\n")
    env.write_text("NAVTALK_LICENSE=abc\n")
    unit.write_text("old")
    out = install("--profile", "kiosk")
    assert profile.read_text() == "# mine\n" and env.read_text() == "NAVTALK_LICENSE=abc\n"
    assert unit.read_text().startswith("# navtalk-agent as a system service")
    assert f"kept     {profile} (exists)" in out


def test_install_user_dry_run_prints_and_writes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "install", "systemd", "--user", "--dry-run"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"# ---- {home}/.config/systemd/user/navtalk-agent.service (mode 0644)" in out
    assert f"# ---- {home}/.config/navtalk-agent/env (mode 0600)" in out
    assert "PartOf=graphical-session.target" in out and f"ExecStart={EXE} run" in out
    assert "kiosk.toml" in out and 'backend = "window"' in out
    assert "systemctl --user daemon-reload" in out
    assert not home.exists()
