"""Settings of the display service, WebRTC and the camera."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Pixels = Annotated[int, msgspec.Meta(ge=16, le=8192)]


class DisplaySettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True  # false: the display service is not started (audio-only mode)
    # Where frames go: an OpenCV window, an MP4 file (headless robots, demo), or nowhere.
    backend: Literal["window", "file", "null"] = "window"
    fullscreen: bool = False  # kiosk mode: borderless fullscreen window (needs a window manager)
    monitor_x: int = 0  # x offset (px) of the monitor the window goes to (multi-head setups)
    monitor_y: int = 0  # y offset (px) of that monitor
    width: Pixels = 720  # canvas / window width in pixels (the avatar is scaled, aspect kept)
    height: Pixels = 720  # canvas / window height in pixels
    window_title: str = "navtalk"  # title of the OpenCV window
    file_path: str = "out/display.mp4"  # MP4 path of the "file" backend (H.264, yuv420p)
    file_audio: bool = True  # "file" backend: also mux the avatar's voice (AAC) into the MP4
    fps: Annotated[int, msgspec.Meta(ge=1, le=120)] = 30  # nominal rate for the file sink
    idle_fps: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0  # redraw rate with no video
    captions: bool = True  # live captions of the guest's and the avatar's words
    caption_font_scale: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.8  # OpenCV font scale
    caption_hold_s: Annotated[float, msgspec.Meta(gt=0, le=120)] = 6.0  # keep a caption so long
    idle_image: str = ""  # image shown when no session is live; empty: a drawn placeholder
    badge: bool = True  # small status badge: connecting / listening / thinking / speaking
    # Host address ICE gathers candidates on. "auto": loopback when NavTalk's URL is loopback
    # (the emulator), else every interface; "": every interface; or an address (the robot's
    # LAN address). A loopback address with a remote NavTalk URL is refused at start.
    webrtc_host: str = "auto"
    trickle_local_ice: bool = True  # also send each local candidate as webrtc.local.ice
    # Frames waiting to be rendered; older ones are dropped (latest-frame-wins). 1 = newest only.
    frame_queue: Annotated[int, msgspec.Meta(ge=1, le=16)] = 1
    # Hold each video frame this long before showing it, so the picture meets the voice: the
    # WebRTC audio path buffers more than the video path (aiortc's audio jitter buffer
    # prefetches packets). 40 ms measured with bench/bench_video.py; 0 shows frames at once.
    video_delay_ms: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 40
    # Seconds to wait for the server's answer to our own offer (or for ICE) before offering again.
    renegotiation_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    # A connected avatar track (video or voice) with no frame for this long (s) is renegotiated
    # with a fresh offer; 0 = never.
    media_stall_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 5.0
    stats_interval_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0  # video.stats period
    forward_audio: bool = True  # publish the avatar's WebRTC voice on audio.out


class CameraSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Run the camera service (face detection for session.start_triggers = ["face"]). The
    # take_photo tool uses the camera whether or not this is on.
    enabled: bool = False
    # opencv: a capture device or video file; image: a still image file; null: no camera.
    backend: Literal["opencv", "image", "null"] = "null"
    device: int = 0  # OpenCV capture index (/dev/videoN) of the "opencv" backend
    path: str = ""  # "opencv": a video file/URL instead of the index; "image": the image file
    jpeg_quality: Annotated[int, msgspec.Meta(ge=1, le=100)] = 70  # snapshots sent to the model
    # Snapshot width in pixels (aspect kept); 0 keeps the camera's own size.
    width: Annotated[int, msgspec.Meta(ge=0, le=8192)] = 960
    # Face detection (the camera service, OpenCV's bundled Haar cascade): faces narrower
    # than this many pixels (in the camera's frame) are ignored.
    min_face_px: Annotated[int, msgspec.Meta(ge=16, le=4096)] = 80
    # a face in this many frames in a row is "seen"; none in this many, "lost"
    frames_needed: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    rate_hz: Annotated[float, msgspec.Meta(gt=0, le=30)] = 5.0  # frames looked at per second
