"""The MP4 screen: a file standard tools read, with the frames, size and timing it was given."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import DeviceError
from hardware.screen import FileScreen, Letterbox, NullScreen, letterbox


def ffprobe(path: Path) -> list[dict[str, Any]]:
    """Every stream of ``path`` as ffprobe reports it, frames counted by decoding."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_name,codec_type,width,height,pix_fmt,nb_read_frames,duration,sample_rate",
         "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    streams: list[dict[str, Any]] = json.loads(out.stdout)["streams"]
    return streams


def test_mp4_has_every_frame_at_real_speed(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    screen = FileScreen(path, fps=25, audio=True)
    screen.open()
    t0 = 1000.0
    frame = np.zeros((360, 641, 3), np.uint8)  # odd width: the sink makes it even
    for i in range(75):  # 3 s at 25 fps, then a 1 s gap, then 25 more frames
        frame[:] = (i * 3) % 256
        at = t0 + i * 0.04 + (1.0 if i >= 50 else 0.0)
        screen.show(frame, at)
        tone = (np.sin(np.arange(960) * 2 * np.pi * 440 / 48000) * 8000).astype("<i2")
        for k in range(2):
            screen.write_audio(np.repeat(tone, 2).tobytes(), 48000, 2, at + k * 0.02)
    screen.close()
    streams = ffprobe(path)
    video = next(s for s in streams if s["codec_type"] == "video")
    assert video["codec_name"] == "h264" and video["pix_fmt"] == "yuv420p"
    assert (video["width"], video["height"]) == (640, 360)
    assert int(video["nb_read_frames"]) == 75
    assert abs(float(video["duration"]) - 4.0) < 0.1  # the gap is kept: wall-clock timing
    audio = next(s for s in streams if s["codec_type"] == "audio")
    assert audio["codec_name"] == "aac" and audio["sample_rate"] == "48000"
    assert 2.8 < float(audio["duration"]) < 4.2


def test_mp4_without_audio(tmp_path: Path) -> None:
    screen = FileScreen(tmp_path / "v.mp4", fps=30, audio=False)
    screen.open()
    for i in range(10):
        screen.show(np.full((64, 64, 3), i * 20, np.uint8), 5.0 + i / 30)
    screen.close()
    streams = ffprobe(tmp_path / "v.mp4")
    assert [s["codec_type"] for s in streams] == ["video"]
    assert int(streams[0]["nb_read_frames"]) == 10


def test_unwritable_path_is_a_device_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DeviceError):
        FileScreen(blocker / "sub" / "out.mp4").open()


def test_null_screen_counts_and_letterbox_keeps_aspect() -> None:
    s = NullScreen()
    s.open()
    s.show(np.zeros((4, 4, 3), np.uint8), 0.0)
    assert s.frames_shown == 1
    red = np.zeros((100, 200, 3), np.uint8)
    red[:] = (0, 0, 255)
    boxed = letterbox(red, 400, 400)
    assert boxed.shape == (400, 400, 3)
    assert (boxed[200, 200] == (0, 0, 255)).all() and (boxed[20, 200] == 0).all()


def test_mp4_video_and_voice_stay_in_sync(tmp_path: Path) -> None:
    """Markers: a white frame and a click at the same ``at_s``, fed as the display does
    (one reused frame buffer, 20 ms voice frames between the frames). In the file, encoded
    on the screen's own thread, each flash and its click are less than a frame apart."""
    import av

    path = tmp_path / "sync.mp4"
    screen = FileScreen(path, fps=25, audio=True)
    screen.open()
    t0, markers = 500.0, (1.0, 2.0, 3.0)
    frame = np.zeros((240, 320, 3), np.uint8)  # reused for every frame, as the composer does
    for i in range(100):  # 4 s at 25 fps
        at = t0 + i * 0.04
        frame[:] = 255 if any(abs(at - t0 - m) < 1e-6 for m in markers) else 40
        screen.show(frame, at)
        for k in range(2):  # the voice: 20 ms frames at 48 kHz stereo, a click at each marker
            start = at + k * 0.02
            pcm = np.zeros(960, "<i2")
            if any(abs(start - t0 - m) < 1e-6 for m in markers):
                pcm[:48] = 20_000
            screen.write_audio(np.repeat(pcm, 2).tobytes(), 48000, 2, start)
    screen.close()
    assert sorted(s["codec_type"] for s in ffprobe(path)) == ["audio", "video"]
    flashes: list[float] = []
    clicks: list[float] = []
    with av.open(str(path)) as container:
        for f in container.decode(video=0):
            if f.to_ndarray(format="gray").mean() > 200:
                flashes.append(float(f.time))
    with av.open(str(path)) as container:
        for af in container.decode(audio=0):
            x = np.abs(af.to_ndarray()[0])
            loud = np.flatnonzero(x > 0.3)
            if len(loud) and (not clicks or af.time + loud[0] / af.sample_rate - clicks[-1] > 0.5):
                clicks.append(float(af.time) + loud[0] / af.sample_rate)
    assert len(flashes) == len(markers) and len(clicks) == len(markers), (flashes, clicks)
    offsets_ms = [(f - c) * 1000 for f, c in zip(flashes, clicks, strict=True)]
    assert all(abs(o) < 40 for o in offsets_ms), offsets_ms  # within one 25 fps frame
    assert abs(flashes[1] - flashes[0] - 1.0) < 0.005  # and at the times they were given


def test_reused_letterbox_is_a_fresh_letterbox() -> None:
    """The window and the MP4 letterbox into a reused buffer (bars filled once per size):
    every frame equals a fresh letterbox, also after the sizes change."""
    rng = np.random.default_rng(7)
    box = Letterbox()
    for src, dst in (
        [((90, 160), (200, 200))] * 3
        + [((100, 100), (300, 120))] * 2
        + [
            ((90, 160), (200, 200)),
            ((64, 64), (64, 64)),
        ]
    ):
        frame = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
        got = box(frame, dst[1], dst[0])
        assert np.array_equal(got, letterbox(frame, dst[1], dst[0])), (src, dst)
