"""The display service's idle screen on a real bus: session.state's visit and the configured
start triggers reach the screen as the composer draws them."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import msgspec
import numpy as np

from agent import topics
from agent.bus import Bus
from agent.config import BusSettings
from agent.messages import SessionPhase, SessionState
from agent.video.compose import Badge, Composer, Image, Overlay, Scene
from hardware.screen import NullScreen
from services import display
from tests.conftest import MakeBus
from tests.test_display import settings_for

TIMEOUT = 20.0


class WatchingScreen(NullScreen):
    """Counts frames, and says when the frame it waits for was shown (from the screen
    worker's thread)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._want: Image | None = None
        self.seen = threading.Event()

    def expect(self, frame: Image) -> None:
        with self._lock:
            self._want, self.seen = frame, threading.Event()

    def show(self, frame: Image, at_s: float) -> None:
        super().show(frame, at_s)
        with self._lock:
            if self._want is not None and np.array_equal(frame, self._want):
                self.seen.set()


def idle(title: str, hint: str) -> Image:
    overlay = Overlay(Scene.IDLE, Badge.CONNECTING, idle_title=title, idle_hint=hint)
    return Composer(512, 512).compose(None, overlay).copy()


async def test_the_idle_screen_shows_the_visit_and_how_to_start(
    bus_settings: BusSettings, make_bus: MakeBus
) -> None:
    settings = settings_for(bus_settings)
    settings = msgspec.structs.replace(
        settings,
        session=msgspec.structs.replace(settings.session, start_triggers=("voice", "button")),
    )
    session = await make_bus("session")
    screen = WatchingScreen()
    bus = Bus(bus_settings, "display")
    task = asyncio.create_task(display.run(settings, bus, screen=screen))
    try:
        for visit, detail, title, hint in [
            ("idle", "ready", "Ready", "Say hello or press the button"),
            ("starting", "visit 1 (voice)", "Connecting...", "One moment, please"),
            ("idle", "budget spent", "Closed for today", "The session time is used up"),
        ]:
            screen.expect(idle(title, hint))
            state = SessionState(phase=SessionPhase.IDLE, visit=visit, visit_detail=detail)
            async with asyncio.timeout(TIMEOUT):
                while not screen.seen.is_set():  # published until shown (as the session does)
                    session.publish(topics.SESSION_STATE, state)
                    await asyncio.to_thread(screen.seen.wait, 0.2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bus.close()
