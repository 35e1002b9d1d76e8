"""Open a failed audio device again until it is back (PulseAudio restarted, a sink removed,
a USB device unplugged and plugged in), instead of letting the process die and the
supervisor restart it in a loop while the device is away.

::

    device failed ─▶ close ─▶ open ──ok──▶ back (logged once, with the outage's length)
                                │ DeviceError
                                └─ wait retry_s, every 4th attempt rescan PortAudio's devices
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from agent.errors import DeviceError

__all__ = ["RETRY_S", "reopen"]

log = logging.getLogger(__name__)

RETRY_S = 0.5  # between attempts: a device that is back is in use again within this
RESCAN_EVERY = 4  # attempts


async def reopen(
    what: str,
    open_device: Callable[[], Awaitable[None]],
    close_device: Callable[[], Awaitable[None]],
    *,
    retry_s: float = RETRY_S,
    rescan: Callable[[], None] | None = None,
) -> int:
    """Close the failed device, then open it until that works. Returns the attempts made.

    ``rescan``: refresh the device list now and then (PortAudio lists devices once), for a
    device that comes back under another index. Cancellable at any point.
    """
    started = time.monotonic()
    with contextlib.suppress(Exception):  # it failed already: closing may fail too
        await close_device()
    attempts = 0
    while True:
        attempts += 1
        try:
            await open_device()
        except DeviceError as exc:
            if attempts == 1:
                log.warning("= %s is gone (%s); trying again every %.1f s", what, exc, retry_s)
            if rescan is not None and attempts % RESCAN_EVERY == 0:
                try:
                    rescan()
                except Exception as rescan_exc:  # noqa: BLE001 - logged, then the next attempt
                    log.warning("= rescanning the devices failed: %s", rescan_exc)
            await asyncio.sleep(retry_s)  # a retry period, not a wait for an event
            continue
        log.info(
            "= %s is back after %.1f s (%d attempt%s)",
            what,
            time.monotonic() - started,
            attempts,
            "" if attempts == 1 else "s",
        )
        return attempts
