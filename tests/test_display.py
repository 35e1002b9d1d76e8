"""The display service on a real bus, against a real aiortc peer sending the emulator's avatar.

The test plays the session's part (it publishes session.state and relays the
signaling) and the server's (an RTCPeerConnection carrying AvatarMedia).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from agent import topics
from agent.bus import Bus, Delivery
from agent.config import BusSettings, Settings, default_settings
from agent.emulator.avatar import AvatarMedia
from agent.messages import (
    AudioFrame,
    IceCandidate,
    Message,
    SdpMessage,
    SessionPhase,
    SessionState,
    VideoStats,
)
from agent.navtalk.settings import NavTalkSettings
from agent.video.peer import filter_sdp_candidates, restrict_ice_host, sdp_candidate_addresses
from agent.video.settings import DisplaySettings
from hardware.screen import FileScreen, NullScreen, Screen
from services import display
from tests.test_video_file_screen import ffprobe

TIMEOUT = 20.0


def settings_for(bus: BusSettings, **display_kw: object) -> Settings:
    ds = DisplaySettings(
        backend="null",
        width=512,
        height=512,
        stats_interval_s=0.2,
        renegotiation_timeout_s=4.0,
        **display_kw,  # type: ignore[arg-type]
    )
    # NavTalk on loopback: webrtc_host "auto" keeps ICE on loopback (agent.video.ice)
    navtalk = NavTalkSettings(url="ws://127.0.0.1:9/wss/v2/realtime-chat")
    return msgspec.structs.replace(default_settings(), bus=bus, display=ds, navtalk=navtalk)


class Server:
    """The cloud's side of WebRTC: an aiortc peer sending the avatar."""

    def __init__(self) -> None:
        restrict_ice_host("127.0.0.1")
        self.media = AvatarMedia(256, 256, 25)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    async def offer(self) -> SdpMessage:
        self.pc.addTrack(self.media.video)
        self.pc.addTrack(self.media.audio)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return SdpMessage(sdp_type="offer", sdp=self.pc.localDescription.sdp)

    async def answer(self, offer: SdpMessage) -> SdpMessage:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        self.pc.addTrack(self.media.video)
        self.pc.addTrack(self.media.audio)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return SdpMessage(sdp_type="answer", sdp=self.pc.localDescription.sdp)

    async def accept(self, answer: SdpMessage) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))

    async def add_ice(self, c: IceCandidate) -> None:
        cand = candidate_from_sdp(c.candidate.removeprefix("candidate:"))
        cand.sdpMid, cand.sdpMLineIndex = c.sdp_mid, c.sdp_mline_index
        await self.pc.addIceCandidate(cand)

    async def close(self) -> None:
        await self.pc.close()


async def next_matching(
    bus: Bus, topic: str, pred: Callable[[Message], bool] = lambda m: True
) -> Delivery:
    async def find() -> Delivery:
        async for d in bus:
            if d.topic == topic and pred(d.msg):
                return d
        raise AssertionError("bus closed")

    return await asyncio.wait_for(find(), TIMEOUT)


@contextlib.asynccontextmanager
async def running_display(
    bus_settings: BusSettings,
    screen: Screen,
    session: Bus,
    *,
    second_cancel_after: int | None = None,
    **display_kw: object,
) -> AsyncIterator[Bus]:
    """Run the display service; return once it is on the bus (its first video.stats).
    ``second_cancel_after``: cancel it again after that many loop steps, as the runtime
    does when a first cancel seems lost."""
    bus = Bus(bus_settings, "display")
    task = asyncio.create_task(
        display.run(settings_for(bus_settings, **display_kw), bus, screen=screen)
    )
    try:
        await next_matching(session, topics.VIDEO_STATS)
        yield bus
    finally:
        task.cancel()
        if second_cancel_after is not None:
            for _ in range(second_cancel_after):
                await asyncio.sleep(0)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bus.close()


async def session_bus(make_bus: Callable[..., object]) -> Bus:
    bus = await make_bus(  # type: ignore[operator]
        "session",
        topics.WEBRTC_LOCAL_OFFER,
        topics.WEBRTC_LOCAL_ANSWER,
        topics.WEBRTC_LOCAL_ICE,
        topics.VIDEO_STATS,
        topics.AUDIO_OUT,
    )
    assert isinstance(bus, Bus)
    return bus


async def publish_until_seen(bus: Bus, topic: str, msg: Message, seen: asyncio.Event) -> None:
    """Publish periodically (as the session does for session.state) until ``seen`` is set."""
    while not seen.is_set():
        bus.publish(topic, msg)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(seen.wait(), 0.2)


@pytest.mark.parametrize("second_cancel_after", [None, 5], ids=["one-cancel", "two-cancels"])
async def test_answers_server_offer_renders_video_and_forwards_voice(
    bus_settings: BusSettings,
    make_bus: Callable[..., object],
    tmp_path: Path,
    second_cancel_after: int | None,
) -> None:
    """…and however it is stopped, the MP4 it wrote is complete."""
    session = await session_bus(make_bus)
    server = Server()
    screen = FileScreen(tmp_path / "display.mp4", 25, audio=True)
    async with running_display(
        bus_settings, screen, session, second_cancel_after=second_cancel_after
    ):
        # A new session: connecting, then live; the server offers.
        session.publish(topics.SESSION_STATE, SessionState(phase=SessionPhase.CONNECTING))
        session.publish(topics.SESSION_STATE, SessionState(phase=SessionPhase.CONNECTED))
        offer = await server.offer()
        session.publish(topics.WEBRTC_REMOTE_OFFER, offer)
        answer = await next_matching(session, topics.WEBRTC_LOCAL_ANSWER)
        assert isinstance(answer.msg, SdpMessage)
        assert set(sdp_candidate_addresses(answer.msg.sdp)) == {"127.0.0.1"}
        assert set(sdp_candidate_addresses(offer.sdp)) == {"127.0.0.1"}
        await server.accept(answer.msg)
        ice = await next_matching(session, topics.WEBRTC_LOCAL_ICE)
        assert isinstance(ice.msg, IceCandidate) and " 127.0.0.1 " in ice.msg.candidate
        await server.add_ice(ice.msg)  # trickled duplicates are harmless
        server.media.speak((np.sin(np.arange(24_000) / 5) * 12_000).astype("<i2").tobytes())

        voice = await next_matching(
            session,
            topics.AUDIO_OUT,
            lambda m: isinstance(m, AudioFrame) and m.sample_rate_hz == 48_000,
        )
        assert isinstance(voice.msg, AudioFrame) and voice.msg.channels in (1, 2)
        samples = np.frombuffer(voice.payload[0], "<i2")
        assert len(samples) == 960 * voice.msg.channels  # 20 ms

        def rms(d: Delivery) -> float:
            x = np.frombuffer(d.payload[0], "<i2").astype(np.float64)
            return float(np.sqrt(np.mean(x * x)))

        async def loud_frame() -> Delivery:
            while rms(d := await next_matching(session, topics.AUDIO_OUT)) < 2000:
                pass
            return d

        await asyncio.wait_for(loud_frame(), TIMEOUT)  # the spoken voice comes through

        stats = await next_matching(
            session,
            topics.VIDEO_STATS,
            lambda m: isinstance(m, VideoStats) and m.frames_rendered >= 40,
        )
        assert isinstance(stats.msg, VideoStats)
        st = stats.msg
        assert st.connection_state == "connected"
        # in flight: the frames inside the lip-sync delay line (video_delay_ms) + one rendering
        in_flight = math.ceil(DisplaySettings().video_delay_ms / 1000 * 25) + 1
        assert 0 <= st.frames_received - st.frames_rendered - st.frames_dropped <= in_flight
        assert st.render_lag_ms_p50 < 40
    await server.close()
    streams = ffprobe(tmp_path / "display.mp4")
    video = next(s for s in streams if s["codec_name"] == "h264")
    assert (video["width"], video["height"]) == (512, 512)
    assert int(video["nb_read_frames"]) >= 40
    assert any(s["codec_name"] == "aac" for s in streams)


async def test_restarted_display_offers_and_renegotiates_after_failure(
    bus_settings: BusSettings, make_bus: Callable[..., object]
) -> None:
    session = await session_bus(make_bus)
    servers: list[Server] = []
    async with running_display(bus_settings, NullScreen(), session):
        # The session is already live when the display starts: it offers by itself.
        seen = asyncio.Event()
        keep = asyncio.create_task(
            publish_until_seen(
                session, topics.SESSION_STATE, SessionState(phase=SessionPhase.READY), seen
            )
        )
        try:
            for round_ in range(2):
                offer = await next_matching(session, topics.WEBRTC_LOCAL_OFFER)
                seen.set()
                assert isinstance(offer.msg, SdpMessage) and offer.msg.sdp_type == "offer"
                assert set(sdp_candidate_addresses(offer.msg.sdp)) == {"127.0.0.1"}
                server = Server()
                servers.append(server)
                session.publish(topics.WEBRTC_REMOTE_ANSWER, await server.answer(offer.msg))
                before = 0
                stats = await next_matching(
                    session,
                    topics.VIDEO_STATS,
                    lambda m: isinstance(m, VideoStats) and m.connection_state == "connected",
                )
                assert isinstance(stats.msg, VideoStats)
                before = stats.msg.frames_rendered
                await next_matching(
                    session,
                    topics.VIDEO_STATS,
                    lambda m, b=before: isinstance(m, VideoStats) and m.frames_rendered > b + 10,
                )
                if round_ == 0:
                    await server.close()  # the server side goes away: the display offers again
        finally:
            keep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keep
    for s in servers:
        await s.close()


async def test_screen_that_cannot_open_does_not_stop_the_service(
    bus_settings: BusSettings, make_bus: Callable[..., object], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hardware.screen import WindowScreen

    monkeypatch.delenv("DISPLAY", raising=False)
    session = await session_bus(make_bus)
    async with running_display(bus_settings, WindowScreen(), session):
        session.publish(topics.SESSION_STATE, SessionState(phase=SessionPhase.CONNECTING))
        stats = await next_matching(session, topics.VIDEO_STATS)
        assert isinstance(stats.msg, VideoStats) and stats.msg.frames_rendered == 0


class Recorder:
    """Everything the session's bus receives, with its arrival time, to wait on and count."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.seen: list[tuple[float, Delivery]] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for d in self.bus:
            self.seen.append((asyncio.get_running_loop().time(), d))
            self._changed.set()

    def on(self, topic: str) -> list[tuple[float, Delivery]]:
        return [(t, d) for t, d in self.seen if d.topic == topic]

    async def wait(self, pred: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def _connected(rec: Recorder) -> bool:
    return any(
        isinstance(d.msg, VideoStats) and d.msg.connection_state == "connected"
        for _, d in rec.on(topics.VIDEO_STATS)
    )


async def test_each_server_offer_is_answered_once_stamped_and_fast(
    bus_settings: BusSettings, make_bus: Callable[..., object]
) -> None:
    """Candidates that come before their offer are kept; the offer is answered within 1 s,
    once (a re-sent copy is ignored), stamped with its connection; an offer of a connection
    that is over is never answered; the display never offers by itself meanwhile."""
    session = await session_bus(make_bus)
    rec = Recorder(await session_bus(make_bus))  # sees what the session sees, from the start
    servers = [Server(), Server()]
    async with running_display(bus_settings, NullScreen(), session):
        session.publish(
            topics.SESSION_STATE, SessionState(phase=SessionPhase.CONNECTED, connection_id="c1")
        )
        # The server trickles its candidates, and they overtake the offer.
        stamped, candidates = _trickled(await servers[0].offer(), "c1")
        for c in candidates:
            session.publish(topics.WEBRTC_REMOTE_ICE, c)
        sent = asyncio.get_running_loop().time()
        session.publish(topics.WEBRTC_REMOTE_OFFER, stamped)
        session.publish(topics.WEBRTC_REMOTE_OFFER, stamped)  # the latch re-sends it
        await rec.wait(lambda: bool(rec.on(topics.WEBRTC_LOCAL_ANSWER)))
        at, answer = rec.on(topics.WEBRTC_LOCAL_ANSWER)[0]
        assert at - sent < 1.0, f"answered {at - sent:.2f} s after the offer"
        assert isinstance(answer.msg, SdpMessage) and answer.msg.connection_id == "c1"
        await servers[0].accept(answer.msg)
        await rec.wait(lambda: _connected(rec))  # only with the early candidates
        local_ice = [d.msg for _, d in rec.on(topics.WEBRTC_LOCAL_ICE)]
        assert local_ice and all(
            isinstance(c, IceCandidate) and c.connection_id == "c1" for c in local_ice
        )

        # The session reconnects: c1 is over. Its offer (late, re-sent) is never answered.
        session.publish(
            topics.SESSION_STATE, SessionState(phase=SessionPhase.CONNECTED, connection_id="c2")
        )
        session.publish(topics.WEBRTC_REMOTE_OFFER, stamped)
        session.publish(
            topics.WEBRTC_REMOTE_OFFER,
            msgspec.structs.replace(await servers[1].offer(), connection_id="c2"),
        )
        await rec.wait(lambda: len(rec.on(topics.WEBRTC_LOCAL_ANSWER)) >= 2)
        answers = [d.msg for _, d in rec.on(topics.WEBRTC_LOCAL_ANSWER)]
        assert [a.connection_id for a in answers if isinstance(a, SdpMessage)] == ["c1", "c2"]
        second = answers[1]
        assert isinstance(second, SdpMessage)
        await servers[1].accept(second)
        n = len(rec.on(topics.VIDEO_STATS))
        await rec.wait(
            lambda: any(
                isinstance(d.msg, VideoStats) and d.msg.connection_state == "connected"
                for _, d in rec.on(topics.VIDEO_STATS)[n:]
            )
        )
        assert len(rec.on(topics.WEBRTC_LOCAL_ANSWER)) == 2
        assert rec.on(topics.WEBRTC_LOCAL_OFFER) == []
    await rec.close()
    for s in servers:
        await s.close()


def _trickled(offer: SdpMessage, connection_id: str) -> tuple[SdpMessage, list[IceCandidate]]:
    """The offer as a trickling server sends it: candidates apart, no end-of-candidates."""
    bare = filter_sdp_candidates(offer.sdp, lambda address: False)
    bare = bare.replace("a=end-of-candidates\r\n", "")
    first_section = offer.sdp.split("m=")[1]  # BUNDLE: the first transport carries it all
    candidates = [
        IceCandidate(
            candidate=line.removeprefix("a="),
            sdp_mid="0",
            sdp_mline_index=0,
            connection_id=connection_id,
        )
        for line in first_section.splitlines()
        if line.startswith("a=candidate:")
    ]
    assert candidates
    return msgspec.structs.replace(offer, sdp=bare, connection_id=connection_id), candidates


async def test_a_display_that_starts_late_answers_the_latched_offer(
    bus_settings: BusSettings, make_bus: Callable[..., object]
) -> None:
    """The session published the offer and candidates (latched) before the display was up:
    the display gets them after its start, answers the offer (never offers by itself), and
    the avatar connects."""
    session = await session_bus(make_bus)
    rec = Recorder(await session_bus(make_bus))  # sees what the session sees, from the start
    server = Server()
    offer, candidates = _trickled(await server.offer(), "c1")
    session.publish(topics.WEBRTC_REMOTE_OFFER, offer, latch=1)
    for c in candidates:
        session.publish(topics.WEBRTC_REMOTE_ICE, c, latch=32)
    seen = asyncio.Event()
    state = SessionState(phase=SessionPhase.READY, connection_id="c1")
    keep = asyncio.create_task(publish_until_seen(session, topics.SESSION_STATE, state, seen))
    started = asyncio.get_running_loop().time()
    try:
        async with running_display(bus_settings, NullScreen(), session):
            await rec.wait(lambda: bool(rec.on(topics.WEBRTC_LOCAL_ANSWER)))
            at, answer = rec.on(topics.WEBRTC_LOCAL_ANSWER)[0]
            assert isinstance(answer.msg, SdpMessage) and answer.msg.connection_id == "c1"
            session.unlatch(topics.WEBRTC_REMOTE_OFFER)  # as the session does on the answer
            session.unlatch(topics.WEBRTC_REMOTE_ICE)
            await server.accept(answer.msg)
            await rec.wait(lambda: _connected(rec))
            assert rec.on(topics.WEBRTC_LOCAL_OFFER) == []
            assert len(rec.on(topics.WEBRTC_LOCAL_ANSWER)) == 1
            # the display's own start (bus, screen) included; 0.05 s measured here
            assert at - started < 2.0, f"answered {at - started:.2f} s after the display started"
    finally:
        seen.set()
        await keep
        await rec.close()
        await server.close()


class GatedTrack(MediaStreamTrack):
    """A server track whose frames stop while ``flowing`` is clear (the link stays up)."""

    def __init__(self, inner: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = inner.kind
        self.inner = inner
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def recv(self) -> Any:
        await self.flowing.wait()
        return await self.inner.recv()


async def test_a_stalled_avatar_is_renegotiated(
    bus_settings: BusSettings, make_bus: Callable[..., object]
) -> None:
    """The link stays up but the server's tracks stop: after media_stall_s the display makes
    a fresh offer (stamped with the session's connection)."""
    session = await session_bus(make_bus)
    rec = Recorder(await session_bus(make_bus))
    server = Server()
    tracks = [GatedTrack(server.media.video), GatedTrack(server.media.audio)]
    async with running_display(bus_settings, NullScreen(), session, media_stall_s=1.0):
        session.publish(
            topics.SESSION_STATE, SessionState(phase=SessionPhase.READY, connection_id="c7")
        )
        for t in tracks:
            server.pc.addTrack(t)
        await server.pc.setLocalDescription(await server.pc.createOffer())
        offer = SdpMessage(sdp_type="offer", sdp=server.pc.localDescription.sdp, connection_id="c7")
        session.publish(topics.WEBRTC_REMOTE_OFFER, offer)
        await rec.wait(lambda: bool(rec.on(topics.WEBRTC_LOCAL_ANSWER)))
        answer = rec.on(topics.WEBRTC_LOCAL_ANSWER)[0][1].msg
        assert isinstance(answer, SdpMessage)
        await server.accept(answer)
        await rec.wait(
            lambda: any(
                isinstance(d.msg, VideoStats) and d.msg.frames_received > 10
                for _, d in rec.on(topics.VIDEO_STATS)
            )
        )
        assert rec.on(topics.WEBRTC_LOCAL_OFFER) == []
        stopped = asyncio.get_running_loop().time()
        for t in tracks:
            t.flowing.clear()
        await rec.wait(lambda: bool(rec.on(topics.WEBRTC_LOCAL_OFFER)), timeout=5.0)
        at, ours = rec.on(topics.WEBRTC_LOCAL_OFFER)[0]
        assert isinstance(ours.msg, SdpMessage) and ours.msg.connection_id == "c7"
        assert 1.0 <= at - stopped < 2.5, f"renegotiated {at - stopped:.2f} s after the stall"
    for t in tracks:
        t.flowing.set()
    await rec.close()
    await server.close()


class SlowCloseScreen(NullScreen):
    """A screen whose close takes 0.5 s, as an MP4's last frames and index on a slow disk."""

    def __init__(self) -> None:
        super().__init__()
        self.closed_on: str | None = None

    def close(self) -> None:
        time.sleep(0.5)  # the device's own slowness, not a wait for an event
        self.closed_on = threading.current_thread().name


async def test_finishing_the_screen_does_not_block_the_event_loop(
    bus_settings: BusSettings, make_bus: Callable[..., object]
) -> None:
    session = await session_bus(make_bus)
    screen = SlowCloseScreen()
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def ticker() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            now = loop.time()
            gaps.append(now - last)
            last = now

    async with running_display(bus_settings, screen, session):
        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)  # a few ticks before the stop
    tick.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await tick
    # finished off the loop's thread, by the worker that drives the screen
    assert screen.closed_on is not None and screen.closed_on.startswith("screen")
    assert max(gaps) < 0.25, f"the loop stalled {max(gaps) * 1000:.0f} ms while closing"
