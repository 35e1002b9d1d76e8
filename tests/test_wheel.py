"""The wheel carries what a device needs: build it, install it into a fresh venv, and run
the installed ``navtalk-agent`` from a directory outside any checkout.

The fresh venv gets only the wheel (``--no-deps``); the dependencies come from the venv
running the tests through a ``.pth`` line (a plain directory on ``sys.path``: its own
``.pth`` files, such as an editable install of this checkout, are not processed), and
the test checks that ``agent`` is imported from the fresh venv.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "out", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "bench"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """(the fresh venv's bin/, an environment without this checkout on it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy: the build writes build/ and *.egg-info next to the sources
    shutil.copytree(ROOT, src, symlinks=True, ignore=SKIP)
    dist = tmp / "dist"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("navtalk_agent-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (
        "agent/_config/emulator.toml",
        "agent/_config/kiosk.toml",
        "agent/_config/robot.toml",
        "agent/_config/scripts/demo.toml",
        "agent/_config/systemd/navtalk-agent.service",
        "agent/_config/systemd/user/navtalk-agent.service",
        "agent/emulator/default_script.toml",
    ):
        assert shipped in names, f"{shipped} is not in the wheel"
    target = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(target / "bin/python"), "install",
         "--no-deps", "-q", str(wheel)],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run(
        [str(target / "bin/python"), "-c", code],
        capture_output=True, text=True, check=True, env=env,
    ).stdout.strip()  # fmt: skip
    deps = sysconfig.get_paths()["purelib"]  # this venv's: numpy, zmq, aiortc, ...
    Path(purelib, "zz-navtalk-test-deps.pth").write_text(deps + "\n")
    yield target / "bin", env


def test_installed_package_is_the_wheel_not_the_checkout(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    bindir, env = installed
    where = subprocess.run(
        [str(bindir / "python"), "-c", "import agent, services; print(agent.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(bindir.parent)), where.stdout


def test_config_show_profile_emulator_outside_a_checkout(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    bindir, env = installed
    proc = subprocess.run(
        [str(bindir / "navtalk-agent"), "config", "show", "--profile", "emulator"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["emulator"]["embedded"] is True
    script = Path(s["emulator"]["script_path"])
    assert script.is_file() and script.is_relative_to(bindir.parent), script
    assert s["source"].endswith("agent/_config/emulator.toml")


def test_installed_emulator_starts_and_stops(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    bindir, env = installed
    proc = subprocess.Popen(
        [str(bindir / "navtalk-agent"), "emulator", "--profile", "emulator", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("NavTalk emulator on ws://127.0.0.1:"), line + proc.stderr.read()
        port = int(line.split(":")[2].split("/")[0])
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_installed_agent_runs_the_emulator_profile_to_a_connected_session(
    installed: tuple[Path, dict[str, str]], tmp_path: Path, short_tmp: Path
) -> None:
    """`navtalk-agent run --profile emulator` from the wheel: every service comes up (the
    systemd READY=1 of agent.systemd on a real socket says so), the session connects to
    the embedded emulator (the installed `navtalk-agent tap` sees it), then all stop cleanly."""
    bindir, env = installed
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(short_tmp / "notify"))
    notify.settimeout(90)
    sets = [
        f"emulator.port={free_port()}",
        "mic.backend=null",  # the demo writes the guest's WAV; none here
    ]
    for plane in ("control", "media"):
        for end in ("publish", "subscribe"):
            sets.append(f"bus.{plane}.{end}=ipc://{short_tmp}/{plane[0]}-{end}")
    log = tmp_path / "run.log"
    # The tap connects first (ZeroMQ connects to an ipc:// path that is not there yet), so
    # the session's one navtalk.connection event cannot pass before it listens.
    tap = subprocess.Popen(
        [str(bindir / "navtalk-agent"), "tap", "navtalk.connection", "--json", "--count", "1",
         "--duration", "90", "--endpoint", f"ipc://{short_tmp}/c-subscribe"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    proc = subprocess.Popen(
        [str(bindir / "navtalk-agent"), "run", "--profile", "emulator",
         *[x for s in sets for x in ("--set", s)]],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp_path,
        env={**env, "NOTIFY_SOCKET": str(short_tmp / "notify"), "NAVTALK_LICENSE": "test-lic"},
    )  # fmt: skip
    try:
        t0 = time.monotonic()
        got = [notify.recv(4096)]
        while not got[-1].startswith(b"READY=1"):
            got.append(notify.recv(4096))  # a timeout here: see run.log below
        print(f"READY=1 after {time.monotonic() - t0:.1f} s: {got[-1]!r}")
        assert got[-1] == b"READY=1\nSTATUS=5 services up"
        seen, _ = tap.communicate(timeout=90)
        assert '"success"' in seen, seen  # conversation.connected.success, via the bus
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        assert code == 0, log.read_text()
    finally:
        notify.close()
        for p in (tap, proc):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert (tmp_path / "out" / "logs" / "session.log").is_file()
