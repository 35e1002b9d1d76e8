"""The emulator's avatar media: timeline and lip-sync, unit level and over real aiortc loopback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from agent.emulator.avatar import (
    AvatarMedia,
    AvatarPainter,
    measure_mouth_open,
    mouth_open_for_level,
)
from agent.emulator.media import AUDIO_RATE_HZ, VoiceTimeline
from agent.messages import SdpMessage
from agent.video.peer import DisplayPeer, restrict_ice_host, sdp_candidate_addresses


def voice_bursts(pattern: list[tuple[float, float]], rate: int = 24_000) -> bytes:
    """A voice stand-in: (seconds, amplitude 0..1) segments of a 180 Hz buzz with harmonics."""
    parts = []
    t0 = 0
    for secs, amp in pattern:
        n = int(secs * rate)
        t = (t0 + np.arange(n)) / rate
        buzz = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 6))
        parts.append(amp * 0.5 * 32767 * buzz / 2.3)
        t0 += n
    return np.concatenate(parts).astype("<i2").tobytes()


# --- sans-I/O parts ---------------------------------------------------------------------


def test_timeline_schedules_back_to_back_and_reads_silence_around() -> None:
    tl = VoiceTimeline()
    a = np.full(100, 1000, np.int16)
    assert tl.schedule(a, not_before=50) == 50
    assert tl.schedule(a, not_before=0) == 150  # right after the queued voice
    out = tl.read(0, 300)
    assert out[:50].tolist() == [0] * 50
    assert (out[50:250] == 1000).all()
    assert (out[250:] == 0).all()


def test_timeline_barge_in_drops_only_the_future() -> None:
    tl = VoiceTimeline()
    tl.schedule(np.full(1000, 500, np.int16), not_before=0)
    tl.drop_after(400)
    assert not tl.has_voice_after(400)
    assert (tl.read(0, 400) == 500).all()
    assert (tl.read(400, 600) == 0).all()


def test_mouth_follows_level_and_can_be_read_back() -> None:
    assert mouth_open_for_level(0.0) == 0.0
    assert mouth_open_for_level(10 ** (-30 / 20)) < mouth_open_for_level(10 ** (-20 / 20))
    assert mouth_open_for_level(1.0) == 1.0
    for w, h in ((512, 512), (1280, 720)):
        p = AvatarPainter(w, h)
        readings = [measure_mouth_open(p.paint(o)) for o in (0.0, 0.3, 0.6, 1.0)]
        assert readings == sorted(readings)
        assert readings[0] < 0.05 and readings[-1] > 0.8, readings


def test_avatar_media_paints_mouth_from_scheduled_voice() -> None:
    clock = [100.0]
    media = AvatarMedia(256, 256, 25, now=lambda: clock[0])
    media.speak(voice_bursts([(0.5, 0.0), (0.5, 1.0)]))
    assert media.speaking
    quiet = measure_mouth_open(media._paint(0.25, 6))
    loud = measure_mouth_open(media._paint(0.75, 18))
    assert quiet < 0.05 < 0.5 < loud
    media.stop_speaking()
    assert not media.speaking
    assert measure_mouth_open(media._paint(0.75, 18)) < 0.05


def test_marker_flashes_and_clicks_at_the_same_media_time() -> None:
    clock = [5.0]
    media = AvatarMedia(64, 64, 25, now=lambda: clock[0])
    t = media.marker()
    assert abs(t * 25 - round(t * 25)) < 1e-9  # on a video frame
    assert media._paint(t, round(t * 25)).min() == 255
    assert media._paint(t - 0.04, round(t * 25) - 1).min() < 255
    pos = round(t * AUDIO_RATE_HZ)
    assert np.abs(media.timeline.read(pos - 480, 480)).max() == 0
    assert np.abs(media.timeline.read(pos, 480)).max() > 20_000


# --- over real aiortc, on loopback ------------------------------------------------------------


async def test_lip_sync_over_webrtc_loopback() -> None:
    restrict_ice_host("127.0.0.1")
    media = AvatarMedia(512, 512, 25)
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    sender.addTrack(media.video)
    sender.addTrack(media.audio)
    video: list[tuple[float, float]] = []  # (arrival, mouth opening)
    audio: list[tuple[float, float]] = []  # (arrival, rms)
    enough = asyncio.Event()
    speech_started: list[float] = []
    flowing = asyncio.Event()

    def on_frame(kind: str, gen: int, frame: Any) -> None:
        now = time.monotonic()
        if kind == "video":
            video.append((now, measure_mouth_open(frame.to_ndarray(format="bgr24"))))
            flowing.set()
        else:
            pcm = frame.to_ndarray().astype(np.float64)
            audio.append((now, float(np.sqrt(np.mean(pcm * pcm))) / 32768))
        if speech_started and now > speech_started[0] + 4.2:
            enough.set()

    receiver = DisplayPeer("127.0.0.1", on_frame, lambda g, s: None)
    try:
        await sender.setLocalDescription(await sender.createOffer())
        offer_sdp = sender.localDescription.sdp
        answer = await receiver.answer(SdpMessage(sdp_type="offer", sdp=offer_sdp))
        await sender.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
        for sdp in (offer_sdp, answer.sdp):
            addrs = sdp_candidate_addresses(sdp)
            assert addrs and set(addrs) == {"127.0.0.1"}, addrs
        assert all(c.candidate.split()[4] == "127.0.0.1" for c in receiver.local_candidates())

        await asyncio.wait_for(flowing.wait(), timeout=10)  # media flows: now speak
        speech_started.append(time.monotonic())
        pattern = [(0.3, 0.0), (0.4, 1.0), (0.4, 0.0), (0.4, 0.5), (0.4, 0.0), (0.6, 1.0)]
        media.speak(voice_bursts(pattern * 2))
        await asyncio.wait_for(enough.wait(), timeout=20)
    finally:
        await receiver.close()
        await sender.close()

    t0 = speech_started[0]
    v = [(t, m) for t, m in video if t0 <= t <= t0 + 4.0]
    a_t = np.array([t for t, _ in audio])
    a_r = np.array([r for _, r in audio])
    mouth, rms = [], []
    for t, m in v:
        near = np.abs(a_t - t) <= 0.03
        if near.any():
            mouth.append(m)
            rms.append(float(a_r[near].mean()))
    assert len(mouth) > 60, len(mouth)
    r = float(np.corrcoef(mouth, rms)[0, 1])
    assert r > 0.6, f"mouth/voice correlation {r:.2f}"
    assert max(mouth) > 0.5 and min(mouth) < 0.05


@pytest.mark.parametrize(("w", "h", "fps"), [(1280, 720, 30)])
async def test_720p_option_sends_720p(w: int, h: int, fps: int) -> None:
    restrict_ice_host("127.0.0.1")
    media = AvatarMedia(w, h, fps)
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    sender.addTrack(media.video)
    sender.addTrack(media.audio)
    got = asyncio.get_running_loop().create_future()

    def on_frame(kind: str, gen: int, frame: Any) -> None:
        if kind == "video" and not got.done():
            got.set_result((frame.width, frame.height))

    receiver = DisplayPeer("127.0.0.1", on_frame, lambda g, s: None)
    try:
        await sender.setLocalDescription(await sender.createOffer())
        answer = await receiver.answer(
            SdpMessage(sdp_type="offer", sdp=sender.localDescription.sdp)
        )
        await sender.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
        assert await asyncio.wait_for(got, timeout=15) == (w, h)
    finally:
        await receiver.close()
        await sender.close()
