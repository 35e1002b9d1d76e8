"""The face start trigger end to end: the camera service with a file camera (a real
photograph of a face: scikit-image's astronaut, or an empty scene), the session service
on the real bus, the emulator as NavTalk over loopback; checked at the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np
import pytest

from agent import topics
from agent.bus import Bus
from agent.config import BusSettings, Settings
from agent.emulator.script import Script
from agent.emulator.server import Emulator
from agent.messages import FaceEvent, SessionControl, SessionState
from agent.navtalk.settings import EmulatorSettings
from agent.video.settings import CameraSettings
from hardware.camera import Camera, Image
from services import camera as camera_service
from services import session as session_service
from tests.conftest import running_service
from tests.test_session_e2e import FIXTURES, LICENSE, TIMEOUT, Recorder, make_settings
from tests.test_session_e2e import rec as _rec

skimage_data = pytest.importorskip("skimage.data")

pytestmark = pytest.mark.e2e

ABSENCE_S = 3.0  # an empty scene: no session within this long
WRAPUP = "The visit is over: say a short, polite goodbye to the guest."
GOODBYE = "Thank you for visiting. Goodbye!"


@pytest.fixture
async def emulator() -> Any:
    emu = Emulator(
        EmulatorSettings(port=0, pace=4.0), script=Script.load(FIXTURES / "visit_script.toml")
    )
    await emu.start()
    yield emu
    await emu.close()


rec = _rec  # the fixture: every bus message, and no license in any of them nor in the log


def picture(face: bool) -> Image:
    if face:
        return np.asarray(cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR), np.uint8)
    return np.full((512, 512, 3), 140, dtype=np.uint8)  # an empty wall


class SceneCamera(Camera):
    """A camera in front of which the test puts a guest or nobody (a file camera whose
    picture can change)."""

    def __init__(self, face: bool) -> None:
        self.frame = picture(face)
        self.reads = 0
        self._read = threading.Condition()

    def show(self, face: bool) -> None:
        self.frame = picture(face)

    def read(self) -> Image:  # the camera service's worker thread
        with self._read:
            self.reads += 1
            self._read.notify_all()
        return self.frame.copy()

    async def looked(self, frames: int) -> None:
        """Wait until the camera service has read ``frames`` more frames."""
        with self._read:
            target = self.reads + frames

        def wait() -> bool:
            with self._read:
                return self._read.wait_for(lambda: self.reads >= target, TIMEOUT)

        assert await asyncio.to_thread(wait), f"the camera read {self.reads} of {target} frames"

    def close(self) -> None:
        pass


def scene(tmp: Path, face: bool) -> Path:
    image = picture(face)
    path = tmp / ("astronaut.png" if face else "wall.png")
    assert cv2.imwrite(str(path), image)
    return path


def kiosk(bus: BusSettings, emu: Emulator, tmp: Path, image: Path, **session: Any) -> Settings:
    session = {"start_triggers": ("face", "button"), **session}
    s = make_settings(bus, emu, tmp, catalog_wait_ms=0, declare_tools=False, **session)
    cam = CameraSettings(
        enabled=True, backend="image", path=str(image), min_face_px=60, frames_needed=2,
        rate_hz=10.0,
    )  # fmt: skip
    return msgspec.structs.replace(s, camera=cam)


@contextlib.asynccontextmanager
async def running(settings: Settings, camera: Camera | None = None) -> Any:
    async with (
        running_service("session", session_service.run, settings, license=LICENSE),
        running_service("camera", camera_service.run, settings, camera=camera),
    ):
        yield


def visit_is(phase: str) -> Any:
    return lambda d: isinstance(d.msg, SessionState) and d.msg.visit == phase


async def test_a_face_opens_a_session(
    emulator: Emulator, bus_settings: BusSettings, tmp_path: Path, rec: Recorder
) -> None:
    async with running(kiosk(bus_settings, emulator, tmp_path, scene(tmp_path, face=True))):
        seen = await rec.wait_for(lambda d: isinstance(d.msg, FaceEvent))
        assert isinstance(seen.msg, FaceEvent) and seen.msg.seen
        assert 80 <= seen.msg.width_px <= 130 and seen.msg.faces == 1
        opened = await emulator.wait_sessions(1, TIMEOUT)
        assert opened.index == 1
        took_s = opened.opened_mono - seen.msg.at_mono_ns / 1e9  # the face decided -> socket
        assert 0 < took_s < 2.0, f"the session opened {took_s:.2f} s after the face was seen"
        starting = await rec.wait_for(visit_is("starting"))
        assert isinstance(starting.msg, SessionState)
        assert starting.msg.visit_detail == "visit 1 (face)"
        await rec.wait_for(visit_is("engaged"))
        # the camera pauses during the visit: no second session, no "lost" while engaged
        assert len(emulator.sessions) == 1


async def test_an_empty_scene_opens_nothing(
    emulator: Emulator, bus_settings: BusSettings, tmp_path: Path, rec: Recorder
) -> None:
    async with running(kiosk(bus_settings, emulator, tmp_path, scene(tmp_path, face=False))):
        await rec.wait_for(visit_is("idle"))
        with pytest.raises(TimeoutError):  # an absence: a bounded wait for what must not come
            await emulator.wait_sessions(1, ABSENCE_S)
        assert emulator.sessions == []
        assert not [d for d in rec.seen if isinstance(d.msg, FaceEvent)]
        assert not [d for d in rec.seen if visit_is("starting")(d)]


async def test_the_guest_leaving_ends_the_visit_with_a_goodbye(
    emulator: Emulator, bus_settings: BusSettings, tmp_path: Path, rec: Recorder
) -> None:
    settings = kiosk(
        bus_settings, emulator, tmp_path, scene(tmp_path, face=True),
        face_gone_s=0.5, wrapup_text=WRAPUP,
    )  # fmt: skip
    cam = SceneCamera(face=True)
    async with running(settings, cam):
        s = await emulator.wait_sessions(1, TIMEOUT)
        await rec.wait_for(visit_is("engaged"))
        mark = len(rec.seen)
        cam.show(face=False)  # the guest walks away
        lost = await rec.wait_for(lambda d: isinstance(d.msg, FaceEvent), after=mark)
        assert isinstance(lost.msg, FaceEvent) and not lost.msg.seen
        await asyncio.wait_for(s.closed.wait(), TIMEOUT)
        assert s.stats.history == [WRAPUP]  # the wrap-up was asked for...
        assert s.stats.replies == [GOODBYE]  # ...and said before the close
        closing = await rec.wait_for(visit_is("closing"), after=mark)
        assert (
            isinstance(closing.msg, SessionState) and closing.msg.visit_detail == "the guest left"
        )
        await rec.wait_for(visit_is("idle"), after=rec.seen.index(closing))
        assert len(emulator.sessions) == 1


async def test_the_guest_who_stays_does_not_reopen_the_next_guest_does(
    emulator: Emulator, bus_settings: BusSettings, make_bus: Any, tmp_path: Path, rec: Recorder
) -> None:
    settings = kiosk(bus_settings, emulator, tmp_path, scene(tmp_path, face=True))
    cam = SceneCamera(face=True)
    button = await make_bus("gpio")
    async with running(settings, cam):
        a = await emulator.wait_sessions(1, TIMEOUT)
        await rec.wait_for(visit_is("engaged"))
        button.publish(topics.CONTROL_SESSION, SessionControl(action="end", reason="goodbye"))
        await asyncio.wait_for(a.closed.wait(), TIMEOUT)
        await rec.wait_for(visit_is("idle"), after=len(rec.seen) - 1)
        await cam.looked(5)  # the camera looks again (idle), at the guest who stays
        with pytest.raises(TimeoutError):  # an absence: a bounded wait (1 s)
            await emulator.wait_sessions(2, 1.0)
        cam.show(face=False)  # she leaves (frames_needed = 2 empty frames) ...
        await cam.looked(3)
        assert len(emulator.sessions) == 1
        cam.show(face=True)  # ... and the next guest comes
        b = await emulator.wait_sessions(2, TIMEOUT)
        assert a.closed_mono is not None and a.closed_mono < b.opened_mono


async def test_camera_without_a_backend_is_a_config_error(bus_settings: BusSettings) -> None:
    from agent.config import default_settings
    from agent.errors import ConfigError

    s = msgspec.structs.replace(
        default_settings(), bus=bus_settings, camera=CameraSettings(enabled=True)
    )
    bus = Bus(bus_settings, "camera")
    try:
        with pytest.raises(ConfigError):
            await camera_service.run(s, bus)
    finally:
        await bus.close()
