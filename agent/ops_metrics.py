"""The supervisor's Prometheus endpoint and health check, and the process table it shares
on the bus.

``http://metrics_host:metrics_port/metrics`` (Prometheus text format, conventional names)::

    navtalk_agent_up{service}                          1 in service (heartbeats; the
                                                       emulator: its process is alive)
    navtalk_agent_restarts_total{service}              restarts since the supervisor started
    navtalk_agent_process_cpu_seconds_total{service}   CPU time of the current process
    navtalk_agent_process_resident_memory_bytes{service}
    navtalk_agent_session_state{state}                 1 for the session's phase, 0 others
    navtalk_agent_session_reconnects_total             connection attempts after a live one
    navtalk_agent_barge_ins_total                      control.barge_in seen
    navtalk_agent_tool_calls_total{tool,outcome}       outcome: ok or the error category
    navtalk_agent_tool_call_duration_seconds{tool}     histogram, tool.call -> tool.result
    navtalk_agent_bus_dropped_total{service,plane,where}  where: publish (full PUB queue)
                                                       or receive (full receive queue)
    navtalk_agent_bus_decode_errors_total{service}     undecodable messages dropped
    navtalk_agent_bus_gaps_total{service}              messages lost upstream (seq gaps)
    navtalk_agent_service_metric{service,name}         a service's own metrics.* values,
                                                       as reported (not a stable API)

``/healthz``: 200 ``ok`` when every enabled process is in service and the session is where
its policy wants it (live after autostart or ``session start``, for longer than a grace
period of reconnecting; idle after ``session end``) and has not failed; else 503 and one
line per problem. Any other path: 404.

Each service's runtime publishes its bus counters as ``bus.*`` values of ``metrics.<name>``
(:func:`bus_metrics_loop`), and the supervisor publishes ``metrics.supervisor`` with
``child.<name>.{pid,up,restarts,heartbeats,cpu_seconds,rss_bytes}``
(:func:`children_loop`): what ``navtalk-agent status`` shows, locally or through the
remote gateway.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import prometheus_client as prom
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import topics
from agent.bus import Bus, BusStats, Delivery
from agent.errors import SupervisorError
from agent.messages import (
    BargeIn,
    Metrics,
    SessionControl,
    SessionPhase,
    SessionState,
    ToolCall,
    ToolResult,
    VideoStats,
)

__all__ = [
    "OBSERVED_TOPICS",
    "MetricsExporter",
    "bus_metrics_loop",
    "bus_values",
    "children_loop",
    "children_values",
]

log = logging.getLogger(__name__)

# What the supervisor reads for these metrics, besides health.* and metrics.*.
OBSERVED_TOPICS = (
    topics.SESSION_STATE,
    topics.CONTROL_SESSION,
    topics.TOOL_CALL,
    topics.TOOL_RESULT,
    topics.CONTROL_BARGE_IN,
    topics.VIDEO_STATS,
)
MAX_PENDING_CALLS = 1024  # tool calls awaiting their result (oldest forgotten first)
MAX_SERIES = 256  # distinct (service, name) raw values exported
TOOL_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LIVE_PHASES = {SessionPhase.CONNECTED, SessionPhase.CREATED, SessionPhase.READY}
SESSION_GRACE_S = 30.0  # a wanted session may be (re)connecting this long and still be healthy


@dataclass
class SessionWish:
    """Where the session should be (autostart, then the last control.session) against
    where it is, for /healthz. No clock reads: pass ``now``."""

    wants_live: bool
    phase: SessionPhase | None = None
    since: float = 0.0  # when the wish or the phase last changed

    def wish(self, live: bool, now: float) -> None:
        if live != self.wants_live:
            self.wants_live, self.since = live, now

    def state(self, phase: SessionPhase, now: float) -> None:
        if phase is not self.phase:
            self.phase, self.since = phase, now

    def problem(self, now: float, grace_s: float = SESSION_GRACE_S) -> str | None:
        if self.phase is SessionPhase.FAILED:
            return "session: failed"
        if self.wants_live and self.phase not in _LIVE_PHASES and now - self.since > grace_s:
            return f"session: wanted live, {self.phase or 'no state'} for {now - self.since:.0f} s"
        return None


class ChildView(Protocol):
    """What the exporter reads of a supervised process (agent.apps.supervisor.Child)."""

    name: str
    heartbeats: bool
    restarts: int

    @property
    def phase(self) -> Any: ...

    @property
    def proc(self) -> Any: ...


def _pid(child: ChildView) -> int:
    proc = child.proc
    return int(proc.pid) if proc is not None and proc.returncode is None else 0


def is_up(child: ChildView) -> bool:
    if _pid(child) == 0:
        return False
    if not child.heartbeats:
        return True  # not on the bus (the emulator): alive is all we can know
    return str(child.phase) == "running"


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_usage(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, resident bytes) of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/statm", "rb") as f:
            statm = f.read().split()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) "
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLK_TCK, int(statm[1]) * _PAGE


def children_values(children: Iterable[ChildView]) -> dict[str, float]:
    """``child.<name>.*`` values of ``metrics.supervisor`` (the status table)."""
    out: dict[str, float] = {}
    for c in children:
        pid = _pid(c)
        out[f"child.{c.name}.pid"] = float(pid)
        out[f"child.{c.name}.up"] = float(is_up(c))
        out[f"child.{c.name}.restarts"] = float(c.restarts)
        out[f"child.{c.name}.heartbeats"] = float(c.heartbeats)
        usage = proc_usage(pid) if pid else None
        if usage is not None:
            out[f"child.{c.name}.cpu_seconds"], out[f"child.{c.name}.rss_bytes"] = usage
    return out


async def children_loop(
    bus: Bus, children: Callable[[], Iterable[ChildView]], interval_s: float
) -> None:
    """Publish the process table as ``metrics.supervisor`` every ``interval_s``."""
    while True:
        values = children_values(children())
        with contextlib.suppress(Exception):
            bus.publish("metrics.supervisor", Metrics(service=topics.SUPERVISOR, values=values))
        await asyncio.sleep(interval_s)  # a reporting period, not a wait for an event


def bus_values(stats: BusStats) -> dict[str, float]:
    return {
        "bus.publish_dropped": float(stats.publish_dropped),
        "bus.media_dropped": float(stats.media_dropped),
        "bus.decode_errors": float(stats.decode_errors),
        "bus.gaps": float(stats.gaps),
    }


async def bus_metrics_loop(publisher: Bus, name: str, watched: Bus, interval_s: float) -> None:
    """A service's bus counters (of ``watched``) as ``metrics.<name>``, sent by ``publisher``."""
    while True:
        await asyncio.sleep(interval_s)  # a reporting period, not a wait for an event
        with contextlib.suppress(Exception):
            publisher.publish(
                f"metrics.{name}", Metrics(service=name, values=bus_values(watched.stats))
            )


class _ScrapeTime(Collector):
    """Values read when scraped: process state, restarts, usage, bus counters, raw values."""

    def __init__(self, exporter: MetricsExporter):
        self._x = exporter

    def collect(self) -> Iterator[Metric]:
        x = self._x
        up = GaugeMetricFamily(
            "navtalk_agent_up", "1 when the process is in service", labels=["service"]
        )
        restarts = CounterMetricFamily(
            "navtalk_agent_restarts", "restarts since the supervisor started", labels=["service"]
        )
        cpu = CounterMetricFamily(
            "navtalk_agent_process_cpu_seconds", "CPU time of the process", labels=["service"]
        )
        rss = GaugeMetricFamily(
            "navtalk_agent_process_resident_memory_bytes", "resident memory", labels=["service"]
        )
        for c in x.children():
            up.add_metric([c.name], float(is_up(c)))
            restarts.add_metric([c.name], float(c.restarts))
            pid = _pid(c)
            usage = proc_usage(pid) if pid else None
            if usage is not None:
                cpu.add_metric([c.name], usage[0])
                rss.add_metric([c.name], usage[1])
        yield from (up, restarts, cpu, rss)
        state = GaugeMetricFamily(
            "navtalk_agent_session_state", "1 for the session's current phase", labels=["state"]
        )
        for phase in SessionPhase:
            state.add_metric([phase.value], float(x.session_phase is phase))
        yield state
        dropped = CounterMetricFamily(
            "navtalk_agent_bus_dropped",
            "bus messages dropped at a full queue",
            labels=["service", "plane", "where"],
        )
        decode = CounterMetricFamily(
            "navtalk_agent_bus_decode_errors", "undecodable bus messages", labels=["service"]
        )
        gaps = CounterMetricFamily(
            "navtalk_agent_bus_gaps", "bus messages lost upstream", labels=["service"]
        )
        raw = GaugeMetricFamily(
            "navtalk_agent_service_metric",
            "a service's own metrics.* value, as reported",
            labels=["service", "name"],
        )
        for (service, name), value in sorted(x.values.items()):
            if name == "bus.publish_dropped":
                dropped.add_metric([service, "media", "publish"], value)
            elif name == "bus.media_dropped":
                dropped.add_metric([service, "media", "receive"], value)
            elif name == "bus.decode_errors":
                decode.add_metric([service], value)
            elif name == "bus.gaps":
                gaps.add_metric([service], value)
            elif not name.startswith("child."):
                raw.add_metric([service, name], value)
        yield from (dropped, decode, gaps, raw)


class MetricsExporter:
    """Serves /metrics and /healthz for the supervisor; fed with bus deliveries."""

    def __init__(
        self,
        host: str,
        port: int,
        children: Callable[[], Iterable[ChildView]],
        *,
        session_autostart: bool | None = None,  # None: no session service is run
    ):
        self.children = children
        self.session = (
            None if session_autostart is None else SessionWish(session_autostart, None, _now())
        )
        self.session_phase: SessionPhase | None = None
        self.values: dict[tuple[str, str], float] = {}
        self._pending: collections.OrderedDict[str, tuple[str, int]] = collections.OrderedDict()
        self._answered: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.registry = prom.CollectorRegistry()
        self.registry.register(_ScrapeTime(self))
        self.reconnects = prom.Counter(
            "navtalk_agent_session_reconnects", "connection attempts after a live session",
            registry=self.registry,
        )  # fmt: skip
        self.barge_ins = prom.Counter(
            "navtalk_agent_barge_ins", "barge-ins (control.barge_in)", registry=self.registry
        )
        self.budget_spent = prom.Gauge(
            "navtalk_agent_session_budget_spent",
            "1 while today's budget of session minutes is spent (docs/kiosk.md)",
            registry=self.registry,
        )
        self.tool_calls = prom.Counter(
            "navtalk_agent_tool_calls", "tool calls by outcome (ok or error category)",
            ["tool", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.tool_seconds = prom.Histogram(
            "navtalk_agent_tool_call_duration_seconds", "tool.call to tool.result",
            ["tool"], buckets=TOOL_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self._server = _serve(host, port, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        log.info("= metrics on http://%s:%d/metrics, health on /healthz", host, port)

    # -- fed from the supervisor's bus loop (event loop thread) ------------------------------

    def observe(self, d: Delivery) -> None:
        msg = d.msg
        if isinstance(msg, Metrics):
            for name, v in msg.values.items():
                key = (msg.service, name)
                if key in self.values or len(self.values) < MAX_SERIES:
                    self.values[key] = v
        elif isinstance(msg, VideoStats):
            for name in ("frames_received", "frames_rendered", "frames_dropped"):
                key = (topics.DISPLAY, name)
                if key in self.values or len(self.values) < MAX_SERIES:
                    self.values[key] = float(getattr(msg, name))
        elif isinstance(msg, SessionState):
            previous, self.session_phase = self.session_phase, msg.phase
            if msg.visit:  # the kiosk policy decides where the session should be
                self.budget_spent.set(1.0 if msg.visit_detail == "budget spent" else 0.0)
                if self.session is not None:
                    self.session.wish(msg.visit != "idle", _now())
            if self.session is not None:
                self.session.state(msg.phase, _now())
            if msg.phase is SessionPhase.CONNECTING and (
                previous in _LIVE_PHASES or previous is SessionPhase.CLOSED
            ):
                self.reconnects.inc()
        elif isinstance(msg, SessionControl):
            if self.session is not None:
                self.session.wish(msg.action == "start", _now())
        elif isinstance(msg, BargeIn):
            self.barge_ins.inc()
        elif isinstance(msg, ToolCall):
            self._pending[msg.call_id] = (msg.name, d.mono_ns)
            while len(self._pending) > MAX_PENDING_CALLS:
                self._pending.popitem(last=False)
        elif isinstance(msg, ToolResult):
            if msg.call_id in self._answered:
                return  # a second result for one call (the session's own timeout, then the
                # tools process's late one): the model got the first, that is the outcome
            self._answered[msg.call_id] = None
            while len(self._answered) > MAX_PENDING_CALLS:
                self._answered.popitem(last=False)
            outcome = "ok" if msg.ok else (msg.error.category.value if msg.error else "error")
            started = self._pending.pop(msg.call_id, None)
            name = started[0] if started else msg.name
            self.tool_calls.labels(name[:64], outcome).inc()
            if started is not None:
                self.tool_seconds.labels(name[:64]).observe(max(0, d.mono_ns - started[1]) / 1e9)

    # -- read from the HTTP thread -----------------------------------------------------------

    def health(self) -> list[str]:
        """Problems, one line each; empty when healthy."""
        problems = [
            f"{c.name}: not in service ({c.phase})" for c in self.children() if not is_up(c)
        ]
        if self.session is not None:
            problem = self.session.problem(_now())
            if problem:
                problems.append(problem)
        elif self.session_phase is SessionPhase.FAILED:
            problems.append("session: failed")
        return problems

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _now() -> float:
    return time.monotonic()


def _serve(host: str, port: int, exporter: MetricsExporter) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, prom.generate_latest(exporter.registry), prom.CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                problems = exporter.health()
                body = ("\n".join(problems) if problems else "ok") + "\n"
                self._reply(503 if problems else 200, body.encode(), "text/plain; charset=utf-8")
            else:
                self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain")

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("metrics http: " + format, *args)

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise SupervisorError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror}); "
            "set [supervisor] metrics_port to a free port, or 0 for none"
        ) from exc
    server.daemon_threads = True
    return server
