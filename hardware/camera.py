"""Cameras: an OpenCV capture (device index, video file or URL), a still image file, or none.

::

    camera = open_camera(settings.camera)    # DeviceError if it cannot open
    frame = camera.read()                    # BGR ndarray; DeviceError on failure
    jpeg = encode_jpeg(frame, quality=70, width=960)
    camera.close()

Calls block (a capture waits for the next frame): async callers run them in an
executor.
"""

from __future__ import annotations

import abc
import logging
import os
import threading

import cv2
import numpy as np
import numpy.typing as npt

from agent.errors import DeviceError
from agent.video.settings import CameraSettings

__all__ = ["Camera", "ImageCamera", "NullCamera", "OpenCVCamera", "encode_jpeg", "open_camera"]

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]


class Camera(abc.ABC):
    @abc.abstractmethod
    def read(self) -> Image:
        """The current frame (BGR). Raises DeviceError if there is none."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Camera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OpenCVCamera(Camera):
    """``cv2.VideoCapture`` on a device index, a video file or a stream URL."""

    def __init__(self, source: int | str) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._cap = cv2.VideoCapture(source)
        if not self._cap.isOpened():
            self._cap.release()
            raise DeviceError(f"cannot open camera {source!r}")
        log.info("= camera %r open", source)

    def read(self) -> Image:
        with self._lock:
            ok, frame = self._cap.read()
        if not ok or frame is None:
            raise DeviceError(f"camera {self.source!r} gave no frame")
        return np.asarray(frame, dtype=np.uint8)

    def close(self) -> None:
        with self._lock:
            self._cap.release()


class ImageCamera(Camera):
    """A still image file: every read returns (a copy of) it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        image = cv2.imread(self.path, cv2.IMREAD_COLOR)
        if image is None:
            raise DeviceError(f"cannot read image {self.path!r}")
        self._image: Image = np.asarray(image, dtype=np.uint8)

    def read(self) -> Image:
        return self._image.copy()

    def close(self) -> None:
        pass


class NullCamera(Camera):
    """No camera configured: every read fails with a clear DeviceError."""

    def read(self) -> Image:
        raise DeviceError("no camera configured (camera.backend = 'null')")

    def close(self) -> None:
        pass


def open_camera(settings: CameraSettings) -> Camera:
    """The camera the settings ask for, opened."""
    if settings.backend == "opencv":
        return OpenCVCamera(settings.path or settings.device)
    if settings.backend == "image":
        if not settings.path:
            raise DeviceError("camera.backend = 'image' needs camera.path")
        return ImageCamera(settings.path)
    return NullCamera()


def encode_jpeg(frame: Image, quality: int = 70, width: int = 0) -> bytes:
    """JPEG bytes of ``frame``, scaled down to ``width`` (aspect kept) when it is wider."""
    if width and frame.shape[1] > width:
        height = max(1, round(frame.shape[0] * width / frame.shape[1]))
        frame = np.asarray(
            cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA), dtype=np.uint8
        )
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DeviceError("JPEG encoding failed")
    return bytes(buf.tobytes())
