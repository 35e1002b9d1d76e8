"""The emulator's avatar: a face drawn with OpenCV whose mouth opens with the voice's loudness.

:class:`AvatarMedia` is what the emulator's server attaches to its RTCPeerConnection::

    media = AvatarMedia(width=512, height=512, fps=25)
    pc.addTrack(media.video); pc.addTrack(media.audio)
    media.speak(pcm24k_mono_s16)    # queue voice; the mouth follows it
    media.stop_speaking()           # barge-in: drop what is queued
    media.speaking                  # voice still queued or playing?
    media.marker()                  # white flash + click at one media time (A/V sync bench)

The mouth's opening at video time ``t`` is a pure function of the RMS of the
voice samples the audio track sends at ``t`` (see :mod:`agent.emulator.media`),
so the lip-sync is exact at the sender. :func:`measure_mouth_open` reads the
opening back from a received frame, for tests and benchmarks.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt
import soxr

from agent.emulator.media import (
    AUDIO_RATE_HZ,
    Int16Array,
    MediaClock,
    PaintedVideoTrack,
    VoiceAudioTrack,
    VoiceTimeline,
)

__all__ = ["AvatarMedia", "AvatarPainter", "measure_mouth_open", "mouth_open_for_level"]

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]

VOICE_RATE_HZ = 24_000  # what speak() takes: NavTalk's PCM16 mono
LEVEL_WINDOW_S = 0.040  # loudness window centred on the frame's time
MARKER_LEAD_S = 0.200  # a marker is placed this far ahead of now
CLICK_S = 0.010  # length of the marker's click (a 1 kHz burst at -1 dBFS)

# Colours (BGR).
_BACKGROUND_TOP = (90, 60, 40)
_BACKGROUND_BOTTOM = (40, 25, 15)
_SKIN = (150, 185, 230)
_HAIR = (30, 40, 60)
_EYE_WHITE = (245, 245, 245)
_IRIS = (110, 70, 30)
_LIPS = (80, 70, 185)
_MOUTH_INSIDE = (40, 20, 70)
_SHIRT = (140, 90, 30)

# Mouth geometry, as fractions of the face size (the smaller image side).
_MOUTH_Y = 0.17
_MOUTH_HALF_W = 0.085
_MOUTH_MAX_HALF_H = 0.060


def mouth_open_for_level(rms: float) -> float:
    """Mouth opening 0..1 for a voice RMS (0..1 of full scale): -50 dBFS closed, -15 open."""
    if rms <= 1e-6:
        return 0.0
    db = 20.0 * math.log10(rms)
    return min(1.0, max(0.0, (db + 50.0) / 35.0))


class AvatarPainter:
    """Draws the avatar; the static parts are drawn once."""

    def __init__(self, width: int = 512, height: int = 512) -> None:
        self.width, self.height = width, height
        self.size = min(width, height)
        self.cx, self.cy = width // 2, height // 2
        self._base = self._draw_base()

    def _p(self, fx: float, fy: float) -> tuple[int, int]:
        return (round(self.cx + fx * self.size), round(self.cy + fy * self.size))

    def _l(self, f: float) -> int:
        return max(1, round(f * self.size))

    def _draw_base(self) -> Image:
        h, w = self.height, self.width
        ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
        top, bottom = (
            np.array(_BACKGROUND_TOP, np.float32),
            np.array(_BACKGROUND_BOTTOM, np.float32),
        )
        img = (top * (1 - ramp) + bottom * ramp)[:, None, :].repeat(w, axis=1)
        img = np.ascontiguousarray(img.reshape(h, w, 3).astype(np.uint8))
        aa = cv2.LINE_AA
        # Shoulders, neck, hair behind, face, ears, nose.
        cv2.ellipse(
            img, self._p(0, 0.55), (self._l(0.42), self._l(0.22)), 0, 180, 360, _SHIRT, -1, aa
        )
        cv2.rectangle(img, self._p(-0.07, 0.2), self._p(0.07, 0.38), _SKIN, -1, aa)
        cv2.ellipse(
            img, self._p(0, -0.04), (self._l(0.27), self._l(0.33)), 0, 0, 360, _HAIR, -1, aa
        )
        cv2.ellipse(img, self._p(0, 0.02), (self._l(0.23), self._l(0.29)), 0, 0, 360, _SKIN, -1, aa)
        for side in (-1, 1):
            cv2.ellipse(
                img,
                self._p(side * 0.23, 0.02),
                (self._l(0.03), self._l(0.06)),
                0,
                0,
                360,
                _SKIN,
                -1,
                aa,
            )
        cv2.ellipse(
            img, self._p(0, -0.2), (self._l(0.24), self._l(0.1)), 0, 180, 360, _HAIR, -1, aa
        )
        nose = np.array([self._p(0, 0.0), self._p(-0.025, 0.09), self._p(0.025, 0.09)], np.int32)
        cv2.polylines(img, [nose], False, (110, 140, 200), self._l(0.006), aa)
        for side in (-1, 1):  # eyebrows
            cv2.line(
                img,
                self._p(side * 0.06, -0.1),
                self._p(side * 0.14, -0.11),
                _HAIR,
                self._l(0.012),
                aa,
            )
        return img

    def paint(self, mouth_open: float, t: float = 0.0, *, flash: bool = False) -> Image:
        """One frame: ``mouth_open`` 0..1; ``t`` (s) drives blinking; ``flash``: all white."""
        if flash:
            return np.full((self.height, self.width, 3), 255, np.uint8)
        img = self._base.copy()
        aa = cv2.LINE_AA
        blink = 2.0 <= (t % 4.0) < 2.12
        for side in (-1, 1):
            centre = self._p(side * 0.1, -0.05)
            if blink:
                cv2.line(
                    img,
                    self._p(side * 0.1 - 0.04, -0.05),
                    self._p(side * 0.1 + 0.04, -0.05),
                    _HAIR,
                    self._l(0.008),
                    aa,
                )
            else:
                cv2.ellipse(
                    img, centre, (self._l(0.045), self._l(0.025)), 0, 0, 360, _EYE_WHITE, -1, aa
                )
                cv2.circle(img, centre, self._l(0.018), _IRIS, -1, aa)
                cv2.circle(img, centre, self._l(0.008), (10, 10, 10), -1, aa)
        centre = self._p(0, _MOUTH_Y)
        half_w = self._l(_MOUTH_HALF_W)
        half_h = round(max(0.0, min(1.0, mouth_open)) * _MOUTH_MAX_HALF_H * self.size)
        if half_h < 2:
            cv2.line(
                img,
                self._p(-_MOUTH_HALF_W, _MOUTH_Y),
                self._p(_MOUTH_HALF_W, _MOUTH_Y),
                _LIPS,
                self._l(0.012),
                aa,
            )
        else:
            cv2.ellipse(img, centre, (half_w, half_h), 0, 0, 360, _LIPS, -1, aa)
            inner = (max(1, half_w - self._l(0.012)), max(1, half_h - self._l(0.01)))
            cv2.ellipse(img, centre, inner, 0, 0, 360, _MOUTH_INSIDE, -1, aa)
        return img


def measure_mouth_open(image: Image) -> float:
    """Read the mouth's opening (0..1, roughly) back from a frame of :class:`AvatarPainter`.

    Counts the dark mouth-inside pixels around where the mouth is drawn, relative to
    the fully open mouth's area. Robust to video-codec noise; the frame must have the
    painter's geometry (any size, face centred).
    """
    h, w = image.shape[:2]
    size = min(w, h)
    cx, cy = w / 2, h / 2 + _MOUTH_Y * size
    hw, hh = (_MOUTH_HALF_W + 0.02) * size, (_MOUTH_MAX_HALF_H + 0.02) * size
    roi = image[int(cy - hh) : int(cy + hh), int(cx - hw) : int(cx + hw)].astype(np.int16)
    b, g, r = roi[..., 0], roi[..., 1], roi[..., 2]
    inside = (r < 120) & (g < 60) & (b < 100) & (r > g)
    full = math.pi * (_MOUTH_HALF_W - 0.012) * (_MOUTH_MAX_HALF_H - 0.01) * size * size
    return float(min(1.0, np.count_nonzero(inside) / full))


class AvatarMedia:
    """The avatar's video and voice tracks, on one clock. See the module docstring."""

    def __init__(
        self,
        width: int = 512,
        height: int = 512,
        fps: int = 25,
        *,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = MediaClock(now)
        self.timeline = VoiceTimeline(AUDIO_RATE_HZ)
        self.painter = AvatarPainter(width, height)
        self.fps = fps
        self.audio = VoiceAudioTrack(self.clock, self.timeline)
        self.video = PaintedVideoTrack(self.clock, self._paint, fps)
        self._resampler: soxr.ResampleStream | None = None
        self._markers: collections.deque[float] = collections.deque(maxlen=64)
        self.last_mouth_open = 0.0  # the opening painted in the latest frame

    # --- voice -------------------------------------------------------------------------

    def _now_pos(self) -> int:
        """The next sample the audio track will send (or would, if it has not started)."""
        return max(self.audio.position, int(self.clock.media_time() * AUDIO_RATE_HZ))

    def speak(self, pcm24k_mono_s16: bytes) -> None:
        """Queue voice (PCM16 little-endian, 24 kHz, mono) right after what is queued."""
        usable = len(pcm24k_mono_s16) - len(pcm24k_mono_s16) % 2
        x = np.frombuffer(pcm24k_mono_s16[:usable], dtype="<i2").astype(np.int16)
        now = self._now_pos()
        if self._resampler is None or not self.timeline.has_voice_after(now):
            self._resampler = soxr.ResampleStream(VOICE_RATE_HZ, AUDIO_RATE_HZ, 1, dtype="int16")
        y: Int16Array = self._resampler.resample_chunk(x)
        start = self.timeline.schedule(y, not_before=now)
        log.debug("= voice: %d samples at %.3f s", len(y), start / AUDIO_RATE_HZ)

    def stop_speaking(self) -> None:
        """Barge-in: drop every voice sample not yet sent."""
        self.timeline.drop_after(self._now_pos())
        self._resampler = None

    @property
    def speaking(self) -> bool:
        return self.timeline.has_voice_after(self._now_pos())

    # --- sync marker ---------------------------------------------------------------------

    def marker(self) -> float:
        """Schedule a white frame and a click at the same media time; return that time (s)."""
        t0 = self.clock.media_time() + MARKER_LEAD_S
        t = math.ceil(t0 * self.fps) / self.fps  # exactly on a video frame
        n = int(CLICK_S * AUDIO_RATE_HZ)
        click = (0.9 * 32767 * np.sin(2 * np.pi * 1000.0 * np.arange(n) / AUDIO_RATE_HZ)).astype(
            np.int16
        )
        self.timeline.insert(click, round(t * AUDIO_RATE_HZ))
        self._markers.append(t)
        log.debug("= marker at %.3f s", t)
        return t

    # --- video ---------------------------------------------------------------------------

    def level_at(self, t: float) -> float:
        """Voice RMS (0..1 of full scale) at media time ``t``."""
        window = int(LEVEL_WINDOW_S * AUDIO_RATE_HZ)
        return self.timeline.level_at(round(t * AUDIO_RATE_HZ), window)

    def _paint(self, t: float, index: int) -> Image:
        half_frame = 0.5 / self.fps
        flash = any(abs(t - m) < half_frame for m in self._markers)
        opening = 0.0 if flash else mouth_open_for_level(self.level_at(t))
        self.last_mouth_open = opening
        return self.painter.paint(opening, t, flash=flash)
