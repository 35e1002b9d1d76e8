"""The real supervisor, as a process, with real services as its children."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from agent.bus import Bus
from agent.supervisor import RestartPolicy
from tests.conftest import free_port
from tests.supervisor_helpers import (
    alive,
    bus_toml,
    children_of,
    next_beat,
    start_supervisor,
    stop,
)

pytestmark = pytest.mark.timeout(90)


def test_restart_policy_backoff_and_crash_loop() -> None:
    p = RestartPolicy(initial_s=0.5, max_s=4.0, loop_restarts=4, loop_window_s=60)
    delays = [p.on_exit(now=t, ran_for_s=1.0) for t in (0.0, 1.0, 2.0, 3.0)]
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert p.on_exit(now=4.0, ran_for_s=1.0) is None  # 5th crash within the window: give up


def test_restart_policy_forgets_old_crashes_and_resets_after_stable_run() -> None:
    p = RestartPolicy(initial_s=1.0, max_s=8.0, loop_restarts=2, loop_window_s=10)
    assert p.on_exit(now=0.0, ran_for_s=1.0) == 1.0
    assert p.on_exit(now=1.0, ran_for_s=1.0) == 2.0
    assert p.on_exit(now=100.0, ran_for_s=1.0) == 4.0  # window slid: allowed again
    assert p.on_exit(now=200.0, ran_for_s=60.0) == 1.0  # ran a long time: backoff reset


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def sup_config(short_tmp: Path, metrics_port: int) -> Path:
    from tests.conftest import ipc_bus_settings

    cfg = short_tmp / "sup.toml"
    cfg.write_text(
        bus_toml(ipc_bus_settings(str(short_tmp)))
        + f"\n[supervisor]\nmetrics_port = {metrics_port}\n"
        "heartbeat_interval_s = 0.2\nheartbeat_timeout_s = 1.5\n"
        "startup_grace_s = 20\nrestart_initial_s = 0.2\nstop_timeout_s = 3\n"
        "cpu_affinity = { tools = [0] }\n"
        '\n[tools]\ndisabled_builtins = ["take_photo"]\n'
    )
    return cfg


async def test_sigkilled_child_is_restarted_and_sigterm_leaves_no_orphan(
    sup_config: Path, short_tmp: Path, metrics_port: int
) -> None:
    from agent.config import load

    settings = load(sup_config)
    proc = start_supervisor(sup_config, "--only", "tools", log=short_tmp / "sup.log")
    try:
        async with Bus(settings.bus, "external") as bus:
            bus.subscribe("health.")
            first = await next_beat(bus, "tools", timeout=30)
            assert first.pid in children_of(proc.pid)
            assert os.sched_getaffinity(first.pid) == {0}, "pinned as configured"
            os.kill(first.pid, signal.SIGKILL)
            second = await next_beat(bus, "tools", timeout=20, not_pid=first.pid)
            assert second.pid != first.pid and not alive(first.pid)
            assert os.sched_getaffinity(second.pid) == {0}, "a restarted child is pinned too"
            # a stopped (silent) process is killed by the watchdog and replaced
            os.kill(second.pid, signal.SIGSTOP)
            third = await next_beat(bus, "tools", timeout=20, not_pid=second.pid)
            assert third.pid not in (first.pid, second.pid)
            await next_beat(bus, "tools", timeout=5)  # the supervisor has seen it too by now
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
            assert 'navtalk_agent_up{service="tools"} 1.0' in text
            assert 'navtalk_agent_restarts{service="tools"} 2.0' in text
        t0 = time.monotonic()
        assert stop(proc) == 0
        assert time.monotonic() - t0 < 6, "clean stop within a few seconds"
        assert not alive(third.pid) and not alive(second.pid), "no orphan after SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (short_tmp / "sup.log").read_text()
    assert "tools died (signal 9)" in log
    assert "silent for" in log


async def test_sigkilled_supervisor_takes_children_with_it(
    sup_config: Path, short_tmp: Path
) -> None:
    from agent.config import load

    settings = load(sup_config)
    proc = start_supervisor(sup_config, "--only", "tools", log=short_tmp / "sup.log")
    try:
        async with Bus(settings.bus, "external") as bus:
            bus.subscribe("health.")
            beat = await next_beat(bus, "tools", timeout=30)
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while alive(beat.pid) and time.monotonic() < deadline:  # noqa: ASYNC110 (no event for exit)
            await asyncio.sleep(0.05)
        assert not alive(beat.pid), "child outlived a SIGKILLed supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_crash_loop_gives_up_and_says_so(short_tmp: Path) -> None:
    from agent.config import load
    from tests.conftest import ipc_bus_settings

    cfg = short_tmp / "loop.toml"
    cfg.write_text(
        bus_toml(ipc_bus_settings(str(short_tmp)))
        + "\n[supervisor]\nheartbeat_interval_s = 0.2\nrestart_initial_s = 0.05\n"
        "restart_max_s = 0.1\ncrash_loop_restarts = 3\ncrash_loop_window_s = 60\n"
        # a tool module that does not exist: the tools service cannot start
        '\n[tools]\nmodules = ["/nonexistent/tools_that_are_missing.py"]\n'
    )
    log = short_tmp / "loop.log"
    proc = start_supervisor(cfg, "--only", "tools", log=log)
    try:
        deadline = time.monotonic() + 60
        while "keeps crashing" not in log.read_text() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        text = log.read_text()
        assert "tools keeps crashing (3 restarts within 60 s)" in text
        assert "tools_that_are_missing" in text, "the cause is in the log"
        assert proc.poll() is None, "the supervisor itself stays up"
        async with Bus(load(cfg).bus, "external") as bus:  # and says so in its heartbeat
            bus.subscribe("health.")
            beat = await next_beat(bus, "supervisor", timeout=10)
        assert (beat.status, beat.detail) == ("degraded", "gave up on: tools")
        assert stop(proc) == 1, "a process that gave up is reported in the exit code"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_taken_metrics_port_is_one_clear_error_and_nothing_is_left_behind(
    sup_config: Path, short_tmp: Path, metrics_port: int
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", metrics_port))
        taken.listen()
        proc = start_supervisor(sup_config, "--only", "tools", log=short_tmp / "sup.log")
        try:
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    out = (short_tmp / "sup.log").read_text()
    assert code == 1, out
    assert f"cannot serve metrics on 127.0.0.1:{metrics_port}" in out
    assert "Traceback" not in out
    assert not [p.name for p in short_tmp.iterdir() if p.is_socket()], "proxy files left"
