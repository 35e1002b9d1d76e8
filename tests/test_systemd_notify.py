"""agent/systemd.py: sd_notify on a real datagram socket, alone and around a real supervisor."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import bus_toml
from agent.systemd import Notifier, watchdog_interval_s
from tests.conftest import ipc_bus_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def notify_socket(short_tmp: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(short_tmp / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield path, sock
    sock.close()


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid_only() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "7"}, pid=7) == 2.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "7"}, pid=8) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "x"}) is None
    assert watchdog_interval_s({}) is None


def test_notifier_sends_datagrams_to_a_path_and_to_an_abstract_socket(
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    sock.settimeout(5)
    n = Notifier({"NOTIFY_SOCKET": path})
    n.up(False, 2)
    n.up(True, 2)
    n.up(True, 2)  # once only
    assert sock.recv(4096) == b"READY=1\nSTATUS=2 services up"
    n.close()
    name = f"navtalk-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind("\0" + name)
        abstract.settimeout(5)
        a = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert a.notify("WATCHDOG=1")
        assert abstract.recv(4096) == b"WATCHDOG=1"
        a.close()
    assert n.sent == 1


def test_without_notify_socket_nothing_is_sent_and_a_dead_socket_is_not_fatal(
    short_tmp: Path,
) -> None:
    off = Notifier({})
    assert not off.enabled and not off.notify("READY=1") and off.watchdog_s is None
    gone = Notifier({"NOTIFY_SOCKET": str(short_tmp / "nobody"), "WATCHDOG_USEC": "1000000"})
    assert gone.watchdog_s == 0.5
    assert not gone.notify("READY=1") and not gone.notify("WATCHDOG=1")
    assert gone.failures == 2
    gone.close()


def test_supervisor_says_ready_after_every_service_is_up_then_feeds_the_watchdog(
    notify_socket: tuple[str, socket.socket], short_tmp: Path
) -> None:
    path, sock = notify_socket
    cfg = short_tmp / "sup.toml"
    cfg.write_text(
        bus_toml(ipc_bus_settings(str(short_tmp)))
        + "\n[supervisor]\nheartbeat_interval_s = 0.2\nstop_timeout_s = 3\n"
        '\n[tools]\ndisabled_builtins = ["take_photo"]\n'
        '\n[speaker]\nbackend = "null"\n'
    )
    log = short_tmp / "sup.log"
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(cfg), "--only", "tools", "speaker"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    got: list[tuple[float, bytes]] = []
    try:
        sock.settimeout(60)
        while not any(m.startswith(b"READY=1") for _, m in got):
            got.append((time.monotonic(), sock.recv(4096)))
        ready_at = next(t for t, m in got if m.startswith(b"READY=1"))
        sock.settimeout(5)
        while sum(m == b"WATCHDOG=1" for t, m in got if t > ready_at) < 4:
            got.append((time.monotonic(), sock.recv(4096)))
        proc.send_signal(signal.SIGTERM)
        while not got[-1][1].startswith(b"STOPPING=1"):
            got.append((time.monotonic(), sock.recv(4096)))
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    messages = [m for _, m in got]
    assert b"READY=1\nSTATUS=2 services up" in messages
    assert messages[0] == b"WATCHDOG=1", "the watchdog is fed from the start, not after READY"
    after = [t for t, m in got if m == b"WATCHDOG=1" and t > ready_at]
    mean_gap = (after[-1] - after[0]) / (len(after) - 1)  # read times: queued ones bunch up
    assert 0.15 < mean_gap < 2.0, after  # every 0.3 s, give or take a busy machine
    assert ready_at - t0 > 0.2
    # READY=1 comes after both services' first heartbeat, in the supervisor's own order.
    ready_line = text.index("= systemd: ready (2 services up)")
    for name in ("tools", "speaker"):
        assert text.index(f"= {name}: starting -> running (first heartbeat)") < ready_line, text
    assert messages[-1].startswith(b"STOPPING=1")
