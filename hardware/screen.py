"""Screens: where the display's frames go. An OpenCV window (windowed or fullscreen kiosk),
an MP4 file (headless robots, the demo, recordings), or nowhere.

Every backend has the same narrow interface::

    screen = open_screen(settings.display)   # not opened yet
    screen.open()                            # DeviceError if it cannot
    screen.show(bgr_frame, at_s=time.monotonic())
    screen.write_audio(pcm_s16, rate_hz, channels, at_s)   # file backend muxes it; others drop
    screen.poll()                            # pump UI events while nothing new is shown
    screen.close()

Calls are blocking and not thread-safe: make every call from one thread, from
``open()`` to ``close()`` (the display service uses a dedicated single-thread
executor, so that encoding and the window's ``imshow``/``waitKey`` never block its
event loop). The OpenCV window works from such a thread as long as OpenCV was
imported before PyAV (checked at ``open()``) and no other thread touches HighGUI;
it refuses calls from another thread than the one that opened it. A backend
whose ``main_thread_only`` is true must be driven from the main thread (none
of ours today; kept for backends that need it).
"""

from __future__ import annotations

import abc
import fractions
import logging
import os
import queue
import socket
import sys
import threading
from pathlib import Path
from typing import Any

# OpenCV before PyAV: if PyAV's bundled libraries load first, OpenCV's Qt window hangs
# (checked: opencv-python 4.14 + av 18 under Xvfb). WindowScreen.open() checks the order.
import cv2  # isort: split

import av
import numpy as np
import numpy.typing as npt

from agent.errors import DeviceError
from agent.video.compose import draw_fitted
from agent.video.settings import DisplaySettings

__all__ = [
    "FileScreen",
    "Letterbox",
    "NullScreen",
    "Screen",
    "WindowScreen",
    "check_x_display",
    "letterbox",
    "open_screen",
]

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]


def letterbox(frame: Image, width: int, height: int) -> Image:
    """``frame`` scaled into ``width`` x ``height`` with its aspect kept, black bars around."""
    if (frame.shape[1], frame.shape[0]) == (width, height):
        return frame
    out = np.zeros((height, width, 3), np.uint8)
    draw_fitted(frame, out)
    return out


class Letterbox:
    """:func:`letterbox` into a reused buffer: the bars are filled once per change of the
    sizes, then each frame only writes its own rectangle. The result is valid until the
    next call."""

    def __init__(self) -> None:
        self._key: tuple[int, int, int, int] | None = None
        self._out: Image | None = None

    def __call__(self, frame: Image, width: int, height: int) -> Image:
        if (frame.shape[1], frame.shape[0]) == (width, height):
            return frame
        key = (frame.shape[1], frame.shape[0], width, height)
        if key != self._key or self._out is None:
            self._key, self._out = key, np.zeros((height, width, 3), np.uint8)
        draw_fitted(frame, self._out)  # the same rectangle every time: the bars stay black
        return self._out


class Screen(abc.ABC):
    """A frame sink. See the module docstring for the calling rules."""

    main_thread_only = False  # True: every call must come from the process's main thread
    takes_audio = False  # True: write_audio() does something (the caller may skip it else)

    def __init__(self) -> None:
        self.frames_shown = 0

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def show(self, frame: Image, at_s: float) -> None:
        """Show a BGR frame; ``at_s`` is its presentation time (monotonic seconds)."""

    def write_audio(self, pcm: bytes, rate_hz: int, channels: int, at_s: float) -> None:
        """Interleaved s16 PCM whose first sample plays at ``at_s``; ignored by default."""
        return None

    def poll(self) -> None:
        """Pump UI events (nothing to do for most backends)."""
        return None

    @abc.abstractmethod
    def close(self) -> None: ...


class NullScreen(Screen):
    """Drops frames, counting them."""

    def open(self) -> None:
        pass

    def show(self, frame: Image, at_s: float) -> None:
        self.frames_shown += 1

    def close(self) -> None:
        pass


# --- OpenCV window ----------------------------------------------------------------------------


def check_x_display(display: str | None = None) -> None:
    """Raise DeviceError unless an X server answers at ``display`` (default: $DISPLAY).

    OpenCV's Qt backend aborts the whole process (SIGABRT) when it cannot reach
    the X server, so the window backend checks first, with a plain socket.
    """
    display = os.environ.get("DISPLAY", "") if display is None else display
    if not display:
        raise DeviceError("no X display: DISPLAY is not set (use the 'file' or 'null' backend)")
    host, _, rest = display.rpartition(":")
    try:
        number = int(rest.split(".", 1)[0])
    except ValueError as exc:
        raise DeviceError(f"DISPLAY={display!r} is not a valid X display name") from exc
    try:
        if host in ("", "unix"):
            path = f"/tmp/.X11-unix/X{number}"
            for address in (path, "\0" + path):  # filesystem socket, then abstract namespace
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(2.0)
                    try:
                        s.connect(address)
                        return
                    except OSError:
                        continue
            raise OSError(f"nothing listens on {path}")
        with socket.create_connection((host, 6000 + number), timeout=2.0):
            return
    except OSError as exc:
        raise DeviceError(f"X display {display!r} does not answer: {exc}") from exc


class WindowScreen(Screen):
    """An OpenCV (Qt) window: windowed, or fullscreen kiosk mode on the monitor at (x, y).

    Every call from the thread that called ``open()`` (Qt's HighGUI is single-threaded)."""

    def __init__(
        self,
        title: str = "navtalk",
        width: int = 720,
        height: int = 720,
        *,
        fullscreen: bool = False,
        monitor_x: int = 0,
        monitor_y: int = 0,
    ) -> None:
        super().__init__()
        self.title, self.width, self.height = title, width, height
        self.fullscreen, self.monitor_x, self.monitor_y = fullscreen, monitor_x, monitor_y
        self._opened = False
        self._rect: tuple[int, int] | None = None  # image area, re-read now and then
        self._letterbox = Letterbox()
        self.gui_thread = ""  # name of the thread that opened the window (and must drive it)
        self._gui_ident: int | None = None

    def _check_thread(self) -> None:
        if threading.get_ident() != self._gui_ident:
            raise DeviceError(
                f"the window was opened on thread {self.gui_thread!r}; HighGUI calls from "
                f"{threading.current_thread().name!r} would hang Qt"
            )

    def open(self) -> None:
        check_x_display()
        loaded = list(sys.modules)
        if "av" in sys.modules and loaded.index("av") < loaded.index("cv2"):
            raise DeviceError(
                "PyAV was imported before OpenCV, which makes the OpenCV window hang; "
                "import cv2 (or hardware.screen) before av/aiortc"
            )
        try:
            # Windowed: Qt scales with the aspect kept when the user resizes. Fullscreen: the
            # image area is the whole monitor and show() letterboxes into it pixel-exactly.
            ratio = cv2.WINDOW_FREERATIO if self.fullscreen else cv2.WINDOW_KEEPRATIO
            flags = cv2.WINDOW_NORMAL | cv2.WINDOW_GUI_NORMAL | ratio
            cv2.namedWindow(self.title, flags)
            cv2.moveWindow(self.title, self.monitor_x, self.monitor_y)
            if self.fullscreen:
                cv2.setWindowProperty(self.title, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)
            else:
                cv2.resizeWindow(self.title, self.width, self.height)
            cv2.imshow(self.title, np.zeros((self.height, self.width, 3), np.uint8))
            cv2.waitKey(1)
        except cv2.error as exc:
            raise DeviceError(f"cannot open the window: {exc}") from exc
        self._opened = True
        self._gui_ident = threading.get_ident()
        self.gui_thread = threading.current_thread().name
        log.info(
            "= window %r open (%s at %d,%d)",
            self.title,
            "fullscreen" if self.fullscreen else f"{self.width}x{self.height}",
            self.monitor_x,
            self.monitor_y,
        )

    def image_rect(self) -> tuple[int, int, int, int]:
        """Where the window's image area is on the screen: (x, y, w, h)."""
        x, y, w, h = cv2.getWindowImageRect(self.title)
        return int(x), int(y), int(w), int(h)

    def show(self, frame: Image, at_s: float) -> None:
        if not self._opened:
            raise DeviceError("window is not open")
        self._check_thread()
        if self.fullscreen:
            # Fill the monitor exactly: scale ourselves, aspect kept, instead of letting
            # Qt stretch. The rect is read on every frame while the window manager settles
            # the window, then every 50 frames (monitor changes are rare).
            if self._rect is None or self.frames_shown < 100 or self.frames_shown % 50 == 0:
                _, _, w, h = self.image_rect()
                self._rect = (w, h) if w > 0 and h > 0 else None
            if self._rect is not None:
                frame = self._letterbox(frame, *self._rect)
        try:
            cv2.imshow(self.title, frame)
            cv2.waitKey(1)
        except cv2.error as exc:
            raise DeviceError(f"cannot show a frame: {exc}") from exc
        self.frames_shown += 1

    def poll(self) -> None:
        if self._opened:
            self._check_thread()
            cv2.waitKey(1)

    def close(self) -> None:
        if self._opened:
            self._check_thread()
            self._opened = False
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                log.debug("window already gone")


# --- MP4 file -----------------------------------------------------------------------------------


class FileScreen(Screen):
    """An MP4 file: H.264 yuv420p video whose timestamps follow ``at_s`` (so the file plays
    at real speed, gaps included), and optionally the voice as AAC on the same clock.

    Encoding and muxing run on a thread of their own ("mp4-encoder"), off the caller's render
    path: :meth:`show` only copies the frame into an ``av.VideoFrame`` and queues it (so the
    caller may reuse its buffer at once), :meth:`write_audio` queues the PCM. The queue is
    bounded (``QUEUE_ITEMS``): a caller faster than the encoder waits, nothing is dropped.
    :meth:`close` drains the queue, flushes both encoders and writes the index."""

    AUDIO_RATE_HZ = 48_000
    QUEUE_ITEMS = 120  # about 1.5 s of 30 fps video and 20 ms voice frames

    def __init__(self, path: str | os.PathLike[str], fps: int = 30, *, audio: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.fps = fps
        self.audio = audio
        self.takes_audio = audio
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._astream: av.AudioStream | None = None
        self._fifo: av.AudioFifo | None = None
        self._resampler: av.AudioResampler | None = None
        self._t0: float | None = None
        self._last_pts = -1
        self._audio_next: int | None = None  # next audio pts (samples) expected
        self._audio_written = 0
        self._size: tuple[int, int] | None = None
        self.audio_frames_written = 0
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(self.QUEUE_ITEMS)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None  # the encoder thread's, raised by show()
        self._letterbox = Letterbox()

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(self.path), mode="w", format="mp4")
        except (OSError, av.FFmpegError) as exc:
            raise DeviceError(f"cannot write {self.path}: {exc}") from exc
        self._thread = threading.Thread(target=self._encode_loop, name="mp4-encoder", daemon=True)
        self._thread.start()
        log.info("= recording to %s", self.path)

    # -- the caller's thread: copy, stamp, queue ------------------------------------------------

    def show(self, frame: Image, at_s: float) -> None:
        if self._container is None:
            raise DeviceError("file screen is not open")
        if self._error is not None:
            raise DeviceError(f"cannot encode a frame: {self._error}") from self._error
        if self._t0 is None:
            h, w = frame.shape[:2]
            self._size = (w - w % 2, h - h % 2)  # yuv420p needs even sizes
            self._t0 = at_s
        assert self._size is not None
        frame = self._letterbox(frame, *self._size)  # (odd sizes: yuv420p needs even ones)
        pts = max(round((at_s - self._t0) * 1000), self._last_pts + 1)
        self._last_pts = pts
        # a copy (the caller reuses its buffer); converted to YUV on the encoder thread
        self._queue.put(("video", (np.array(frame, dtype=np.uint8, order="C"), pts)))
        self.frames_shown += 1

    def write_audio(self, pcm: bytes, rate_hz: int, channels: int, at_s: float) -> None:
        # Audio starts with the first video frame (streams are fixed before muxing starts).
        if not self.audio or self._container is None or self._t0 is None or at_s < self._t0:
            return
        self._queue.put(("audio", (pcm, rate_hz, channels, at_s)))

    # -- the encoder thread ----------------------------------------------------------------------

    def _encode_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # failed: keep draining so that the callers never block
            kind, data = item
            try:
                if kind == "video":
                    self._encode_video(*data)
                else:
                    self._encode_audio(*data)
            except Exception as exc:  # any: the thread must keep draining, or show() blocks
                log.exception("= %s: encoding failed", self.path)
                self._error = exc

    def _start(self) -> None:
        assert self._container is not None and self._size is not None
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height = self._size
        stream.pix_fmt = "yuv420p"
        stream.time_base = fractions.Fraction(1, 1000)
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        stream.options = {"preset": "veryfast", "crf": "23", "tune": "zerolatency"}
        self._video = stream
        if self.audio:
            a = self._container.add_stream("aac", rate=self.AUDIO_RATE_HZ, layout="stereo")
            self._astream = a
            self._fifo = av.AudioFifo()
            self._resampler = av.AudioResampler(
                format="fltp", layout="stereo", rate=self.AUDIO_RATE_HZ
            )

    def _encode_video(self, frame: Image, pts: int) -> None:
        if self._video is None:
            self._start()
        assert self._video is not None and self._container is not None
        # OpenCV's BGR -> I420 (BT.601, as swscale's default) takes a quarter of swscale's time
        yuv = np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
        vf = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        vf.pts = pts
        vf.time_base = fractions.Fraction(1, 1000)
        for packet in self._video.encode(vf):
            self._container.mux(packet)

    def _encode_audio(self, pcm: bytes, rate_hz: int, channels: int, at_s: float) -> None:
        if self._astream is None or self._t0 is None:
            return
        assert self._fifo is not None and self._resampler is not None
        samples = np.frombuffer(pcm, "<i2")
        samples = samples[: len(samples) - len(samples) % channels]
        layout = "mono" if channels == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = rate_hz
        at = round((at_s - self._t0) * self.AUDIO_RATE_HZ)
        if self._audio_next is None or abs(at - self._audio_next) > self.AUDIO_RATE_HZ // 10:
            # First audio, or a gap / drift of more than 100 ms: realign with the clock.
            self._flush_fifo()
            self._audio_written = max(at, self._audio_written)
            self._fifo = av.AudioFifo()
        for out in self._resampler.resample(frame):
            self._fifo.write(out)
        self._audio_next = at + round(len(samples) // channels * self.AUDIO_RATE_HZ / rate_hz)
        self._drain_fifo(final=False)

    def _drain_fifo(self, final: bool) -> None:
        assert self._fifo is not None and self._astream is not None and self._container
        size = self._astream.codec_context.frame_size or 1024
        while self._fifo.samples >= size or (final and self._fifo.samples > 0):
            chunk = self._fifo.read(min(size, self._fifo.samples))
            if chunk is None:
                break
            chunk.pts = self._audio_written
            chunk.time_base = fractions.Fraction(1, self.AUDIO_RATE_HZ)
            self._audio_written += chunk.samples
            for packet in self._astream.encode(chunk):
                self._container.mux(packet)
            self.audio_frames_written += 1

    def _flush_fifo(self) -> None:
        if self._fifo is not None and self._fifo.samples:
            self._drain_fifo(final=True)

    def close(self) -> None:
        container = self._container
        if container is None:
            return
        if self._thread is not None:
            self._queue.put(None)  # after everything queued: the encoder drains it first
            self._thread.join()
            self._thread = None
        try:
            if self._error is None:
                if self._astream is not None:
                    self._flush_fifo()
                    for packet in self._astream.encode(None):
                        container.mux(packet)
                if self._video is not None:
                    for packet in self._video.encode(None):
                        container.mux(packet)
        except av.FFmpegError as exc:
            log.warning("= flushing %s failed: %s", self.path, exc)
        finally:
            self._container = None
            container.close()
        log.info("= %s closed: %d frames", self.path, self.frames_shown)


def open_screen(settings: DisplaySettings) -> Screen:
    """The screen the settings ask for (not opened yet)."""
    if settings.backend == "window":
        return WindowScreen(
            settings.window_title,
            settings.width,
            settings.height,
            fullscreen=settings.fullscreen,
            monitor_x=settings.monitor_x,
            monitor_y=settings.monitor_y,
        )
    if settings.backend == "file":
        return FileScreen(settings.file_path, settings.fps, audio=settings.file_audio)
    return NullScreen()
