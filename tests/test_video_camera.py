"""Camera backends: an image file, an OpenCV capture on a video file, none."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.errors import DeviceError
from agent.video.settings import CameraSettings
from hardware.camera import encode_jpeg, open_camera
from hardware.screen import FileScreen


def test_image_camera_reads_the_file(tmp_path: Path) -> None:
    img = np.zeros((300, 400, 3), np.uint8)
    img[:, :200] = (0, 0, 255)
    cv2.imwrite(str(tmp_path / "desk.png"), img)
    with open_camera(CameraSettings(backend="image", path=str(tmp_path / "desk.png"))) as cam:
        frame = cam.read()
    assert frame.shape == (300, 400, 3) and (frame[10, 10] == (0, 0, 255)).all()
    jpeg = encode_jpeg(frame, quality=60, width=200)
    back = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert jpeg[:2] == b"\xff\xd8" and back.shape == (150, 200, 3)


def test_opencv_camera_on_a_video_file(tmp_path: Path) -> None:
    screen = FileScreen(tmp_path / "cam.mp4", 25, audio=False)
    screen.open()
    for i in range(10):
        screen.show(np.full((240, 320, 3), 100, np.uint8), i / 25)
    screen.close()
    with open_camera(CameraSettings(backend="opencv", path=str(tmp_path / "cam.mp4"))) as cam:
        frame = cam.read()
    assert frame.shape == (240, 320, 3) and abs(float(frame.mean()) - 100) < 5


def test_missing_cameras_are_device_errors(tmp_path: Path) -> None:
    with pytest.raises(DeviceError):
        open_camera(CameraSettings(backend="image", path=str(tmp_path / "nope.png")))
    with pytest.raises(DeviceError):
        open_camera(CameraSettings(backend="opencv", path=str(tmp_path / "nope.mp4")))
    with pytest.raises(DeviceError):
        open_camera(CameraSettings(backend="null")).read()
