"""Runs one service as a process: logging, signals, heartbeats, clean shutdown.

The service itself is ``services.<name>.run(settings, bus)``. The runtime
gives it its own :class:`~agent.bus.Bus`, and keeps a second, private bus
connection for heartbeats (``health.<name>``) and ``control.shutdown``, so a
service's message loop never has to know about either. A heartbeat comes
from the event loop itself: a service that blocks its loop goes silent and
the supervisor restarts it.

Exit codes: 0 after a clean stop (SIGTERM, SIGINT, ``control.shutdown``),
1 when the service failed, 2 for a configuration error.
"""

from __future__ import annotations

import asyncio
import faulthandler
import importlib
import io
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from agent import topics
from agent.bus import Bus
from agent.config import Settings
from agent.errors import ConfigError
from agent.messages import HealthStatus, Heartbeat, Shutdown
from agent.ops_metrics import bus_metrics_loop

log = logging.getLogger(__name__)

# the runtime's own connection in every service process (the service declares its own)
# metrics.<name>: the service bus's own counters (agent.ops_metrics.bus_metrics_loop)
RUNTIME_TOPICS = topics.ServiceTopics(
    reads=(topics.CONTROL_SHUTDOWN,), writes=(topics.HEALTH, topics.METRICS)
)


class ServiceMain(Protocol):
    def __call__(self, settings: Settings, bus: Bus) -> Coroutine[Any, Any, None]: ...


def load_service(name: str) -> ServiceMain:
    if name not in topics.SERVICES:
        raise ValueError(f"unknown service {name!r}; services are: {', '.join(topics.SERVICES)}")
    module = importlib.import_module(f"services.{name}")
    run: ServiceMain = module.run
    return run


class ServiceBus(Bus):
    """The service's own bus; :attr:`ready` is set once its :meth:`start` returned, i.e.
    its subscriptions are in place at the proxy."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ready = asyncio.Event()

    async def start(self, timeout: float = 10.0) -> None:
        await super().start(timeout)
        self.ready.set()


async def heartbeat_loop(
    bus: Bus,
    name: str,
    interval_s: float,
    status: Callable[[], tuple[HealthStatus, str]] | None = None,
    *,
    ready: asyncio.Event | None = None,
) -> None:
    """``health.<name>`` every ``interval_s``, sent from the event loop (a blocked loop is
    a silent one). ``status`` gives (status, detail) when there is more to say than "ok".
    With ``ready``, the first beat waits for it: a service's first heartbeat means "in
    service" (its bus subscriptions work), not "process up"."""
    if ready is not None:
        await ready.wait()
    started = time.monotonic()
    pid = os.getpid()
    while True:
        state, detail = status() if status is not None else ("ok", "")
        bus.publish(
            f"health.{name}",
            Heartbeat(
                service=name,
                pid=pid,
                status=state,
                detail=detail,
                uptime_s=time.monotonic() - started,
            ),
        )
        await asyncio.sleep(interval_s)


async def _wait_shutdown(bus: Bus) -> str:
    async for delivery in bus:
        if isinstance(delivery.msg, Shutdown):
            return delivery.msg.reason or "control.shutdown"
    return "bus closed"


def _ignore() -> None:
    """A signal's callback that does nothing."""


def _stack(task: asyncio.Task[Any]) -> str:
    out = io.StringIO()
    task.print_stack(file=out)
    return out.getvalue()


async def serve(name: str, settings: Settings, main: ServiceMain | None = None) -> int:
    """Run service ``name`` until it ends, fails, or is told to stop. Returns an exit code."""
    main = main or load_service(name)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: dump stacks
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stop_reason: list[str] = []

    def on_signal(signum: int) -> None:
        stop_reason.append(signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    control = Bus(settings.bus, f"{name}.runtime")
    control.declare(RUNTIME_TOPICS)
    bus = ServiceBus(settings.bus, name)
    # The service starts while the control bus connects (both wait for their probes).
    service: asyncio.Task[None] = asyncio.create_task(main(settings, bus), name=f"service-{name}")
    try:
        await control.start()
    except BaseException:
        service.cancel()
        await asyncio.wait({service}, timeout=settings.supervisor.stop_timeout_s)
        if service.done() and not service.cancelled():
            service.exception()  # retrieved: the control bus's error is the one to report
        await bus.close()
        raise
    beats = asyncio.create_task(
        heartbeat_loop(control, name, settings.supervisor.heartbeat_interval_s, ready=bus.ready),
        name="heartbeat",
    )
    interval = settings.supervisor.heartbeat_interval_s * 5
    counters = asyncio.create_task(bus_metrics_loop(control, name, bus, interval), name="bus-stats")
    shutdown = asyncio.create_task(_wait_shutdown(control), name="shutdown-listener")
    stopper = asyncio.create_task(stop.wait(), name="signal-wait")
    log.info("= %s started (pid %d)", name, os.getpid())
    code = 0
    try:
        done, _ = await asyncio.wait(
            {service, shutdown, stopper}, return_when=asyncio.FIRST_COMPLETED
        )
        if service in done:
            exc = service.exception()
            if isinstance(exc, ConfigError):  # one line, and exit 2: restarting cannot help
                log.error("%s: configuration error: %s", name, exc)
                code = 2
            elif exc is not None:
                log.error("%s failed", name, exc_info=exc)
                code = 1
            else:
                log.info("= %s finished", name)
        else:
            reason = shutdown.result() if shutdown in done else ", ".join(stop_reason)
            log.info("= %s stopping (%s)", name, reason)
    finally:
        tasks: tuple[asyncio.Task[Any], ...] = (service, beats, counters, shutdown, stopper)
        for task in tasks:
            task.cancel()
        budget = settings.supervisor.stop_timeout_s * 0.75
        _, pending = await asyncio.wait(tasks, timeout=budget / 2)
        if pending:
            # Library code can swallow a cancellation (aioice did: see agent.aio) and a task
            # then waits on as if never told. Say where each one is, and tell it once more.
            for task in pending:
                log.warning(
                    "%s: %s still running %.1f s after its cancel; cancelling again:\n%s",
                    name, task.get_name(), budget / 2, _stack(task),
                )  # fmt: skip
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=budget / 2)
        if service.done() and not service.cancelled() and code == 0:
            exc = service.exception()
            if exc is not None:
                log.error("%s failed while stopping", name, exc_info=exc)
                code = 1
        await bus.close()
        await control.close()
        # Stopping already: one more SIGTERM (a supervisor and systemd may both send one, or a
        # control.shutdown and a signal cross) must not turn this clean exit into "killed".
        # Swapping the callback never passes through the default action (removing the
        # handler would); the caller ignores SIGTERM once the loop is closed.
        loop.add_signal_handler(signal.SIGTERM, _ignore)
        loop.remove_signal_handler(signal.SIGINT)
        if pending:
            # A task that ignores cancellation would hang asyncio.run() too: say where it is
            # stuck, then leave at once so the supervisor's stop stays bounded.
            for task in pending:
                log.error(
                    "%s: %s did not stop within %.1f s:\n%s",
                    name, task.get_name(), budget, _stack(task),
                )  # fmt: skip
            faulthandler.dump_traceback(all_threads=True)  # threads too, on stderr
            logging.shutdown()
            os._exit(1)
    log.info("= %s stopped (exit %d)", name, code)
    return code
