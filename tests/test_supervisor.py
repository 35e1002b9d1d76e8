"""The real supervisor, as a process, with real services as its children."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agent.apps.supervisor import RestartPolicy
from agent.bus import Bus
from agent.messages import Heartbeat
from tests.conftest import free_port
from tests.supervisor_helpers import (
    alive,
    bus_toml,
    children_of,
    cmdline_of,
    descendants_of,
    environ_of,
    next_beat,
    start_supervisor,
    stop,
)

pytestmark = pytest.mark.timeout(90)


def test_restart_policy_backoff_and_crash_loop() -> None:
    p = RestartPolicy(initial_s=0.5, max_s=4.0, loop_restarts=4, loop_window_s=60, cooldown_s=30)
    delays = [p.on_exit(now=t, ran_for_s=1.0) for t in (0.0, 1.0, 2.0, 3.0)]
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert p.on_exit(now=4.0, ran_for_s=1.0) is None  # 5th quick death within the window
    assert p.on_exit(now=5.0, ran_for_s=1.0) is None, "still a loop until the cool-down"
    p.after_cooldown()  # the caller waited cooldown_s: a fresh count, from the first delay
    assert p.on_exit(now=40.0, ran_for_s=1.0) == 0.5


def test_restart_policy_restarts_at_once_after_a_stable_run() -> None:
    p = RestartPolicy(initial_s=1.0, max_s=8.0, loop_restarts=2, loop_window_s=10,
                      stable_after_s=5.0)  # fmt: skip
    assert p.on_exit(now=0.0, ran_for_s=1.0) == 1.0
    assert p.on_exit(now=1.0, ran_for_s=1.0) == 2.0
    assert p.on_exit(now=100.0, ran_for_s=1.0) == 4.0  # window slid: allowed again
    assert p.on_exit(now=200.0, ran_for_s=6.0) == 0.0  # ran stable: at once, backoff reset
    assert p.on_exit(now=201.0, ran_for_s=1.0) == 1.0
    # deaths after a stable run are not a crash loop, however many
    assert [p.on_exit(now=202.0 + i, ran_for_s=5.0) for i in range(10)] == [0.0] * 10


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
            assert first.pid in descendants_of(proc.pid)
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
            assert 'navtalk_agent_restarts_total{service="tools"} 2.0' in text
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


def _spawned_pids(log_text: str) -> list[int]:
    return [
        int(line.rsplit("pid ", 1)[1])
        for line in log_text.splitlines()
        if ": spawned, pid " in line
    ]


async def test_crash_loop_pauses_retries_after_cooldown_then_exits_for_systemd(
    short_tmp: Path,
) -> None:
    from agent.config import load
    from tests.conftest import ipc_bus_settings

    crasher = short_tmp / "crashing_tools.py"
    crasher.write_text("import os\nos._exit(3)  # dies at import: not a configuration error\n")
    cfg = short_tmp / "loop.toml"
    cfg.write_text(
        bus_toml(ipc_bus_settings(str(short_tmp)))
        + "\n[supervisor]\nheartbeat_interval_s = 0.2\nrestart_initial_s = 0.05\n"
        "restart_max_s = 0.1\ncrash_loop_restarts = 3\ncrash_loop_window_s = 60\n"
        "crash_loop_cooldown_s = 1\ndown_limit_s = 15\n"
        f'\n[tools]\nmodules = ["{crasher}"]\n'
    )
    log = short_tmp / "loop.log"
    proc = start_supervisor(cfg, "--only", "tools", log=log)
    try:
        async with Bus(load(cfg).bus, "external") as bus:  # while it pauses: it says so
            bus.subscribe("health.")
            while True:
                beat = await next_beat(bus, "supervisor", timeout=30)
                if beat.status == "degraded":
                    break
        assert beat.detail == "gave up on: tools"
        code = await asyncio.to_thread(proc.wait, 60)  # ends by itself: down too long
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "tools keeps crashing (3 quick restarts within 60 s): pausing its restarts" in text
    assert "tools: cool-down over, trying again" in text, "the breaker tries again"
    assert "out of service for" in text and "so that its service manager" in text
    pids = _spawned_pids(text)
    assert len(pids) >= 5, "restarted after the cool-down"
    assert not [p for p in pids if alive(p)], "no orphan"


async def test_a_configuration_error_in_a_service_ends_the_run_with_exit_2(
    short_tmp: Path,
) -> None:
    from tests.conftest import ipc_bus_settings

    cfg = short_tmp / "cfg.toml"
    cfg.write_text(
        bus_toml(ipc_bus_settings(str(short_tmp)))
        + "\n[supervisor]\nheartbeat_interval_s = 0.2\nrestart_initial_s = 0.05\n"
        # the module exists (so the check before start passes), the attribute does not:
        # the tools service finds out at start, with a ConfigError
        '\n[tools]\nmodules = ["json:no_such_tools"]\n'
    )
    log = short_tmp / "cfg.log"
    proc = start_supervisor(cfg, "--only", "tools", log=log)
    try:
        code = await asyncio.to_thread(proc.wait, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 2, text[-3000:]
    assert len(_spawned_pids(text)) == 1, "not restarted: restarting cannot help"
    assert "tools: configuration error: tools.modules: 'json' has no attribute" in text
    assert "stopped on a configuration error (exit 2" in text
    assert "Traceback" not in text
    assert not [p for p in _spawned_pids(text) if alive(p)]


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
    assert code == 2, out  # checked before start: a configuration error
    assert f"cannot serve metrics on 127.0.0.1:{metrics_port}" in out
    assert out.count("\n") == 1, "one line"
    assert "Traceback" not in out
    assert not [p.name for p in short_tmp.iterdir() if p.is_socket()], "proxy files left"


ENV_TOOL = '''
import os
from agent.tools import tool

@tool
def license_seen() -> str:
    """What this process sees of the license."""
    return os.environ.get("NAVTALK_LICENSE", "")
'''


@pytest.mark.parametrize("zygote", [True, False], ids=["zygote", "exec"])
async def test_only_the_session_gets_the_license_and_embedded_port_0_is_resolved(
    short_tmp: Path, zygote: bool
) -> None:
    from agent import topics
    from agent.config import load
    from agent.messages import SessionPhase, SessionState, ToolCall, ToolResult
    from tests.conftest import ipc_bus_settings

    # "reject": the emulator refuses this license (agent.emulator.brain), so the session's
    # failure proves the license reached it (without one it would use the demo license)
    secret = "LEASTPRIV-reject-5d1e"
    module = short_tmp / "env_tool.py"
    module.write_text(ENV_TOOL)
    cfg = short_tmp / "env.toml"
    cfg.write_text(
        bus_toml(ipc_bus_settings(str(short_tmp)))
        + f"\n[supervisor]\nheartbeat_interval_s = 0.2\nzygote = {str(zygote).lower()}\n"
        # port 0: the supervisor picks the port; the session must connect to it, not to 80
        + "\n[emulator]\nembedded = true\nport = 0\nwebrtc = false\n"
        + "\n[session]\naudio_only = true\nhistory_enabled = false\n"
        + f'\n[tools]\nentry_points = false\nmodules = ["{module}"]\n'
        + 'disabled_builtins = ["take_photo"]\n'
    )
    env = {**os.environ, "NAVTALK_LICENSE": secret}
    proc = start_supervisor(cfg, "--only", "tools", "session", log=short_tmp / "sup.log", env=env)
    try:
        async with Bus(load(cfg).bus, "external") as bus:
            bus.subscribe("health.", topics.SESSION_STATE, topics.TOOL_RESULT)
            pids: dict[str, int] = {}
            state = None
            async with asyncio.timeout(60):
                while len(pids) < 2 or state is None or state.phase is not SessionPhase.FAILED:
                    d = await bus.recv()
                    if isinstance(d.msg, Heartbeat) and d.msg.service in ("tools", "session"):
                        pids[d.msg.service] = d.msg.pid
                    elif isinstance(d.msg, SessionState):
                        state = d.msg
                # the tool reads its own process's environment; sent again until answered
                answer = None
                while answer is None:
                    call = ToolCall(call_id="env", name="license_seen", arguments_json="")
                    bus.publish(topics.TOOL_CALL, call)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            while answer is None:
                                d = await bus.recv()
                                if isinstance(d.msg, ToolResult) and d.msg.call_id == "env":
                                    answer = d.msg
        assert "Invalid license" in state.detail, "the session used the license it was given"
        zygotes = [p for p in children_of(proc.pid) if "agent.apps.zygote" in cmdline_of(p)]
        others = [p for p in descendants_of(proc.pid) if p not in pids.values()]
        emulator = [p for p in others if p not in zygotes]
        assert len(emulator) == 1 and len(zygotes) == (1 if zygote else 0), others
        assert answer.ok and answer.output_json == '""', "a plugin cannot read the license"
        for pid in (pids["tools"], *emulator, *zygotes):
            assert "NAVTALK_LICENSE" not in environ_of(pid)
            assert secret.encode() not in Path(f"/proc/{pid}/environ").read_bytes()  # noqa: ASYNC240
        if not zygote:
            assert environ_of(pids["session"]).get("NAVTALK_LICENSE") == secret
        for pid in (*pids.values(), *emulator):  # each armed its own lifeline (agent.lifeline)
            assert environ_of(pid)["NAVTALK_PARENT_PID"] == str(proc.pid)
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (short_tmp / "sup.log").read_text()
    assert "embedded emulator: port 0 -> " in log
    assert secret not in log


def test_a_child_whose_parent_is_gone_exits_at_once() -> None:
    # the parent named in NAVTALK_PARENT_PID is not this child's parent (it died before the
    # child could arm PR_SET_PDEATHSIG): the child must not run on as an orphan
    r = subprocess.run(
        [sys.executable, "-m", "agent", "--version"],
        env={**os.environ, "NAVTALK_PARENT_PID": "1"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1 and r.stdout == "", r.stdout
    ok = subprocess.run(
        [sys.executable, "-m", "agent", "--version"],
        env={**os.environ, "NAVTALK_PARENT_PID": str(os.getpid())},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0 and "navtalk-agent" in ok.stdout
