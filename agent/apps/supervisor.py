"""The supervisor: starts the bus proxy and every enabled service as its own OS process,
watches their heartbeats, restarts the dead and the silent, and stops everything cleanly.

::

    navtalk-agent run --config FILE
      ├── bus proxy (threads in this process, control + media planes)
      ├── emulator          (child, when [emulator] embedded = true)
      ├── tools, speaker, display, mic, session   (children: `navtalk-agent service NAME`)
      └── watchdog: health.* heartbeats -> restart (at once after a stable run, else with
                    exponential backoff); crash loop -> pause, retry after a cool-down;
                    down too long -> exit 1 (systemd restarts the agent)

The restart decisions live in :class:`RestartPolicy`, a plain class fed with
``now``; :class:`Supervisor` is the asyncio shell around it. Children arm
``PR_SET_PDEATHSIG`` themselves (:mod:`agent.lifeline`: no ``preexec_fn`` in this
threaded process) so they die with the supervisor even if it is SIGKILLed, and on
SIGINT/SIGTERM every child gets SIGTERM, then SIGKILL after ``stop_timeout_s``: no
orphans. Only the session gets ``NAVTALK_LICENSE`` in its environment.

Exit status: 0 after a clean stop; 2 when a child exited 2 (a configuration error:
restarting cannot help, so the whole run ends); 1 when a child did not stop cleanly or a
service stayed down past ``down_limit_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from agent import ops_metrics, systemd, topics
from agent.apps.preflight import services_to_run
from agent.apps.zygote import Zygote
from agent.bus import Bus, Proxy
from agent.config import Settings, SupervisorSettings
from agent.errors import SupervisorError
from agent.lifeline import PARENT_ENV
from agent.messages import HealthStatus, Heartbeat, Shutdown
from agent.navtalk.settings import LICENSE_ENV
from agent.runtime import heartbeat_loop

log = logging.getLogger(__name__)

CONFIG_ERROR_EXIT = 2  # a child's configuration error (agent.errors.ConfigError): stop all
DOWN_EXIT = 1  # a service stayed down past down_limit_s: let systemd restart the agent

SUPERVISOR_TOPICS = topics.ServiceTopics(
    # health and metrics, plus what its Prometheus endpoint counts (agent.ops_metrics)
    reads=(topics.HEALTH, topics.METRICS, *ops_metrics.OBSERVED_TOPICS),
    # health.supervisor; metrics.supervisor: the process table `navtalk-agent status` shows
    writes=(topics.CONTROL_SHUTDOWN, topics.HEALTH, topics.METRICS),
)


class ChildPhase(enum.StrEnum):
    STARTING = "starting"  # spawned, no heartbeat yet
    RUNNING = "running"  # heartbeats arrive
    BACKOFF = "backoff"  # exited; waiting to restart
    GAVE_UP = "gave_up"  # crash loop: restarts paused for the cool-down
    STOPPED = "stopped"  # exited on purpose (shutdown)


@dataclass
class RestartPolicy:
    """When to restart a child that exited. No clock reads: pass ``now``.

    - It ran ``stable_after_s`` or longer: at once (0 s), and the backoff starts over.
    - It died sooner: exponential backoff from ``initial_s`` up to ``max_s``.
    - ``loop_restarts`` such quick deaths within ``loop_window_s``: a crash loop; ``on_exit``
      returns None and the caller waits ``cooldown_s``, then calls :meth:`after_cooldown`
      and restarts it (the count starts over).
    """

    initial_s: float
    max_s: float
    loop_restarts: int
    loop_window_s: float
    stable_after_s: float = 5.0
    cooldown_s: float = 60.0
    _restarts: deque[float] = field(default_factory=deque)  # times of quick deaths
    _delay_s: float = 0.0

    @classmethod
    def from_settings(cls, s: SupervisorSettings) -> RestartPolicy:
        return cls(
            s.restart_initial_s,
            s.restart_max_s,
            s.crash_loop_restarts,
            s.crash_loop_window_s,
            stable_after_s=s.restart_stable_s,
            cooldown_s=s.crash_loop_cooldown_s,
        )

    def on_exit(self, now: float, ran_for_s: float) -> float | None:
        """The child exited: seconds to wait before restarting it, or None (crash loop)."""
        if ran_for_s >= self.stable_after_s:
            self._delay_s = 0.0
            return 0.0
        while self._restarts and now - self._restarts[0] > self.loop_window_s:
            self._restarts.popleft()
        if len(self._restarts) >= self.loop_restarts:
            return None
        self._delay_s = (
            self.initial_s if self._delay_s == 0.0 else min(self._delay_s * 2, self.max_s)
        )
        self._restarts.append(now)
        return self._delay_s

    def after_cooldown(self) -> None:
        """The cool-down of a crash loop is over: the next restart starts a fresh count."""
        self._restarts.clear()
        self._delay_s = 0.0


class ChildProcess(Protocol):
    """What the supervisor needs of a child: an exec'd one (asyncio) or a forked one."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    async def wait(self) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


@dataclass
class Child:
    name: str
    args: list[str]  # navtalk-agent's arguments (after `python -m agent`)
    policy: RestartPolicy
    cores: list[int] = field(default_factory=list)
    heartbeats: bool = True  # False: not on the bus (the emulator); watched by its exit only
    phase: ChildPhase = ChildPhase.STARTING
    proc: ChildProcess | None = None
    started_at: float = 0.0
    last_beat: float = 0.0
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    down_since: float | None = None  # when it last stopped being in service (None: in service)
    running_since: float | None = None  # first heartbeat of the current process

    def ran_for(self, now: float) -> float:
        """How long the current process was in service (a process that never sent a
        heartbeat was not; the emulator, which sends none, counts from its start)."""
        if self.running_since is not None:
            return now - self.running_since
        return 0.0 if self.heartbeats else now - self.started_at

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
        self._env = dict(os.environ if env is None else env)
        self.children: dict[str, Child] = {}
        self._stopping = asyncio.Event()
        self._stop_reason = ""
        self._exit_code = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._proxy: Proxy | None = None
        self.systemd = systemd.Notifier(env)  # Type=notify: READY=1, WATCHDOG=1
        self._bus: Bus | None = None
        self._metrics: ops_metrics.MetricsExporter | None = None
        self._zygote: Zygote | None = None
        if settings.emulator.embedded and settings.emulator.port == 0:
            # "any free port": chosen here, once, so the session knows where to connect
            # (a session left with port 0 would connect to port 80).
            port = _free_port(settings.emulator.host)
            settings = msgspec.structs.replace(
                settings, emulator=msgspec.structs.replace(settings.emulator, port=port)
            )
            self.settings = settings
            self._config_args += ["--set", f"emulator.port={port}"]
            log.info("= embedded emulator: port 0 -> %d", port)
        for name in services_to_run(settings, only):
            if name == "emulator":
                args = ["emulator", *self._config_args]
            else:
                args = ["service", name, *self._config_args]
            self.children[name] = Child(
                name,
                args,
                RestartPolicy.from_settings(self._sup),
                cores=list(self._sup.cpu_affinity.get(name, [])),
                heartbeats=name != "emulator",
            )
        if settings.remote.enabled:  # the CurveZMQ remote gateway (agent.remote)
            self.children["gateway"] = Child(
                "gateway",
                ["gateway", *self._config_args],
                RestartPolicy.from_settings(self._sup),
                heartbeats=False,
            )

    def stop(self, reason: str, code: int = 0) -> None:
        if not self._stopping.is_set():
            self._stop_reason = reason
            self._exit_code = code
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
                self._metrics = ops_metrics.MetricsExporter(
                    self._sup.metrics_host,
                    self._sup.metrics_port,
                    self.children.values,
                    session_autostart=(
                        self.settings.session.autostart if topics.SESSION in self.children else None
                    ),
                )
            await self._bus.start()
            if self._sup.zygote:
                await self._start_zygote()
            for child in self.children.values():
                await self._spawn(child)
            self._systemd_up()
            self._spawn_task(self.systemd.watchdog_loop(), "systemd-watchdog")
            self._spawn_task(self._watch_health(), "health")
            self._spawn_task(self._watchdog(), "watchdog")
            beat = heartbeat_loop(
                self._bus, topics.SUPERVISOR, self._sup.heartbeat_interval_s, self._health
            )
            self._spawn_task(beat, "heartbeat")
            table = ops_metrics.children_loop(
                self._bus, self.children.values, self._sup.heartbeat_interval_s
            )
            self._spawn_task(table, "process-table")  # metrics.supervisor: `status` reads it
            await self._stopping.wait()
            log.info("= stopping everything (%s)", self._stop_reason)
        finally:
            await self._shutdown()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        if self._exit_code:
            return self._exit_code
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

    def child_env(self, name: str) -> dict[str, str]:
        """A child's environment: the supervisor's, plus its pid (agent.lifeline), and the
        license only for the session (the tools process runs third-party plugin code)."""
        env = {k: v for k, v in self._env.items() if k != LICENSE_ENV}
        if name == topics.SESSION and LICENSE_ENV in self._env:
            env[LICENSE_ENV] = self._env[LICENSE_ENV]
        env[PARENT_ENV] = str(os.getpid())
        return env

    async def _start_zygote(self) -> None:
        zygote = Zygote(
            self._python,
            {k: v for k, v in self._env.items() if k != LICENSE_ENV},
            tag=self._config_args,  # forked children show the zygote's command line
        )
        try:
            await zygote.start()
        except SupervisorError as exc:
            log.warning("%s: children are exec'd instead (slower restarts)", exc)
            return
        self._zygote = zygote

    async def _spawn(self, child: Child) -> None:
        env = self.child_env(child.name)
        proc: ChildProcess | None = None
        if self._zygote is not None:
            secret = env.pop(LICENSE_ENV, None)
            try:
                proc = await self._zygote.spawn(
                    child.args, env, secret=(LICENSE_ENV, secret) if secret else None
                )
            except SupervisorError as exc:
                log.warning("%s; exec'ing %s instead", exc, child.name)
                if secret:
                    env[LICENSE_ENV] = secret
        if proc is None:
            try:
                proc = await asyncio.create_subprocess_exec(
                    self._python, "-m", "agent", *child.args, env=env
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
        child.running_since = None
        log.info("= %s: spawned, pid %d", child.name, proc.pid)
        child.set_phase(ChildPhase.STARTING)
        self._spawn_task(self._reap(child, proc), f"reap-{child.name}")

    async def _reap(self, child: Child, proc: ChildProcess) -> None:
        code = await proc.wait()
        child.exit_codes.append(code)
        if self._stopping.is_set():
            child.set_phase(ChildPhase.STOPPED, f"exit {code}")
            return
        now = time.monotonic()
        if child.down_since is None:
            child.down_since = now
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        if code == CONFIG_ERROR_EXIT:
            child.set_phase(ChildPhase.STOPPED, how)
            log.error(
                "%s stopped on a configuration error (exit %d; see its log line above): "
                "restarting cannot help, stopping the agent",
                child.name,
                code,
            )
            self.stop(f"configuration error in {child.name}", CONFIG_ERROR_EXIT)
            return
        delay = child.policy.on_exit(now, child.ran_for(now))
        if delay is None:
            child.set_phase(ChildPhase.GAVE_UP, how)
            delay = child.policy.cooldown_s
            log.error(
                "%s keeps crashing (%d quick restarts within %.0f s): pausing its restarts "
                "for %.0f s; see its log above",
                child.name,
                child.policy.loop_restarts,
                child.policy.loop_window_s,
                delay,
            )
        elif delay:
            log.warning("%s died (%s); restarting in %.1f s", child.name, how, delay)
            child.set_phase(ChildPhase.BACKOFF, how)
        else:
            log.warning("%s died (%s) after a stable run; restarting now", child.name, how)
            child.set_phase(ChildPhase.BACKOFF, how)
        if delay:
            with contextlib.suppress(TimeoutError):  # not wait_for: see agent/bus.py
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
        if self._stopping.is_set():
            child.set_phase(ChildPhase.STOPPED)
            return
        if child.phase is ChildPhase.GAVE_UP:
            child.policy.after_cooldown()
            log.info("= %s: cool-down over, trying again", child.name)
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
                        child.running_since = child.last_beat
                        if child.down_since is not None:
                            log.info(
                                "= %s back in service after %.2f s",
                                child.name,
                                child.last_beat - child.down_since,
                            )
                        child.down_since = None
            if self._metrics is not None:
                self._metrics.observe(d)
            self._systemd_up()

    async def _watchdog(self) -> None:
        while not self._stopping.is_set():  # a stopping child is silent on purpose
            await asyncio.sleep(self._sup.heartbeat_interval_s / 2)
            if self._stopping.is_set():
                return
            now = time.monotonic()
            for child in self.children.values():
                self._check_down(child, now)
                proc = child.proc
                if proc is None or proc.returncode is not None:
                    continue
                if not child.heartbeats:  # watched by its exit only: up once it ran stable
                    if now - child.started_at >= child.policy.stable_after_s:
                        child.down_since = None
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
                    if child.down_since is None:
                        child.down_since = child.last_beat
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    child.last_beat = now  # one kill per silence

    def _check_down(self, child: Child, now: float) -> None:
        limit = self._sup.down_limit_s
        if limit and child.down_since is not None and now - child.down_since > limit:
            log.error(
                "%s has been out of service for %.0f s (down_limit_s = %.0f): stopping the "
                "agent with exit %d so that its service manager (systemd) restarts it",
                child.name,
                now - child.down_since,
                limit,
                DOWN_EXIT,
            )
            self.stop(f"{child.name} down for too long", DOWN_EXIT)

    def _health(self) -> tuple[HealthStatus, str]:
        gave_up = [c.name for c in self.children.values() if c.phase is ChildPhase.GAVE_UP]
        return ("degraded", f"gave up on: {', '.join(gave_up)}") if gave_up else ("ok", "")

    def _systemd_up(self) -> None:
        if not self.systemd.ready_sent:
            beating = [c for c in self.children.values() if c.heartbeats]
            self.systemd.up(all(c.phase is ChildPhase.RUNNING for c in beating), len(beating))

    async def _shutdown(self) -> None:
        self._stopping.set()
        self.systemd.stopping(self._stop_reason)
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
        if self._zygote is not None:
            await self._zygote.close()
        if self._bus is not None:
            await self._bus.close()
        if self._proxy is not None:
            self._proxy.stop()
        if self._metrics is not None:
            self._metrics.close()
        self.systemd.close()
        codes = {c.name: c.exit_codes[-1] if c.exit_codes else None for c in self.children.values()}
        log.info("= all stopped: %s", ", ".join(f"{k}={v}" for k, v in codes.items()))


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host or "127.0.0.1", 0))
        return int(s.getsockname()[1])


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
