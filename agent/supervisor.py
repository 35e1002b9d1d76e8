"""The supervisor: starts the bus proxy and every enabled service as its own OS process,
watches their heartbeats, restarts the dead and the silent, and stops everything cleanly.

::

    navtalk-agent run --config FILE
      ├── bus proxy (threads in this process, control + media planes)
      ├── emulator          (child, when [emulator] embedded = true)
      ├── tools, speaker, display, mic, session   (children: `navtalk-agent service NAME`)
      └── watchdog: health.* heartbeats -> restart with exponential backoff; crash loop -> give up

The restart decisions live in :class:`RestartPolicy`, a plain class fed with
``now``; :class:`Supervisor` is the asyncio shell around it. Children get
``PR_SET_PDEATHSIG`` so they die with the supervisor even if it is SIGKILLed,
and on SIGINT/SIGTERM every child gets SIGTERM, then SIGKILL after
``stop_timeout_s``: no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import functools
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent import topics
from agent.bus import Bus, Proxy
from agent.config import Settings, SupervisorSettings
from agent.errors import SupervisorError
from agent.messages import HealthStatus, Heartbeat, Metrics, Shutdown, VideoStats
from agent.runtime import heartbeat_loop

log = logging.getLogger(__name__)

SUPERVISOR_TOPICS = topics.ServiceTopics(
    reads=(topics.HEALTH, topics.METRICS, topics.VIDEO_STATS),
    writes=(topics.CONTROL_SHUTDOWN, topics.HEALTH),  # health.supervisor
)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class ChildPhase(enum.StrEnum):
    STARTING = "starting"  # spawned, no heartbeat yet
    RUNNING = "running"  # heartbeats arrive
    BACKOFF = "backoff"  # exited; waiting to restart
    GAVE_UP = "gave_up"  # crash loop: not restarted any more
    STOPPED = "stopped"  # exited on purpose (shutdown)


@dataclass
class RestartPolicy:
    """Exponential backoff with a crash-loop breaker. No clock reads: pass ``now``."""

    initial_s: float
    max_s: float
    loop_restarts: int
    loop_window_s: float
    stable_after_s: float = 30.0  # a child that ran this long resets the backoff
    _restarts: deque[float] = field(default_factory=deque)
    _delay_s: float = 0.0

    @classmethod
    def from_settings(cls, s: SupervisorSettings) -> RestartPolicy:
        return cls(
            s.restart_initial_s, s.restart_max_s, s.crash_loop_restarts, s.crash_loop_window_s
        )

    def on_exit(self, now: float, ran_for_s: float) -> float | None:
        """The child exited: seconds to wait before restarting it, or None to give up."""
        while self._restarts and now - self._restarts[0] > self.loop_window_s:
            self._restarts.popleft()
        if len(self._restarts) >= self.loop_restarts:
            return None
        if ran_for_s >= self.stable_after_s:
            self._delay_s = 0.0
        self._delay_s = (
            self.initial_s if self._delay_s == 0.0 else min(self._delay_s * 2, self.max_s)
        )
        self._restarts.append(now)
        return self._delay_s


@dataclass
class Child:
    name: str
    argv: list[str]
    policy: RestartPolicy
    cores: list[int] = field(default_factory=list)
    heartbeats: bool = True  # False: not on the bus (the emulator); watched by its exit only
    phase: ChildPhase = ChildPhase.STARTING
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    last_beat: float = 0.0
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)

    def set_phase(self, phase: ChildPhase, why: str = "") -> None:
        if phase is not self.phase:
            log.info("= %s: %s -> %s%s", self.name, self.phase, phase, f" ({why})" if why else "")
            self.phase = phase


class Supervisor:
    """Runs the whole agent. ``await run()`` returns the exit code when stopped."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | None,
        overrides: Sequence[str] = (),
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        only: Sequence[str] | None = None,
    ):
        self.settings = settings
        self._sup = settings.supervisor
        self._config_args = ["--config", config_path] if config_path else []
        for item in overrides:
            self._config_args += ["--set", item]
        self._python = python
        self._env = env
        self.children: dict[str, Child] = {}
        self._stopping = asyncio.Event()
        self._stop_reason = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._proxy: Proxy | None = None
        self._bus: Bus | None = None
        self._metrics: _MetricsExporter | None = None
        names: list[str] = ["emulator"] if settings.emulator.embedded else []
        for service in settings.supervisor.services:
            if only is not None and service not in only:
                continue
            if getattr(settings, service).enabled:
                names.append(service)
        for name in names:
            if name == "emulator":
                argv = [self._python, "-m", "agent", "emulator", *self._config_args]
            else:
                argv = [self._python, "-m", "agent", "service", name, *self._config_args]
            self.children[name] = Child(
                name,
                argv,
                RestartPolicy.from_settings(self._sup),
                cores=list(self._sup.cpu_affinity.get(name, [])),
                heartbeats=name != "emulator",
            )

    def stop(self, reason: str) -> None:
        if not self._stopping.is_set():
            self._stop_reason = reason
            self._stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop, signal.Signals(signum).name)
        self._proxy = Proxy(self.settings.bus)
        self._proxy.start()
        self._bus = Bus(self.settings.bus, topics.SUPERVISOR)
        self._bus.declare(SUPERVISOR_TOPICS)
        try:
            if self._sup.metrics_port:
                self._metrics = _MetricsExporter(
                    self._sup.metrics_host, self._sup.metrics_port, self.children.values()
                )
            await self._bus.start()
            for child in self.children.values():
                await self._spawn(child)
            self._spawn_task(self._watch_health(), "health")
            self._spawn_task(self._watchdog(), "watchdog")
            beat = heartbeat_loop(
                self._bus, topics.SUPERVISOR, self._sup.heartbeat_interval_s, self._health
            )
            self._spawn_task(beat, "heartbeat")
            await self._stopping.wait()
            log.info("= stopping everything (%s)", self._stop_reason)
        finally:
            await self._shutdown()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        unclean = [c.name for c in self.children.values() if c.exit_codes and c.exit_codes[-1]]
        if unclean:
            log.error("not every process stopped cleanly: %s", ", ".join(unclean))
            return 1
        return 0

    # -- children --------------------------------------------------------------------------

    def _spawn_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("supervisor task %s failed", task.get_name(), exc_info=task.exception())
            self.stop(f"internal error in {task.get_name()}")

    async def _spawn(self, child: Child) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *child.argv, env=self._env, preexec_fn=_die_with_parent
            )
        except OSError as exc:
            raise SupervisorError(f"cannot start {child.name}: {exc}") from exc
        if child.cores:
            try:
                os.sched_setaffinity(proc.pid, child.cores)
            except OSError as exc:
                log.warning("%s: cannot pin to cores %s: %s", child.name, child.cores, exc)
        child.proc = proc
        child.started_at = child.last_beat = time.monotonic()
        log.info("= %s: spawned, pid %d", child.name, proc.pid)
        child.set_phase(ChildPhase.STARTING)
        self._spawn_task(self._reap(child, proc), f"reap-{child.name}")

    async def _reap(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        child.exit_codes.append(code)
        if self._stopping.is_set():
            child.set_phase(ChildPhase.STOPPED, f"exit {code}")
            return
        now = time.monotonic()
        delay = child.policy.on_exit(now, now - child.started_at)
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if delay is None:
            child.set_phase(ChildPhase.GAVE_UP, how)
            log.error(
                "%s keeps crashing (%d restarts within %.0f s): not restarting it; "
                "see its log above, fix the cause, then restart the agent",
                child.name,
                child.policy.loop_restarts,
                child.policy.loop_window_s,
            )
            return
        log.warning("%s died (%s); restarting in %.1f s", child.name, how, delay)
        child.set_phase(ChildPhase.BACKOFF, how)
        with contextlib.suppress(TimeoutError):  # not wait_for: see agent/bus.py
            async with asyncio.timeout(delay):
                await self._stopping.wait()
        if self._stopping.is_set():
            child.set_phase(ChildPhase.STOPPED)
            return
        child.restarts += 1
        await self._spawn(child)

    async def _watch_health(self) -> None:
        assert self._bus is not None
        async for d in self._bus:
            if isinstance(d.msg, Heartbeat):
                child = self.children.get(d.msg.service)
                if child and child.proc and child.proc.pid == d.msg.pid:
                    child.last_beat = time.monotonic()
                    if child.phase is ChildPhase.STARTING:
                        child.set_phase(ChildPhase.RUNNING, "first heartbeat")
            if self._metrics is not None:
                self._metrics.observe(d.msg)

    async def _watchdog(self) -> None:
        while not self._stopping.is_set():  # a stopping child is silent on purpose
            await asyncio.sleep(self._sup.heartbeat_interval_s / 2)
            if self._stopping.is_set():
                return
            now = time.monotonic()
            for child in self.children.values():
                proc = child.proc
                if proc is None or proc.returncode is not None or not child.heartbeats:
                    continue
                limit = (
                    self._sup.startup_grace_s
                    if child.phase is ChildPhase.STARTING
                    else self._sup.heartbeat_timeout_s
                )
                if now - child.last_beat > limit:
                    log.error(
                        "%s (pid %d) silent for %.1f s: killing it", child.name, proc.pid, limit
                    )
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    child.last_beat = now  # one kill per silence

    def _health(self) -> tuple[HealthStatus, str]:
        gave_up = [c.name for c in self.children.values() if c.phase is ChildPhase.GAVE_UP]
        return ("degraded", f"gave up on: {', '.join(gave_up)}") if gave_up else ("ok", "")

    async def _shutdown(self) -> None:
        self._stopping.set()
        if self._bus is not None:
            with contextlib.suppress(Exception):
                self._bus.publish(topics.CONTROL_SHUTDOWN, Shutdown(reason=self._stop_reason))
        live = [c.proc for c in self.children.values() if c.proc and c.proc.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for p in live]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self._sup.stop_timeout_s)
            for proc in live:
                if proc.returncode is None:
                    log.warning(
                        "pid %d did not stop in %.1f s: SIGKILL", proc.pid, self._sup.stop_timeout_s
                    )
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=2)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._bus is not None:
            await self._bus.close()
        if self._proxy is not None:
            self._proxy.stop()
        if self._metrics is not None:
            self._metrics.close()
        codes = {c.name: c.exit_codes[-1] if c.exit_codes else None for c in self.children.values()}
        log.info("= all stopped: %s", ", ".join(f"{k}={v}" for k, v in codes.items()))


def _is_running(child: Child) -> float:
    return 1.0 if child.phase is ChildPhase.RUNNING else 0.0


def _restarts(child: Child) -> float:
    return float(child.restarts)


class _MetricsExporter:
    """Prometheus endpoint: child state and restarts, plus every ``metrics.*`` value."""

    def __init__(self, host: str, port: int, children: Iterable[Child]):
        import prometheus_client as prom

        self._registry = prom.CollectorRegistry()
        self.up = prom.Gauge(
            "navtalk_agent_up", "1 when the process sends heartbeats", ["service"],
            registry=self._registry,
        )  # fmt: skip
        self.restarts = prom.Gauge(
            "navtalk_agent_restarts", "restarts since start", ["service"], registry=self._registry
        )
        self.value = prom.Gauge(
            "navtalk_agent_metric", "a service's own metric", ["service", "name"],
            registry=self._registry,
        )  # fmt: skip
        for child in children:  # read when scraped, not kept up to date by hand
            self.up.labels(child.name).set_function(functools.partial(_is_running, child))
            self.restarts.labels(child.name).set_function(functools.partial(_restarts, child))
        try:
            self._server, self._thread = prom.start_http_server(port, host, registry=self._registry)
        except OSError as exc:
            raise SupervisorError(
                f"cannot serve metrics on {host}:{port} ({exc.strerror}); "
                "set [supervisor] metrics_port to a free port, or 0 for none"
            ) from exc
        log.info("= metrics on http://%s:%d/metrics", host, port)

    def observe(self, msg: object) -> None:
        if isinstance(msg, Metrics):
            for name, v in msg.values.items():
                self.value.labels(msg.service, name).set(v)
        elif isinstance(msg, VideoStats):
            for name in ("frames_received", "frames_rendered", "frames_dropped"):
                self.value.labels("display", name).set(getattr(msg, name))

    def close(self) -> None:
        self._server.shutdown()


def run_proxy_forever(settings: Settings) -> None:
    """``navtalk-agent proxy``: only the bus proxy, for systemd-managed deployments."""
    proxy = Proxy(settings.bus)
    proxy.start()
    done = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, done.set)
        await done.wait()

    try:
        asyncio.run(wait())
    finally:
        proxy.stop()
