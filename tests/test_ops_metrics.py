"""The supervisor's /metrics (conventional names, checked by promtool) and /healthz, and
``navtalk-agent status`` against a real supervisor whose child was just SIGKILLed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.bus import Delivery
from agent.config import load
from agent.errors import ErrorCategory
from agent.messages import (
    BargeIn,
    ErrorInfo,
    Metrics,
    SessionPhase,
    SessionState,
    ToolCall,
    ToolResult,
)
from agent.ops_metrics import MetricsExporter
from tests.conftest import free_port, ipc_bus_settings
from tests.supervisor_helpers import ROOT, bus_toml, start_supervisor, stop

PROMTOOL = shutil.which("promtool")


def promtool_check(text: str) -> None:
    """`promtool check metrics` (Debian's prometheus package) must find nothing to say."""
    assert PROMTOOL, "promtool missing: scripts/install-system-deps.sh installs prometheus"
    r = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class _Proc:
    pid: int
    returncode: int | None = None


@dataclass
class _ChildRow:  # the fields of agent.apps.supervisor.Child the exporter reads
    name: str
    heartbeats: bool
    restarts: int
    phase: str
    proc: _Proc | None


def d(msg: Any, mono_ns: int = 0) -> Delivery:
    return Delivery("t", "s", 1, mono_ns, 0, msg, [])


def test_exporter_names_units_and_health() -> None:
    port = free_port()
    rows = [
        _ChildRow("tools", True, 2, "running", _Proc(os.getpid())),
        _ChildRow("emulator", False, 0, "starting", _Proc(os.getpid())),
        _ChildRow("mic", True, 1, "backoff", None),
    ]
    x = MetricsExporter("127.0.0.1", port, lambda: rows)
    try:
        x.observe(d(ToolCall(call_id="a", name="lights", arguments_json="{}"), 1_000_000_000))
        x.observe(d(ToolResult(call_id="a", name="lights", ok=True), 1_250_000_000))
        err = ErrorInfo(category=ErrorCategory.TIMEOUT, message="slow")
        x.observe(d(ToolResult(call_id="b", name="lights", ok=False, error=err)))
        x.observe(d(ToolResult(call_id="b", name="lights", ok=True)))  # late: not counted
        x.observe(d(BargeIn()))
        for phase in ("connecting", "ready", "connecting", "ready"):
            x.observe(d(SessionState(phase=SessionPhase(phase))))
        x.observe(d(Metrics(service="mic", values={"bus.media_dropped": 3.0, "frames": 9.0})))
        status, text = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        promtool_check(text)
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in fams.values()
            for s in f.samples
        }
        assert fams["navtalk_agent_restarts"].type == "counter"
        assert samples[("navtalk_agent_restarts_total", (("service", "tools"),))] == 2
        assert samples[("navtalk_agent_up", (("service", "emulator"),))] == 1  # alive = up
        assert samples[("navtalk_agent_up", (("service", "mic"),))] == 0
        assert samples[("navtalk_agent_session_state", (("state", "ready"),))] == 1
        assert samples[("navtalk_agent_session_state", (("state", "idle"),))] == 0
        assert samples[("navtalk_agent_session_reconnects_total", ())] == 1
        assert samples[("navtalk_agent_barge_ins_total", ())] == 1
        ok = ("navtalk_agent_tool_calls_total", (("outcome", "ok"), ("tool", "lights")))
        timeout = ("navtalk_agent_tool_calls_total", (("outcome", "timeout"), ("tool", "lights")))
        assert samples[ok] == 1 and samples[timeout] == 1
        assert fams["navtalk_agent_tool_call_duration_seconds"].type == "histogram"
        hist_sum = ("navtalk_agent_tool_call_duration_seconds_sum", (("tool", "lights"),))
        assert samples[hist_sum] == pytest.approx(0.25)
        labels = (("plane", "media"), ("service", "mic"), ("where", "receive"))
        assert samples[("navtalk_agent_bus_dropped_total", labels)] == 3
        assert samples[("navtalk_agent_process_cpu_seconds_total", (("service", "tools"),))] > 0

        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 503 and "mic: not in service" in body
        rows[2] = _ChildRow("mic", True, 1, "running", _Proc(os.getpid()))
        assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        x.observe(d(SessionState(phase=SessionPhase.FAILED)))
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 503
        assert get(f"http://127.0.0.1:{port}/")[0] == 404
    finally:
        x.close()


async def poll_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await asyncio.to_thread(check)
        if result:
            return result
        await asyncio.sleep(0.02)  # polling an HTTP endpoint: there is no event to wait on
    raise AssertionError(f"timed out: {what}")


def status_json(cfg: Path) -> dict[str, Any]:
    r = subprocess.run(
        [sys.executable, "-m", "agent", "status", "--json", "--wait", "10", "--config", str(cfg)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


async def test_healthz_status_and_promtool_against_a_real_supervisor(short_tmp: Path) -> None:
    port = free_port()
    cfg = short_tmp / "sup.toml"
    cfg.write_text(
        bus_toml(ipc_bus_settings(str(short_tmp))) + f"\n[supervisor]\nmetrics_port = {port}\n"
        "heartbeat_interval_s = 0.2\nheartbeat_timeout_s = 1.5\nrestart_initial_s = 1.0\n"
        "restart_stable_s = 120\n"  # not "at once": /healthz has a second to show the gap
        'stop_timeout_s = 3\n\n[tools]\ndisabled_builtins = ["take_photo"]\n'
    )
    base = f"http://127.0.0.1:{port}"
    proc = start_supervisor(cfg, "--only", "tools", log=short_tmp / "sup.log")
    try:
        await poll_until(lambda: _ok(base + "/healthz"), 30, "healthz 200 at start")
        before = await asyncio.to_thread(status_json, cfg)
        (tools,) = [p for p in before["processes"] if p["name"] == "tools"]
        assert tools["restarts"] == 0 and tools["pid"] > 0 and tools["status"] == "ok"
        assert tools["rss_bytes"] > 1e6 and tools["cpu_s"] > 0
        os.kill(tools["pid"], signal.SIGKILL)
        await poll_until(lambda: get(base + "/healthz")[0] == 503, 10, "healthz 503")
        await poll_until(lambda: _ok(base + "/healthz"), 30, "healthz 200 after the restart")

        def restarted() -> dict[str, Any] | None:
            s = status_json(cfg)
            (t,) = [p for p in s["processes"] if p["name"] == "tools"]
            return t if t["restarts"] == 1 and t["pid"] != tools["pid"] else None

        after = await poll_until(restarted, 20, "status shows the restart")
        assert after["status"] == "ok"
        text = get(base + "/metrics")[1]
        promtool_check(text)
        assert 'navtalk_agent_restarts_total{service="tools"} 1.0' in text
        r = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "agent", "status", "--config", str(cfg)],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0 and "tools" in r.stdout and "PROCESS" in r.stdout
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _ok(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


def test_a_settings_value_reaches_status_through_load(short_tmp: Path) -> None:
    cfg = short_tmp / "x.toml"
    cfg.write_text('[remote]\nenabled = true\nmedia = ["audio.mic"]\n')
    s = load(cfg)
    assert s.remote.enabled and s.remote.media == ["audio.mic"]


async def test_the_supervisor_runs_the_gateway_and_status_reads_through_it(
    short_tmp: Path,
) -> None:
    from agent.keys import generate

    keys = short_tmp / "keys"
    generate(keys, "server")
    generate(short_tmp / "me", "op")
    (keys / "readers").mkdir()
    shutil.copy(short_tmp / "me" / "op.key", keys / "readers")
    port, read_port, command_port = free_port(), free_port(), free_port()
    remote = f"read_port = {read_port}\ncommand_port = {command_port}\n"
    cfg = short_tmp / "sup.toml"
    cfg.write_text(
        bus_toml(ipc_bus_settings(str(short_tmp)))
        + f"\n[supervisor]\nmetrics_port = {port}\nheartbeat_interval_s = 0.2\n"
        f'stop_timeout_s = 3\n\n[remote]\nenabled = true\nkeys_dir = "{keys}"\n{remote}'
        '\n[tools]\ndisabled_builtins = ["take_photo"]\n'
    )
    operator = short_tmp / "op.toml"  # the operator's machine: only the gateway's ports
    operator.write_text(f"[remote]\n{remote}")
    proc = start_supervisor(cfg, "--only", "tools", log=short_tmp / "sup.log")
    try:
        await poll_until(lambda: _ok(f"http://127.0.0.1:{port}/healthz"), 30, "healthz 200")
        text = get(f"http://127.0.0.1:{port}/metrics")[1]
        assert 'navtalk_agent_up{service="gateway"} 1.0' in text
        r = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "agent", "status", "--json", "--wait", "10",
             "--remote", "127.0.0.1", "--key", str(short_tmp / "me" / "op.key_secret"),
             "--server-key", str(keys / "server.key"), "--config", str(operator)],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        rows = {p["name"]: p for p in json.loads(r.stdout)["processes"]}
        assert rows["tools"]["status"] == "ok" and rows["gateway"]["up"] is True
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "remote gateway up" in (short_tmp / "sup.log").read_text()


def test_the_session_is_healthy_where_its_policy_wants_it() -> None:
    from agent.ops_metrics import SessionWish

    wish = SessionWish(wants_live=True, since=0.0)  # autostart
    assert wish.problem(now=10.0) is None  # connecting: within the grace period
    assert wish.problem(now=31.0) == "session: wanted live, no state for 31 s"
    wish.state(SessionPhase.READY, now=31.0)
    assert wish.problem(now=500.0) is None
    wish.state(SessionPhase.CONNECTING, now=500.0)  # a drop: reconnecting
    assert wish.problem(now=520.0) is None and wish.problem(now=531.0) is not None
    wish.wish(False, now=531.0)  # session end: idle is where it should be
    wish.state(SessionPhase.IDLE, now=532.0)
    assert wish.problem(now=5000.0) is None
    wish.state(SessionPhase.FAILED, now=5001.0)
    assert wish.problem(now=5001.0) == "session: failed"


def test_the_visit_policy_says_where_the_session_should_be() -> None:
    port = free_port()
    x = MetricsExporter("127.0.0.1", port, lambda: [], session_autostart=True)
    try:
        assert x.session is not None and x.session.wants_live  # autostart, before any state
        x.observe(d(SessionState(phase=SessionPhase.IDLE, visit="idle", visit_detail="ready")))
        assert not x.session.wants_live  # a kiosk waiting for its guest is healthy idle
        x.observe(d(SessionState(phase=SessionPhase.CONNECTING, visit="starting")))
        assert x.session.wants_live
        spent = SessionState(phase=SessionPhase.IDLE, visit="idle", visit_detail="budget spent")
        x.observe(d(spent))
        assert not x.session.wants_live
        _, text = get(f"http://127.0.0.1:{port}/metrics")
        samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples["navtalk_agent_session_budget_spent"] == 1
    finally:
        x.close()
