"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``) with the stdlib only.

::

    systemd ──NOTIFY_SOCKET, WATCHDOG_USEC──▶ navtalk-agent run (the supervisor)
        ◀── "READY=1\\nSTATUS=5 services up"    once every enabled service sent a heartbeat
        ◀── "WATCHDOG=1"                        every WatchdogSec/2, from the event loop
        ◀── "STOPPING=1"                        when it starts to stop

A datagram of ``KEY=VALUE`` lines to the unix socket named by ``$NOTIFY_SOCKET``
(``@name`` is an abstract socket), as in sd_notify(3); no libsystemd, no python-systemd.
Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op. A failed send is logged
once and never stops the agent: systemd's own timeouts then say what happened.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

__all__ = ["Notifier", "watchdog_interval_s"]


def watchdog_interval_s(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """How often to send WATCHDOG=1 (half of ``WATCHDOG_USEC``), or None when systemd asked
    for no watchdog or asked another process (``WATCHDOG_PID``) for it (sd_watchdog_enabled)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    wanted_pid = env.get("WATCHDOG_PID", "")
    if wanted_pid and wanted_pid != str(os.getpid() if pid is None else pid):
        return None
    return usec / 1e6 / 2


class Notifier:
    """Sends notify messages to systemd, when it listens."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@"):
            self.address = "\0" + path[1:]
        elif path.startswith("/"):
            self.address = path
        self.watchdog_s = watchdog_interval_s(env) if self.address else None
        self.ready_sent = False
        self.sent = 0
        self.failures = 0
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; False when nobody listens or it failed."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), exc)
            return False
        self.sent += 1
        return True

    def up(self, all_up: bool, count: int) -> None:
        """Say READY=1 the first time every enabled service is up (later calls do nothing)."""
        if self.ready_sent or not all_up or self.address is None:
            return
        self.ready_sent = True
        log.info("= systemd: ready (%d services up)", count)
        self.notify("READY=1", f"STATUS={count} services up")

    def stopping(self, reason: str) -> None:
        self.notify("STOPPING=1", f"STATUS=stopping: {reason}"[:200])

    async def watchdog_loop(self) -> None:
        """WATCHDOG=1 every WatchdogSec/2 while the event loop runs (a hung loop is silent,
        and systemd restarts the unit). Returns at once when systemd wants no watchdog."""
        if self.watchdog_s is None:
            return
        log.info("= systemd watchdog: pinging every %.1f s", self.watchdog_s)
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
