"""The camera service: is a guest in front of the kiosk? (``vision.face``)

::

    session.state (visit) ──▶ looking? ──▶ camera.read() ─▶ FaceDetector ─▶ FacePresence
                                              (worker thread, rate_hz)          │ on change
                                                                  vision.face (FaceEvent, latched)

It looks only while the visit is idle (a session that has not said yet counts as
idle), unless ``session.face_gone_s`` ends visits on a lost face: then it looks during
visits too. While it does not look, the camera device is closed, free for the
``take_photo`` tool. After a visit it wants an empty scene before the next "seen": the
guest who just said goodbye and still stands there does not open another visit.

The decisions are in :mod:`agent.video.face` (no I/O); this module reads frames at
``camera.rate_hz`` on a worker thread and publishes the changes, latched (depth 1) so a
session that (re)starts learns whether a face is there now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from agent import topics
from agent.bus import Bus
from agent.config import Settings
from agent.errors import ConfigError, DeviceError
from agent.messages import FaceEvent, SessionState
from agent.video.face import Change, FaceDetector, FacePresence
from hardware.camera import Camera, open_camera

__all__ = ["TOPICS", "run"]

log = logging.getLogger(__name__)

REOPEN_S = 2.0  # a camera that cannot open (or stops giving frames) is tried again after this
IDLE_VISITS = frozenset({"", "idle"})


class _Camera:
    """The camera's state, shared by the look loop and the message loop."""

    def __init__(self, settings: Settings, camera: Camera | None) -> None:
        self.cfg = settings.camera
        self.always = "face" in settings.session.start_triggers and settings.session.face_gone_s > 0
        self.detector = FaceDetector(self.cfg.min_face_px)
        self.presence = FacePresence(self.cfg.frames_needed)
        self.injected = camera
        self.camera: Camera | None = None
        self.looking = True
        self.changed = asyncio.Event()
        self.frames = 0
        self.errors = 0

    def on_visit(self, visit: str) -> None:
        looking = self.always or visit in IDLE_VISITS
        if looking == self.looking:
            return
        self.looking = looking
        log.info("= camera %s (visit %s)", "looking" if looking else "paused", visit or "-")
        if not looking:  # the next "seen" wants an empty scene first (the guest leaving)
            self.presence.reset(require_absence=True)
        self.changed.set()

    def _look(self) -> list[int]:  # worker thread
        cam = self.camera
        assert cam is not None
        return self.detector.detect(cam.read())

    async def _open(self) -> Camera:
        if self.injected is not None:
            return self.injected
        return await asyncio.to_thread(open_camera, self.cfg)

    async def _close(self) -> None:
        cam, self.camera = self.camera, None
        if cam is not None and cam is not self.injected:
            await asyncio.to_thread(cam.close)

    async def _pause(self, seconds: float | None) -> None:
        """Wait for a change of ``looking`` (or ``seconds``)."""
        self.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), seconds)

    async def look_loop(self, bus: Bus) -> None:
        period = 1.0 / self.cfg.rate_hz
        try:
            while True:
                if not self.looking:
                    await self._close()
                    bus.unlatch(topics.VISION_FACE)
                    await self._pause(None)
                    continue
                if self.camera is None:
                    try:
                        self.camera = await self._open()
                    except DeviceError as exc:
                        self.errors += 1
                        log.warning("= camera: %s (again in %.0f s)", exc, REOPEN_S)
                        await self._pause(REOPEN_S)
                        continue
                started = time.monotonic()
                try:
                    widths = await asyncio.to_thread(self._look)
                except DeviceError as exc:
                    self.errors += 1
                    log.warning("= camera: %s (reopening in %.0f s)", exc, REOPEN_S)
                    await self._close()
                    await self._pause(REOPEN_S)
                    continue
                self.frames += 1
                now = time.monotonic()
                change = self.presence.feed(widths, now) if self.looking else None
                if change is not None:
                    _publish(bus, change)
                await asyncio.sleep(max(0.0, period - (now - started)))  # the frame rate
        finally:
            await self._close()
            log.info("= camera down: %d frame(s) looked at, %d error(s)", self.frames, self.errors)


def _publish(bus: Bus, change: Change) -> None:
    seen = "seen" if change.seen else "lost"
    log.info("> vision.face %s (%d px, %d face(s))", seen, change.width_px, change.faces)
    event = FaceEvent(
        seen=change.seen,
        width_px=change.width_px,
        faces=change.faces,
        at_mono_ns=round(change.now * 1e9),
    )
    bus.publish(topics.VISION_FACE, event, latch=1)


async def run(settings: Settings, bus: Bus, *, camera: Camera | None = None) -> None:
    """Look for faces until cancelled. ``camera`` is opened from ``settings.camera`` when
    not given (an injected one is used as is and not closed here)."""
    if camera is None and settings.camera.backend == "null":
        raise ConfigError("camera.enabled = true needs camera.backend 'opencv' or 'image'")
    bus.declare(TOPICS)
    await bus.start()
    state = _Camera(settings, camera)
    log.info("= camera up: %s, faces >= %d px in %d frame(s), %.1f Hz, %s",
             settings.camera.backend, settings.camera.min_face_px, settings.camera.frames_needed,
             settings.camera.rate_hz, "always" if state.always else "while idle")  # fmt: skip
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(state.look_loop(bus))
        while True:
            d = await bus.recv()
            if isinstance(d.msg, SessionState):
                state.on_visit(d.msg.visit)


TOPICS = topics.ServiceTopics(reads=(topics.SESSION_STATE,), writes=(topics.VISION_FACE,))
