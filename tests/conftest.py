"""Shared fixtures: a real bus proxy on ipc:// in a short temp dir, and bus clients."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from agent.bus import Bus, Proxy
from agent.config import BusSettings, ControlPlane, MediaPlane, Settings
from tests.audio_fixtures import *  # noqa: F403  (virtual audio env before sounddevice loads)
from tests.device_guard import (  # noqa: F401  (hooks: a device test may not skip on CI)
    pytest_collection_modifyitems,
    pytest_runtest_makereport,
)

MakeBus = Callable[..., Awaitable[Bus]]


def ipc_bus_settings(directory: str, *, media_hwm: int = 100) -> BusSettings:
    return BusSettings(
        control=ControlPlane(
            publish=f"ipc://{directory}/c-in", subscribe=f"ipc://{directory}/c-out", hwm=100_000
        ),
        media=MediaPlane(
            publish=f"ipc://{directory}/m-in", subscribe=f"ipc://{directory}/m-out", hwm=media_hwm
        ),
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir (ipc:// paths must stay under ~100 characters)."""
    d = tempfile.mkdtemp(prefix="nt-")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def bus_settings(short_tmp: Path) -> Iterator[BusSettings]:
    settings = ipc_bus_settings(str(short_tmp))
    with Proxy(settings):
        yield settings


@pytest.fixture
async def make_bus(bus_settings: BusSettings) -> AsyncIterator[MakeBus]:
    made: list[Bus] = []

    async def factory(sender: str, *topics: str, **kwargs: int) -> Bus:
        bus = Bus(bus_settings, sender, **kwargs)
        if topics:
            bus.subscribe(*topics)
        await bus.start()
        made.append(bus)
        return bus

    yield factory
    for bus in made:
        await bus.close()


@contextlib.asynccontextmanager
async def running_service(
    name: str, main: Callable[..., Awaitable[None]], settings: Settings, **kwargs: object
) -> AsyncIterator[asyncio.Task[None]]:
    """Run a service's ``run(settings, bus, **kwargs)`` in this event loop on its own bus
    client named ``name``; cancel it and close the bus on the way out."""
    bus = Bus(settings.bus, name)
    task = asyncio.create_task(main(settings, bus, **kwargs))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bus.close()
