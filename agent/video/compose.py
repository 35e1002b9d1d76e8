"""What the guest sees, sans-I/O: the display's state model and the frame composer.

:class:`DisplayModel` turns bus events into an :class:`Overlay` (status badge,
captions, idle or live scene); every method takes ``now`` (monotonic seconds)
and nothing here reads a clock or touches a device. :class:`Composer` draws an
avatar frame (scaled, aspect kept) and the overlay on a canvas of fixed size.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "Badge",
    "Composer",
    "DisplayModel",
    "Overlay",
    "Scene",
    "draw_fitted",
    "fit_aspect",
    "start_hint",
]

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]

THINKING_TIMEOUT_S = 15.0  # "thinking" falls back to "listening" if the avatar never answers
VOICE_HOLD_S = 0.4  # the avatar counts as speaking this long after its last loud audio
VOICE_LEVEL_ON = 0.01  # RMS (0..1 full scale) of the WebRTC voice that counts as speech


class Badge(enum.StrEnum):
    CONNECTING = "connecting"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


class Scene(enum.StrEnum):
    IDLE = "idle"  # no session: the idle screen
    LIVE = "live"  # a session is live: the avatar (or a placeholder until video comes)


@dataclass(frozen=True, slots=True)
class Overlay:
    scene: Scene
    badge: Badge
    guest_caption: str = ""
    avatar_caption: str = ""
    idle_title: str = ""  # the idle screen's words ("" = the default placeholder or image)
    idle_hint: str = ""  # its second line: how to start, or what is happening


_START_HINTS = {"voice": "say hello", "face": "look at the screen", "button": "press the button"}


def start_hint(triggers: tuple[str, ...] | list[str]) -> str:
    """How a guest opens a visit with these start triggers: "Say hello or press the button"."""
    ways = [_START_HINTS[t] for t in triggers if t in _START_HINTS]
    if not ways:
        return ""
    text = ways[0] if len(ways) == 1 else ", ".join(ways[:-1]) + " or " + ways[-1]
    return text[0].upper() + text[1:]


class DisplayModel:
    """The display's view of the conversation, fed by bus events (sans-I/O)."""

    def __init__(self, caption_hold_s: float = 6.0, start_hint: str = "") -> None:
        self.caption_hold_s = caption_hold_s
        self.start_hint = start_hint
        self._visit = ""  # session.state's visit ("" before one, or from an older session)
        self._visit_detail = ""
        self._session_live = False
        self._video_live = False
        self._guest_speaking = False
        self._thinking_since: float | None = None
        self._speaker_playing = False
        self._voice_until = -1.0
        self._guest_text = ""
        self._guest_at = -1e9
        self._avatar_response = ""
        self._avatar_text = ""
        self._avatar_at = -1e9
        self._badge: Badge | None = None

    # --- inputs ------------------------------------------------------------------------

    def on_session(self, live: bool, now: float) -> None:
        if live != self._session_live:
            log.info("= session %s", "live" if live else "not live")
        self._session_live = live
        if not live:
            self._video_live = False
            self._guest_speaking = False
            self._thinking_since = None
            self._voice_until = -1.0

    def on_visit(self, visit: str, detail: str, now: float) -> None:
        """The kiosk visit's phase and word from ``session.state`` (idle, starting, ...)."""
        if (visit, detail) != (self._visit, self._visit_detail):
            log.info("= visit %s (%s)", visit or "?", detail)
        self._visit, self._visit_detail = visit, detail

    def on_video(self, live: bool, now: float) -> None:
        self._video_live = live

    def on_guest_speech(self, speaking: bool, now: float) -> None:
        """Local VAD or server VAD: the guest started or stopped speaking."""
        if speaking:
            self._thinking_since = None
        elif self._guest_speaking:
            self._thinking_since = now
        self._guest_speaking = speaking

    def on_speaker(self, playing: bool, now: float) -> None:
        self._speaker_playing = playing
        if playing:
            self._thinking_since = None

    def on_voice_level(self, rms: float, now: float) -> None:
        """Loudness of the avatar's voice as it arrives over WebRTC."""
        if rms >= VOICE_LEVEL_ON:
            self._voice_until = now + VOICE_HOLD_S
            self._thinking_since = None

    def on_barge_in(self, now: float) -> None:
        self._voice_until = -1.0

    def on_user_transcript(self, text: str, now: float) -> None:
        self._guest_text, self._guest_at = text.strip(), now

    def on_assistant_transcript(self, response_id: str, text: str, final: bool, now: float) -> None:
        if final:
            self._avatar_text = text.strip()
        elif response_id != self._avatar_response:
            self._avatar_text = text.lstrip()
        else:
            self._avatar_text += text
        self._avatar_response = response_id
        self._avatar_at = now

    # --- output --------------------------------------------------------------------------

    def overlay(self, now: float) -> Overlay:
        if not self._session_live:
            title, hint = self._idle_words()
            return Overlay(Scene.IDLE, Badge.CONNECTING, idle_title=title, idle_hint=hint)
        badge = self._badge_at(now)
        if badge != self._badge:
            log.info("= badge %s", badge)
            self._badge = badge
        fresh = now - self.caption_hold_s
        return Overlay(
            Scene.LIVE,
            badge,
            guest_caption=self._guest_text if self._guest_at >= fresh else "",
            avatar_caption=self._avatar_text if self._avatar_at >= fresh else "",
        )

    def _idle_words(self) -> tuple[str, str]:
        """The idle screen's title and hint for the visit's phase."""
        if self._visit in ("starting", "engaged"):  # engaged: a dropped connection retried
            return "Connecting...", "One moment, please"
        if self._visit == "closing":
            return "Goodbye!", ""
        if self._visit == "idle" and self._visit_detail.startswith("budget"):
            return "Closed for today", "The session time is used up"
        if self._visit == "idle":
            return "Ready", self.start_hint
        return "", ""  # no visit known yet: the default placeholder or image

    def _badge_at(self, now: float) -> Badge:
        if not self._video_live:
            return Badge.CONNECTING
        if self._speaker_playing or now < self._voice_until:
            return Badge.SPEAKING
        if self._guest_speaking:
            return Badge.LISTENING
        if self._thinking_since is not None and now - self._thinking_since < THINKING_TIMEOUT_S:
            return Badge.THINKING
        return Badge.LISTENING


def fit_aspect(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int, int, int]:
    """Where ``src`` goes inside ``dst`` scaled with its aspect kept: (x, y, w, h)."""
    scale = min(dst_w / src_w, dst_h / src_h)
    w, h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    return (dst_w - w) // 2, (dst_h - h) // 2, w, h


def draw_fitted(src: Image, dst: Image) -> None:
    """Draw ``src`` into ``dst`` scaled with its aspect kept, centred (the rest untouched)."""
    x, y, w, h = fit_aspect(src.shape[1], src.shape[0], dst.shape[1], dst.shape[0])
    if (w, h) == (src.shape[1], src.shape[0]):
        dst[y : y + h, x : x + w] = src
    else:
        interp = cv2.INTER_AREA if w < src.shape[1] else cv2.INTER_LINEAR
        dst[y : y + h, x : x + w] = cv2.resize(src, (w, h), interpolation=interp)


_BADGE_COLOURS: dict[Badge, tuple[int, int, int]] = {  # BGR
    Badge.CONNECTING: (0, 165, 255),
    Badge.LISTENING: (80, 200, 80),
    Badge.THINKING: (220, 160, 60),
    Badge.SPEAKING: (60, 60, 235),
}
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BACKGROUND = (20, 14, 10)


_DARKEN = (np.arange(256, dtype=np.uint16) * 2 // 5).astype(np.uint8)  # behind captions


@dataclass(frozen=True, slots=True)
class _CaptionLayout:
    """Captions measured and wrapped once per change of their text."""

    top: int  # first row of the darkened band
    rows: tuple[tuple[str, tuple[int, int], tuple[int, int, int]], ...]  # text, origin, BGR
    scale: float
    thickness: int


class Composer:
    """Draws frames of a fixed canvas size: avatar or idle screen, badge, captions.

    The returned frame is a buffer the composer reuses: it is valid until the next
    :meth:`compose` (the display shows it before composing the next one); copy it to keep
    it. Per frame, only what changes is drawn: the avatar into its rectangle, the
    background restored only where the overlay drew over the letterbox bars last time,
    and captions laid out once per change of their text.
    """

    def __init__(
        self,
        width: int,
        height: int,
        *,
        captions: bool = True,
        font_scale: float = 0.8,
        badge: bool = True,
        idle_image: Image | None = None,
    ) -> None:
        self.width, self.height = width, height
        self.captions, self.font_scale, self.badge = captions, font_scale, badge
        self._background = self._blank()
        self._background.flags.writeable = False
        self._idle_image = idle_image
        self._idle = self._make_idle(idle_image)
        self._idle.flags.writeable = False
        self._idle_key: tuple[str, str] = ("", "")  # the words drawn on self._idle
        self._waiting = self._make_placeholder("Connecting...")
        self._canvas = self._blank()  # the reused output buffer
        # What the canvas holds outside the avatar's rectangle: "bg" (plain background, as
        # the bars need it), or dirty (the placeholder, or overlay rows drawn last frame).
        self._rect: tuple[int, int, int, int] | None = None  # avatar rect drawn last frame
        self._dirty_rows: list[tuple[int, int]] = []  # row ranges the overlay drew over
        self._captions_key: tuple[str, str] | None = None
        self._captions_layout: _CaptionLayout | None = None

    def _blank(self) -> Image:
        return np.full((self.height, self.width, 3), _BACKGROUND, np.uint8)

    def _make_idle(self, image: Image | None) -> Image:
        if image is None:
            return self._make_placeholder("Hello! Come closer to talk.")
        canvas = self._blank()
        draw_fitted(image, canvas)
        return canvas

    def _make_placeholder(self, text: str) -> Image:
        canvas = self._blank()
        r = min(self.width, self.height) // 5
        centre = (self.width // 2, self.height // 2 - r // 2)
        cv2.circle(canvas, centre, r, (70, 50, 35), -1, cv2.LINE_AA)
        cv2.circle(canvas, centre, r, (140, 110, 80), max(2, r // 20), cv2.LINE_AA)
        scale = self.font_scale * min(self.width, self.height) / 720 * 1.2
        (tw, th), _ = cv2.getTextSize(text, _FONT, scale, 2)
        org = ((self.width - tw) // 2, centre[1] + r + 2 * th + 10)
        cv2.putText(canvas, text, org, _FONT, scale, (230, 230, 230), 2, cv2.LINE_AA)
        return canvas

    def _make_idle_words(self, title: str, hint: str) -> Image:
        """The idle screen with its words: the image (or the drawn circle), then the title
        and the hint (wrapped) centred in a darkened band at the bottom."""
        if self._idle_image is not None:
            canvas = self._blank()
            draw_fitted(self._idle_image, canvas)
        else:
            canvas = self._make_placeholder("")
        unit = min(self.width, self.height) / 720
        t_scale, h_scale = self.font_scale * unit * 1.6, self.font_scale * unit
        margin = max(6, int(20 * unit))
        t_w = cv2.getTextSize(title, _FONT, t_scale, 2)[0][0]
        if t_w > self.width - 2 * margin:  # a narrow screen: shrink the title to fit
            t_scale *= (self.width - 2 * margin) / t_w
        t_h = cv2.getTextSize("Ag", _FONT, t_scale, 2)[0][1]
        h_h = cv2.getTextSize("Ag", _FONT, h_scale, 1)[0][1]
        hints = self._wrap(hint, self.width - 2 * margin, h_scale, 2) if hint else []
        band = t_h + margin + len(hints) * int(h_h * 1.8) + 2 * margin
        top = self.height - band - margin
        cv2.LUT(canvas[top:], _DARKEN, dst=canvas[top:])
        rows = [(title, t_scale, 2, t_h, (240, 240, 240))]
        rows += [(line, h_scale, 1, h_h, (200, 220, 255)) for line in hints]
        y = top + margin
        for text, scale, thick, h, colour in rows:
            w = cv2.getTextSize(text, _FONT, scale, thick)[0][0]
            y += h
            cv2.putText(
                canvas, text, ((self.width - w) // 2, y), _FONT, scale, colour, thick, cv2.LINE_AA
            )
            y += int(h * 0.8) + (margin // 2 if thick == 2 else 0)
        return canvas

    def _idle_frame(self, overlay: Overlay) -> Image:
        """The idle screen for the overlay's words, drawn once per change of them."""
        key = (overlay.idle_title, overlay.idle_hint)
        if key != self._idle_key:
            self._idle_key = key
            if key == ("", ""):
                self._idle = self._make_idle(self._idle_image)
            else:
                self._idle = self._make_idle_words(*key)
            self._idle.flags.writeable = False
        return self._idle

    def compose(self, avatar: Image | None, overlay: Overlay) -> Image:
        """One frame for the screen: ``avatar`` is the latest decoded BGR frame, if any.

        The result is read-only for the idle scene and the reused buffer otherwise: valid
        until the next call."""
        if overlay.scene is Scene.IDLE:
            return self._idle_frame(overlay)
        canvas = self._canvas
        if avatar is None:
            canvas[:] = self._waiting
            self._rect = None
            self._dirty_rows = []
        else:
            self._draw_avatar(avatar, canvas)
        if self.badge:
            self._draw_badge(canvas, overlay.badge)
        if self.captions:
            self._draw_captions(canvas, overlay)
        return canvas

    def _draw_avatar(self, avatar: Image, canvas: Image) -> None:
        rect = fit_aspect(avatar.shape[1], avatar.shape[0], self.width, self.height)
        x, y, w, h = rect
        if rect != self._rect:  # first avatar frame, or a new geometry: the whole background
            canvas[:] = self._background
        else:  # the bars are background already, except where the overlay drew last time
            for r0, r1 in self._dirty_rows:
                canvas[r0:r1, :x] = self._background[r0:r1, :x]
                canvas[r0:r1, x + w :] = self._background[r0:r1, x + w :]
                if y > 0 or y + h < self.height:  # bars above / below the avatar
                    canvas[r0 : min(r1, y)] = self._background[r0 : min(r1, y)]
                    canvas[max(r0, y + h) : r1] = self._background[max(r0, y + h) : r1]
        self._rect = rect
        self._dirty_rows = []
        draw_fitted(avatar, canvas)

    def _draw_badge(self, canvas: Image, badge: Badge) -> None:
        scale = 0.6 * max(0.5, min(self.width, self.height) / 720)
        text = badge.value
        (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
        pad = max(4, th // 2)
        x0, y0 = pad, pad
        x1, y1 = x0 + th + 3 * pad + tw, y0 + th + 2 * pad
        self._dirty_rows.append((0, y1 + base + 2))
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (30, 30, 30), -1)
        dot = (x0 + pad + th // 2, (y0 + y1) // 2)
        cv2.circle(canvas, dot, max(2, th // 2), _BADGE_COLOURS[badge], -1, cv2.LINE_AA)
        org = (x0 + 2 * pad + th, y1 - pad)
        cv2.putText(canvas, text, org, _FONT, scale, (240, 240, 240), 1, cv2.LINE_AA)

    def _wrap(self, text: str, max_w: int, scale: float, max_lines: int) -> list[str]:
        lines: list[str] = []
        current = ""
        for word in text.split():
            trial = f"{current} {word}".strip()
            if current and cv2.getTextSize(trial, _FONT, scale, 1)[0][0] > max_w:
                lines.append(current)
                current = word
            else:
                current = trial
        if current:
            lines.append(current)
        return lines[-max_lines:]  # live captions: keep the newest words

    def _layout_captions(self, guest: str, avatar: str) -> _CaptionLayout | None:
        scale = self.font_scale * max(0.4, min(self.width, self.height) / 720)
        th = cv2.getTextSize("Ag", _FONT, scale, 1)[0][1]
        line_h = int(th * 1.8)
        margin = max(6, th)
        lines: list[tuple[str, tuple[int, int, int]]] = []
        if guest:
            for line in self._wrap(guest, self.width - 2 * margin, scale, 2):
                lines.append((line, (255, 220, 150)))  # light blue: the guest
        if avatar:
            for line in self._wrap(avatar, self.width - 2 * margin, scale, 3):
                lines.append((line, (255, 255, 255)))  # white: the avatar
        if not lines:
            return None
        top = self.height - margin - line_h * len(lines)
        rows = tuple(
            (line, (margin, top + line_h * i + th + (line_h - th) // 2), colour)
            for i, (line, colour) in enumerate(lines)
        )
        return _CaptionLayout(max(0, top - margin // 2), rows, scale, 2 if scale > 0.7 else 1)

    def _draw_captions(self, canvas: Image, overlay: Overlay) -> None:
        key = (overlay.guest_caption, overlay.avatar_caption)
        if key != self._captions_key:  # measured and wrapped once per change
            self._captions_key = key
            self._captions_layout = self._layout_captions(*key)
        layout = self._captions_layout
        if layout is None:
            return
        band = canvas[layout.top :]
        cv2.LUT(band, _DARKEN, dst=band)  # darken behind the text (x * 2 // 5)
        self._dirty_rows.append((layout.top, self.height))
        for line, org, colour in layout.rows:
            cv2.putText(
                canvas, line, org, _FONT, layout.scale, colour, layout.thickness, cv2.LINE_AA
            )
