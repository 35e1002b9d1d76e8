"""Small asyncio helpers that the standard library does not have."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["ThreadWakeup", "run_to_end"]

log = logging.getLogger(__name__)

T = TypeVar("T")


async def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` to its end even if the caller is cancelled meanwhile, then let the
    cancellation through.

    For closes that must not stop half-way, and above all for library code that
    swallows a cancellation: aioice's ``Connection.close()`` (under every aiortc
    ``RTCPeerConnection.close()``) cancels its consent task, awaits it and catches the
    ``CancelledError``. A caller cancelled at that moment is never told, carries on as
    if nothing happened, and a service stopping on SIGTERM sat out its whole stop
    budget. Here the close runs as its own task, so the caller's cancellation is
    delivered to the caller, after the close has finished.
    """
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            # asyncio.wait: wait for the end without taking the task's own error here (a
            # second cancellation of the caller leaves it running in the background).
            await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            log.warning("%r failed while its caller was cancelled", coro, exc_info=task.exception())
        raise


class ThreadWakeup:
    """Set an :class:`asyncio.Event` from any thread (a device callback every few ms) with at
    most one ``call_soon_threadsafe`` pending, so the loop is never flooded."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.event = asyncio.Event()
        self._pending = False

    def wake(self) -> None:  # any thread
        if not self._pending:
            self._pending = True
            with contextlib.suppress(RuntimeError):  # the loop is closed: shutting down
                self._loop.call_soon_threadsafe(self._set)

    def _set(self) -> None:
        self._pending = False  # before set(): a wake() racing with us schedules again
        self.event.set()
