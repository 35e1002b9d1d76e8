"""The session's first connect to the embedded emulator waits until the emulator listens.

The supervisor starts the emulator and the session together; the emulator's port opens a
moment later. Connecting before that was refused and counted as a failure (a warning, a
CLOSED state and a backoff delay on every cold start). :func:`wait_listening` polls the port
with plain TCP connects (closed at once, no WebSocket handshake, so the emulator sees no
session) until one is accepted or ``timeout_s`` passes; the real connect follows either way,
so an emulator that never comes up still fails the ordinary way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from agent.navtalk.settings import EmulatorSettings

__all__ = ["EMBEDDED_WAIT_S", "POLL_S", "embedded_host", "wait_listening"]

log = logging.getLogger(__name__)

EMBEDDED_WAIT_S = 20.0  # the emulator's start under load (imports) stays well below this
POLL_S = 0.02


def embedded_host(emu: EmulatorSettings) -> str:
    """Where the session reaches the embedded emulator (as services.session.effective_url)."""
    return "127.0.0.1" if emu.host in ("0.0.0.0", "") else emu.host


async def wait_listening(
    host: str, port: int, *, timeout_s: float = EMBEDDED_WAIT_S, poll_s: float = POLL_S
) -> bool:
    """True once ``host:port`` accepts a TCP connection; False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    tries = 0
    while True:
        tries += 1
        try:
            async with asyncio.timeout(max(poll_s, deadline - time.monotonic())):
                _reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            if time.monotonic() >= deadline:
                log.info("= embedded emulator at %s:%d not listening after %.1f s", host, port,
                         timeout_s)  # fmt: skip
                return False
            await asyncio.sleep(poll_s)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        log.info("= embedded emulator at %s:%d listening (%d probe(s))", host, port, tries)
        return True
