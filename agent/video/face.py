"""Is a guest in front of the kiosk? A face detector and the decision over frames.

::

    detector = FaceDetector(min_face_px=80)          # OpenCV's bundled Haar cascade
    presence = FacePresence(frames_needed=3)
    widths = detector.detect(frame)                  # widths of the faces >= min_face_px
    change = presence.feed(widths, now)              # Change(seen=...) or None

:class:`FaceDetector` runs OpenCV's frontal-face Haar cascade, shipped in the
opencv-python wheel (``cv2.data.haarcascades``): nothing is downloaded. A frame is
scaled down first (to ``max_width``, and so that the smallest wanted face is about
:data:`SEARCH_MIN_PX` wide): the cascade's cost grows with the pixels.

:class:`FacePresence` is the decision, without I/O or clock reads: a face of the minimum
size in ``frames_needed`` consecutive frames is "seen"; after that, no such face in
``frames_needed`` consecutive frames is "lost". How long a lost face may stay away before
the visit ends is the session policy's ``face_gone_s``, not decided here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from agent.errors import DeviceError

__all__ = ["CASCADE", "Change", "FaceDetector", "FacePresence"]

Image = npt.NDArray[np.uint8]

CASCADE = "haarcascade_frontalface_default.xml"
SEARCH_MIN_PX = 40  # the smallest wanted face is searched at about this size (the cascade: 24)


class FaceDetector:
    """Faces of at least ``min_face_px`` (width, in the frame's own pixels) in a BGR frame."""

    def __init__(self, min_face_px: int = 80, *, max_width: int = 640) -> None:
        path = os.path.join(cv2.data.haarcascades, CASCADE)  # type: ignore[attr-defined]
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise DeviceError(f"cannot load OpenCV's face cascade {path!r}")
        self.min_face_px = min_face_px
        self.max_width = max_width

    def detect(self, frame: Image) -> list[int]:
        """The widths (frame pixels) of the faces found, largest first."""
        if frame.ndim not in (2, 3) or frame.shape[0] < 16 or frame.shape[1] < 16:
            return []
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        # the cascade's cost grows with the pixels and the scales searched: look at a frame
        # no wider than max_width, where the smallest wanted face is about SEARCH_MIN_PX
        scale = min(1.0, self.max_width / gray.shape[1], SEARCH_MIN_PX / self.min_face_px)
        if scale < 1.0:
            size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        min_px = max(24, round(self.min_face_px * scale))
        boxes = self._cascade.detectMultiScale(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_px, min_px)
        )
        widths = [round(int(w) / scale) for (_x, _y, w, _h) in boxes]
        return sorted((w for w in widths if w >= self.min_face_px), reverse=True)


@dataclass(frozen=True, slots=True)
class Change:
    """The presence changed: ``seen`` now, on the frame of ``now`` with these faces."""

    seen: bool
    width_px: int
    faces: int
    now: float


class FacePresence:
    """Face seen / lost, with ``frames_needed`` consecutive frames of hysteresis both ways.

    ``feed(widths, now)`` takes one frame's face widths (already filtered to the minimum
    size) and returns a :class:`Change` when the decision flips, else None.
    ``reset(require_absence=True)`` (after a visit) forgets the state and wants an empty
    scene before the next "seen": the guest who just left the conversation but still
    stands there does not open the next visit.
    """

    def __init__(self, frames_needed: int = 3) -> None:
        if frames_needed < 1:
            raise ValueError("frames_needed must be >= 1")
        self.frames_needed = frames_needed
        self.seen = False
        self._run = 0  # consecutive frames disagreeing with the current decision
        self._armed = True
        self.frames = 0

    def reset(self, *, require_absence: bool = False) -> None:
        self.seen = False
        self._run = 0
        self._armed = not require_absence

    def feed(self, widths: list[int], now: float) -> Change | None:
        self.frames += 1
        face = bool(widths)
        if not self._armed:
            self._run = 0 if face else self._run + 1
            if self._run >= self.frames_needed:
                self._armed, self._run = True, 0
            return None
        if face == self.seen:
            self._run = 0
            return None
        self._run += 1
        if self._run < self.frames_needed:
            return None
        self.seen, self._run = face, 0
        return Change(face, max(widths, default=0), len(widths), now)
