"""The real OpenCV window under X (Xvfb): a screenshot must show the avatar.

The window runs in a child process: OpenCV's Qt backend aborts the process it
lives in when the X connection is missing or breaks, and that must never be
pytest. When ``DISPLAY`` is unset, the fixture starts its own Xvfb (on a free
display number it reports through ``-displayfd``) and openbox (fullscreen needs
a window manager). The screenshot is checked by pixel statistics (skin, mouth,
position), not against a golden image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.config import BusSettings, bus_toml
from agent.emulator.avatar import measure_mouth_open
from agent.errors import DeviceError
from hardware.screen import WindowScreen, check_x_display

pytestmark = pytest.mark.display

ROOT = Path(__file__).resolve().parents[1]
SCREEN_W, SCREEN_H = 1280, 720
SKIN = np.array((150, 185, 230))  # the avatar's skin colour (BGR), see agent/emulator/avatar.py


@pytest.fixture(scope="module")
def x_display() -> Iterator[str]:
    """$DISPLAY if set, else a private Xvfb 1280x720 with openbox."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb openbox) and DISPLAY is unset")
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{SCREEN_W}x{SCREEN_H}x24",
         "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(write_fd)
    wm: subprocess.Popen[bytes] | None = None
    try:
        with os.fdopen(read_fd) as ready:  # Xvfb writes its display number once it accepts
            number = ready.readline().strip()
        assert number, "Xvfb did not start"
        display = f":{number}"
        if shutil.which("openbox"):
            wm = subprocess.Popen(
                ["openbox"], env={**os.environ, "DISPLAY": display},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        yield display
    finally:
        for proc in (wm, xvfb):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)


CHILD = textwrap.dedent(
    """
    import json, sys, time
    import cv2, mss, numpy as np
    from hardware.screen import WindowScreen
    from agent.emulator.avatar import AvatarPainter
    from agent.video.compose import Badge, Composer, Overlay, Scene

    fullscreen, shot_path = sys.argv[1] == "1", sys.argv[4]
    width, height = int(sys.argv[2]), int(sys.argv[3])
    screen = WindowScreen("navtalk-test", width, height, fullscreen=fullscreen)
    screen.open()
    frame = Composer(width, height).compose(
        AvatarPainter(512, 512).paint(1.0), Overlay(Scene.LIVE, Badge.SPEAKING, "hi", "Welcome")
    )
    skin = np.array((150, 185, 230))
    deadline = time.monotonic() + 15
    with (mss.MSS() if hasattr(mss, "MSS") else mss.mss()) as grabber:
        while True:  # show and pump until the window is mapped and painted (or give up)
            screen.show(frame, time.monotonic())
            for _ in range(5):
                cv2.waitKey(20)
            shot = np.array(grabber.grab(grabber.monitors[1]))[:, :, :3]
            rect = screen.image_rect()
            painted = np.mean(np.all(np.abs(shot.astype(int) - skin) <= 6, axis=2))
            settled = not fullscreen or rect[2:] == (shot.shape[1], shot.shape[0])
            if (painted > 0.02 and settled) or time.monotonic() > deadline:
                break
    cv2.imwrite(shot_path, shot)
    print(json.dumps({"rect": list(rect), "shown": screen.frames_shown}))
    screen.close()
    """
)


def run_window(display: str, tmp_path: Path, *, fullscreen: bool, w: int, h: int) -> dict[str, Any]:
    shot = tmp_path / f"shot-{int(fullscreen)}.png"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "1" if fullscreen else "0", str(w), str(h), str(shot)],
        env={**os.environ, "DISPLAY": display, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    info: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    image = cv2.imread(str(shot))
    assert image is not None
    info["shot"] = image
    return info


def skin_mask(image: np.ndarray) -> np.ndarray:
    return np.all(np.abs(image.astype(int) - SKIN) <= 6, axis=2)


def test_window_shows_the_avatar(x_display: str, tmp_path: Path) -> None:
    info = run_window(x_display, tmp_path, fullscreen=False, w=640, h=480)
    x, y, w, h = info["rect"]
    assert (w, h) == (640, 480), info["rect"]  # GUI_NORMAL: no toolbar eating the image area
    shot = info["shot"]
    inside = shot[y : y + h, x : x + w]
    outside_skin = skin_mask(shot).sum() - skin_mask(inside).sum()
    assert outside_skin == 0  # the face is inside the window
    frac = skin_mask(inside).mean()
    assert 0.08 < frac < 0.35, frac  # a face fills a good part of the window
    ys, xs = np.nonzero(skin_mask(inside))
    assert abs(xs.mean() - w / 2) < w * 0.05  # centred: aspect kept, letterboxed sideways
    # The 512x512 avatar letterboxed into 640x480: the square is 480 high, at x = 80.
    assert measure_mouth_open(inside[:, 80:560]) > 0.6  # the open mouth is visible


def test_fullscreen_kiosk_fills_the_monitor(x_display: str, tmp_path: Path) -> None:
    info = run_window(x_display, tmp_path, fullscreen=True, w=720, h=720)
    shot = info["shot"]
    sh, sw = shot.shape[:2]
    assert info["rect"][2:] == [sw, sh], info["rect"]
    mask = skin_mask(shot)
    assert 0.05 < mask.mean() < 0.35
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - sw / 2) < sw * 0.03 and abs(ys.mean() - sh / 2) < sh * 0.15
    square = shot[:, (sw - sh) // 2 : (sw + sh) // 2]  # the 720x720 canvas, scaled to sh
    assert measure_mouth_open(square) > 0.6


def test_no_display_is_a_device_error_not_an_abort(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(DeviceError, match="DISPLAY is not set"):
        WindowScreen().open()
    with pytest.raises(DeviceError, match="does not answer"):
        check_x_display(":987")


DISPLAY_CHILD = textwrap.dedent(
    """
    import cv2  # before PyAV, as services.display does
    import asyncio, json, sys, threading, time
    import msgspec
    from agent.bus import Bus
    from agent.config import load
    from agent.video.settings import DisplaySettings
    from hardware.screen import WindowScreen
    from services import display

    settings = load(sys.argv[1])
    settings = msgspec.structs.replace(
        settings, display=DisplaySettings(backend="window", width=320, height=240, idle_fps=20)
    )
    screen = WindowScreen("navtalk-thread-test", 320, 240)

    async def main():
        bus = Bus(settings.bus, "display")
        task = asyncio.create_task(display.run(settings, bus, screen=screen))
        loop = asyncio.get_running_loop()
        start = loop.time()
        while screen.frames_shown < 30 and loop.time() - start < 30 and not task.done():
            await asyncio.sleep(0.05)  # polling a counter of another thread
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bus.close()

    asyncio.run(main())
    print(json.dumps({"shown": screen.frames_shown, "gui_thread": screen.gui_thread,
                      "main": threading.main_thread().name}))
    """
)


def test_the_display_drives_the_window_off_its_event_loop(
    x_display: str, tmp_path: Path, bus_settings: BusSettings
) -> None:
    """The display service opens, feeds and closes the OpenCV window on its screen worker
    thread, never on the main thread that runs the event loop; Qt does not hang."""
    config = tmp_path / "agent.toml"
    config.write_text(
        bus_toml(bus_settings) + '\n[navtalk]\nurl = "ws://127.0.0.1:9/wss/v2/realtime-chat"\n'
    )
    out = subprocess.run(
        [sys.executable, "-c", DISPLAY_CHILD, str(config)],
        env={**os.environ, "DISPLAY": x_display, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=90, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["shown"] >= 30
    assert info["gui_thread"].startswith("screen") and info["gui_thread"] != info["main"]
