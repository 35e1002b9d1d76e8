"""The display service: the WebRTC peer and the screen.

::

    webrtc.remote.offer/answer/ice ──▶ DisplayPeer (aiortc) ──▶ webrtc.local.answer/offer/ice
                                          │ video frames            │ audio frames
                               latest-frame-wins slot          audio.out (PCM s16, track rate)
                                          │
    session.state, vad.state,      DisplayModel ──overlay──▶ Composer ──▶ Screen (window/file/null)
    navtalk.speech, speaker.state,                 (screen thread: decode → compose → show)
    navtalk.transcript.*, control.barge_in
                                                   counters + render lag ──▶ video.stats

Decisions live in the sans-I/O parts (:mod:`agent.video.compose`,
:mod:`agent.video.negotiation`); this module only feeds them and carries out
what they say. Decoding and composing run on a worker thread, and so does every
call of the screen, from open to close: the MP4 encoder and the window's
``imshow``/``waitKey`` never block the event loop (Qt's HighGUI is driven from that
one thread; see :mod:`hardware.screen`).
"""

from __future__ import annotations

# OpenCV before PyAV/aiortc, or OpenCV's Qt window hangs (see hardware/screen.py).
import cv2  # isort: split

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import av
import msgspec
import numpy as np

from agent import topics
from agent.bus import Bus, Delivery
from agent.config import Settings
from agent.errors import DeviceError, NavtalkAgentError
from agent.messages import (
    AssistantTranscript,
    AudioFrame,
    BargeIn,
    ConnectionEvent,
    ConnectionStatus,
    IceCandidate,
    IceServer,
    SdpMessage,
    ServerSpeech,
    SessionPhase,
    SessionState,
    SpeakerState,
    UserTranscript,
    VadState,
    VideoStats,
)
from agent.video.compose import Composer, DisplayModel, Image, Overlay, start_hint
from agent.video.ice import ice_host
from agent.video.negotiation import (
    Action,
    CandidateVerdict,
    NegotiationPolicy,
    OfferVerdict,
    RemoteSignals,
)
from agent.video.peer import DisplayPeer
from agent.video.settings import DisplaySettings
from hardware.screen import NullScreen, Screen, open_screen

__all__ = ["LIVE_PHASES", "navtalk_url", "run"]

log = logging.getLogger(__name__)

LIVE_PHASES = frozenset({SessionPhase.CONNECTED, SessionPhase.CREATED, SessionPhase.READY})
TICK_S = 0.25  # how often the negotiation policy looks at its deadlines
LAG_SAMPLES = 1000  # render-lag samples kept for the percentiles


@dataclass(slots=True)
class _Pending:
    frame: Any  # av.VideoFrame
    generation: int
    received: float  # monotonic seconds


class _Display:
    def __init__(self, ds: DisplaySettings, bus: Bus, screen: Screen, ice_host: str) -> None:
        self.ds = ds
        self.bus = bus
        self.screen = screen
        self.model = DisplayModel(ds.caption_hold_s)
        self.policy = NegotiationPolicy(ds.renegotiation_timeout_s, ds.media_stall_s)
        self.signals = RemoteSignals()
        self._negotiating = asyncio.Lock()  # one negotiation step on the peer at a time
        self.composer = Composer(
            ds.width,
            ds.height,
            captions=ds.captions,
            font_scale=ds.caption_font_scale,
            badge=ds.badge,
            idle_image=_load_idle_image(ds.idle_image),
        )
        self.peer = DisplayPeer(ice_host, self._on_frame, self._on_state)
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="screen")
        # voice waiting for the screen worker: at most 2 s of 20 ms frames
        self._audio_pending: collections.deque[tuple[bytes, int, int, float]] = collections.deque(
            maxlen=100
        )
        self._audio_job: concurrent.futures.Future[None] | None = None
        self.audio_dropped = 0
        self.ice_servers: list[IceServer] = []
        self._slot: collections.deque[_Pending] = collections.deque()  # oldest first
        self._delay_s = ds.video_delay_ms / 1000
        # Frames waiting: the delay line (up to 60 fps) plus the latest-frame-wins queue.
        self._slot_limit = ds.frame_queue + int(self._delay_s * 60) + 1
        self._last_render = 0.0
        self._frame_ready = asyncio.Event()
        self._last_avatar: Image | None = None
        self._video_generation = 0  # generation whose video is on screen
        self._audio_resampler: av.AudioResampler | None = None
        self.received = 0
        self.rendered = 0
        self.dropped = 0
        self.audio_frames = 0
        self._lags: collections.deque[float] = collections.deque(maxlen=LAG_SAMPLES)
        self._tasks: list[asyncio.Task[None]] = []

    # --- media from the peer (event loop) -------------------------------------------------

    def _on_frame(self, kind: str, generation: int, frame: Any) -> None:
        if generation != self.peer.generation:
            return  # a stale connection's last frames
        now = time.monotonic()
        self.policy.on_frame(kind, now)
        if kind == "video":
            self.received += 1
            if len(self._slot) >= self._slot_limit:
                self._slot.popleft()
                self.dropped += 1
            if not self._slot:  # else the render loop already waits for an earlier one
                self._frame_ready.set()
            self._slot.append(_Pending(frame, generation, now))
            if self._video_generation != generation:
                self._video_generation = generation
                self.model.on_video(True, now)
                # the connection's first frame: say so now, not at the next stats period
                self.bus.publish(topics.VIDEO_STATS, self.stats())
        elif kind == "audio":
            self._forward_audio(frame, generation, now)

    def _forward_audio(self, frame: Any, generation: int, now: float) -> None:
        if frame.format.name != "s16":
            if self._audio_resampler is None:
                self._audio_resampler = av.AudioResampler(
                    format="s16", layout=frame.layout.name, rate=frame.sample_rate
                )
            frames = self._audio_resampler.resample(frame)
        else:
            frames = [frame]
        for f in frames:
            channels = len(f.layout.channels)
            pcm = np.ascontiguousarray(f.to_ndarray().reshape(-1), dtype="<i2")
            x = pcm.astype(np.float32)
            self.model.on_voice_level(
                float(np.sqrt(np.mean(x * x))) / 32768.0 if len(x) else 0, now
            )
            data = pcm.tobytes()
            self.audio_frames += 1
            if self.ds.forward_audio:
                self.bus.publish(
                    topics.AUDIO_OUT,
                    AudioFrame(
                        sample_rate_hz=int(f.sample_rate),
                        channels=channels,
                        capture_mono_ns=int(now * 1e9),
                        # One continuous voice per connection, not one stream per utterance:
                        # no id, or the speaker would mute the rest of the call after a
                        # barge-in (it drops the rest of an interrupted stream).
                        stream_id="",
                    ),
                    data,
                )
            if not self.screen.takes_audio:
                continue
            if self.screen.main_thread_only:
                self._write_audio(data, int(f.sample_rate), channels, now)
            else:
                self._queue_audio(data, int(f.sample_rate), channels, now)

    def _queue_audio(self, data: bytes, rate: int, channels: int, at_s: float) -> None:
        """Hand voice to the screen worker: a bounded queue drained by at most one job, so a
        worker that falls behind (a loaded CPU) drops the oldest audio instead of piling up
        jobs (which also made the stop wait for all of them)."""
        if len(self._audio_pending) == self._audio_pending.maxlen:
            self.audio_dropped += 1
        self._audio_pending.append((data, rate, channels, at_s))
        if self._audio_job is None or self._audio_job.done():
            self._audio_job = self.executor.submit(self._drain_audio)

    def _drain_audio(self) -> None:  # the screen worker
        while True:
            try:
                data, rate, channels, at_s = self._audio_pending.popleft()
            except IndexError:
                return
            self._write_audio(data, rate, channels, at_s)

    def _write_audio(self, data: bytes, rate: int, channels: int, at_s: float) -> None:
        try:
            self.screen.write_audio(data, rate, channels, at_s)
        except Exception:
            log.exception("screen audio write failed")

    def _on_state(self, generation: int, state: str) -> None:
        if generation != self.peer.generation:
            return
        now = time.monotonic()
        if state in ("failed", "closed"):
            self._video_lost(now)
        if self.policy.on_connection_state(state, now) is Action.OFFER:
            self._spawn(self._offer(f"connection {state}"))

    # --- rendering -------------------------------------------------------------------------

    async def render_loop(self) -> None:
        """Show each frame when it is due (received + video delay); when several are due,
        only the newest is shown (latest-frame-wins). With no video, redraw at idle_fps."""
        loop = asyncio.get_running_loop()
        idle_period = 1.0 / self.ds.idle_fps
        while True:
            self._frame_ready.clear()
            now = time.monotonic()
            timeout = idle_period - (now - self._last_render)
            if self._slot:
                timeout = min(timeout, self._slot[0].received + self._delay_s - now)
            if timeout > 0:
                with contextlib.suppress(TimeoutError):  # not wait_for: see agent/bus.py
                    async with asyncio.timeout(timeout):
                        await self._frame_ready.wait()
            now = time.monotonic()
            item: _Pending | None = None
            while self._slot and self._slot[0].received + self._delay_s <= now:
                if item is not None:
                    self.dropped += 1
                item = self._slot.popleft()
            if item is None and now - self._last_render < idle_period:
                continue  # woken by a frame that is not due yet
            self._last_render = now
            overlay = self.model.overlay(now)
            try:
                if self.screen.main_thread_only:
                    canvas, due = await loop.run_in_executor(
                        self.executor, self._prepare, item, overlay
                    )
                    self.screen.show(canvas, due)
                else:  # one job, one wake-up: decode, compose and show on the worker
                    due = await loop.run_in_executor(
                        self.executor, self._prepare_and_show, item, overlay
                    )
                if item is not None:
                    self.rendered += 1
                    self._lags.append(time.monotonic() - due)  # lag beyond the intended delay
            except DeviceError as exc:
                log.error("screen failed, continuing without it: %s", exc)
                self.screen = NullScreen()

    def _prepare(self, item: _Pending | None, overlay: Overlay) -> tuple[Image, float]:
        """Worker thread: decode and compose; returns the canvas and when it is due."""
        if item is not None:
            self._last_avatar = item.frame.to_ndarray(format="bgr24")
        avatar = self._last_avatar if self._video_generation else None
        canvas = self.composer.compose(avatar, overlay)
        due = item.received + self._delay_s if item is not None else time.monotonic()
        return canvas, due

    def _prepare_and_show(self, item: _Pending | None, overlay: Overlay) -> float:
        """Worker thread: the composer's buffer is shown before the next frame reuses it."""
        canvas, due = self._prepare(item, overlay)
        self.screen.show(canvas, due)
        return due

    async def screen_call(self, fn: Any, *args: Any) -> Any:
        """Run a screen method on the thread the screen needs (main or the screen worker)."""
        if self.screen.main_thread_only:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def stats(self) -> VideoStats:
        lags = np.array(self._lags) * 1000 if self._lags else np.zeros(1)
        return VideoStats(
            frames_received=self.received,
            frames_rendered=self.rendered,
            frames_dropped=self.dropped,
            render_lag_ms_p50=round(float(np.percentile(lags, 50)), 2),
            render_lag_ms_p99=round(float(np.percentile(lags, 99)), 2),
            connection_state=self.peer.connection_state,
        )

    async def stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ds.stats_interval_s)
            st = self.stats()
            self.bus.publish(topics.VIDEO_STATS, st)
            log.debug(
                "> video.stats received=%d rendered=%d dropped=%d lag p50=%.1f ms",
                st.frames_received,
                st.frames_rendered,
                st.frames_dropped,
                st.render_lag_ms_p50,
            )

    # --- signaling ----------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _offer(self, why: str) -> None:
        async with self._negotiating:
            # Never while a server offer is being answered (it wins; checked again below, as
            # one may arrive while ours is being built).
            if not self.policy.may_offer:
                return
            now = time.monotonic()
            self.policy.on_offer_sent(now)  # also when it fails: the timeout paces the retries
            self._video_lost(now)
            connection_id = self.signals.current
            self.signals.negotiating(connection_id)
            try:
                offer = await self.peer.offer(self.ice_servers)
            except Exception:
                log.exception("cannot make an offer")
                return
            if not self.policy.may_offer:
                log.info("= our offer is dropped: a server offer came meanwhile")
                return
            log.info(
                "> webrtc.local.offer (%s), connection %s, generation %d",
                why,
                connection_id or "?",
                self.peer.generation,
            )
            self.bus.publish(
                topics.WEBRTC_LOCAL_OFFER,
                msgspec.structs.replace(offer, connection_id=connection_id),
            )
            self._trickle(connection_id)

    def _video_lost(self, now: float) -> None:
        """No video on screen until the next connection delivers some."""
        self.model.on_video(False, now)
        self._video_generation = 0

    def _trickle(self, connection_id: str) -> None:
        if not self.ds.trickle_local_ice:
            return
        candidates = self.peer.local_candidates()
        for c in candidates:
            self.bus.publish(
                topics.WEBRTC_LOCAL_ICE, msgspec.structs.replace(c, connection_id=connection_id)
            )
        log.info("> webrtc.local.ice x%d", len(candidates))

    async def tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            stalled = self.policy.stalled(now)
            if self.policy.tick(now) is Action.OFFER:
                await self._offer(
                    f"{stalled} stalled" if stalled else f"{self.policy.step} timed out"
                )

    async def handle(self, d: Delivery) -> None:
        msg, now = d.msg, time.monotonic()
        if isinstance(msg, SdpMessage) and d.topic == topics.WEBRTC_REMOTE_OFFER:
            await self._answer(msg, now)
        elif isinstance(msg, SdpMessage) and d.topic == topics.WEBRTC_REMOTE_ANSWER:
            log.info("< webrtc.remote.answer, connection %s", msg.connection_id or "?")
            if not self.signals.answer_matches(msg.connection_id):
                log.info("= answer ignored: not for our offer's connection")
                return
            async with self._negotiating:
                if await self.peer.accept_answer(msg):
                    self.policy.on_answer(time.monotonic())
        elif isinstance(msg, IceCandidate):
            verdict = self.signals.candidate(msg)
            log.debug("< webrtc.remote.ice of connection %s: %s", msg.connection_id, verdict)
            if verdict is CandidateVerdict.ADD:
                async with self._negotiating:
                    await self.peer.add_candidate(msg)
        elif isinstance(msg, SessionState):
            if msg.phase in LIVE_PHASES:
                self.signals.on_session(msg.connection_id)
            if msg.ice_servers:
                self.ice_servers = list(msg.ice_servers)
            live = msg.phase in LIVE_PHASES
            self.model.on_session(live, now)
            self.model.on_visit(msg.visit, msg.visit_detail, now)
            if self.policy.on_session(live, now) is Action.CLOSE:
                log.info("= session %s: closing the peer connection", msg.phase)
                self._video_generation = 0
                await self.peer.close()
        elif isinstance(msg, ConnectionEvent):
            if msg.status is ConnectionStatus.SUCCESS and msg.ice_servers:
                self.ice_servers = list(msg.ice_servers)
        elif isinstance(msg, UserTranscript):
            self.model.on_user_transcript(msg.text, now)
        elif isinstance(msg, AssistantTranscript):
            self.model.on_assistant_transcript(msg.response_id, msg.text, msg.final, now)
        elif isinstance(msg, VadState | ServerSpeech):
            self.model.on_guest_speech(
                msg.speaking if isinstance(msg, VadState) else msg.started, now
            )
        elif isinstance(msg, SpeakerState):
            self.model.on_speaker(msg.playing, now)
        elif isinstance(msg, BargeIn):
            self.model.on_barge_in(now)

    async def _answer(self, offer: SdpMessage, received: float) -> None:
        cid = offer.connection_id
        verdict = self.signals.offer(cid, offer.sdp)
        if verdict is not OfferVerdict.ANSWER:
            log.info("< webrtc.remote.offer of connection %s ignored: %s", cid or "?", verdict)
            return
        log.info("< webrtc.remote.offer (%d bytes), connection %s", len(offer.sdp), cid or "?")
        self.policy.on_remote_offer_received()
        async with self._negotiating:
            self._video_lost(time.monotonic())
            held = self.signals.negotiating(cid)
            try:
                answer = await self.peer.answer(offer, offer.ice_servers or self.ice_servers)
            except Exception:
                self.policy.on_answer_failed(time.monotonic())
                raise
            for c in held:
                await self.peer.add_candidate(c)
            if held:
                log.info("= %d early remote candidate(s) added", len(held))
            self.policy.on_remote_offer(time.monotonic())
            self.bus.publish(
                topics.WEBRTC_LOCAL_ANSWER, msgspec.structs.replace(answer, connection_id=cid)
            )
            log.info(
                "> webrtc.local.answer, connection %s, generation %d, %.0f ms after the offer",
                cid or "?",
                self.peer.generation,
                (time.monotonic() - received) * 1000,
            )
            self._trickle(cid)

    async def message_loop(self) -> None:
        async for d in self.bus:
            try:
                await self.handle(d)
            except NavtalkAgentError as exc:
                log.warning("< %s not handled: %s", d.topic, exc)
            except Exception:
                log.exception("< %s: handler failed; continuing", d.topic)

    async def close(self) -> None:
        try:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.peer.close()
        finally:  # a second cancel (the runtime's) must not leave the MP4 unfinished
            await self._finish_screen()

    def _close_screen(self) -> None:
        """Flush the voice and close the screen (on the thread that drives the screen)."""
        try:
            self._drain_audio()
            self.screen.close()
        except Exception:
            log.exception("closing the screen failed")

    def _finish_screen_blocking(self) -> None:
        """The worker ends the frame it is on, then closes the screen as its last job (a
        window must be closed by the thread that opened it), and stops."""
        try:
            self.executor.submit(self._close_screen)
        except RuntimeError:  # shut down already (not expected): close from here
            self._close_screen()
        self.executor.shutdown(wait=True)

    async def _finish_screen(self) -> None:
        """Finish the screen off the event loop (an MP4's last frames and index take a while),
        on a thread of its own, not an executor job: one was seen never to complete in a
        cancelled task, which left the MP4 without its index. The thread is not a daemon, so
        a second cancel (or the loop's end) cannot cut the file short: the interpreter waits
        for it. A main-thread-only screen (the window) is closed here, on the loop's thread."""
        if self.screen.main_thread_only:
            self.executor.shutdown(wait=True)
            self._close_screen()
            return
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not finished.done():
                finished.set_result(None)

        def finish() -> None:
            try:
                self._finish_screen_blocking()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(wake)

        threading.Thread(target=finish, name="screen-close").start()
        await asyncio.shield(finished)


def navtalk_url(settings: Settings) -> str:
    """The URL the session connects to (as services.session.effective_url, without importing
    the session's WebSocket stack into this process)."""
    emu = settings.emulator
    if emu.embedded:
        host = "127.0.0.1" if emu.host in ("0.0.0.0", "") else emu.host
        return f"ws://{host}:{emu.port}/"
    return settings.navtalk.url


def _load_idle_image(path: str) -> Image | None:
    if not path:
        return None
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        log.warning("= idle image %r cannot be read; using the drawn placeholder", path)
        return None
    return np.asarray(image, dtype=np.uint8)


TOPICS = topics.ServiceTopics(
    reads=(
        topics.WEBRTC_REMOTE_OFFER,
        topics.WEBRTC_REMOTE_ANSWER,
        topics.WEBRTC_REMOTE_ICE,
        topics.SESSION_STATE,
        topics.NAVTALK_CONNECTION,
        topics.NAVTALK_TRANSCRIPT_USER,
        topics.NAVTALK_TRANSCRIPT_ASSISTANT,
        topics.NAVTALK_SPEECH,
        topics.VAD_STATE,
        topics.SPEAKER_STATE,
        topics.CONTROL_BARGE_IN,
    ),
    writes=(
        topics.WEBRTC_LOCAL_OFFER,
        topics.WEBRTC_LOCAL_ANSWER,
        topics.WEBRTC_LOCAL_ICE,
        topics.AUDIO_OUT,
        topics.VIDEO_STATS,
    ),
)


async def run(settings: Settings, bus: Bus, *, screen: Screen | None = None) -> None:
    """Serve the display until cancelled. ``screen`` is built from settings when not given
    (and is opened and closed here either way)."""
    ds = settings.display
    host = ice_host(ds.webrtc_host, navtalk_url(settings))  # ConfigError: nothing could connect
    log.info("= ICE host candidates on %s", host or "every interface")
    bus.declare(TOPICS)
    await bus.start()
    if screen is None:
        screen = open_screen(ds)
    display = _Display(ds, bus, screen, host)
    display.model.start_hint = start_hint(settings.session.start_triggers)  # the idle screen's
    try:
        await display.screen_call(screen.open)
    except DeviceError as exc:
        log.error("= screen %s unavailable (%s); video is received but not shown", ds.backend, exc)
        display.screen = NullScreen()
    loops = [
        asyncio.create_task(display.message_loop(), name="display-messages"),
        asyncio.create_task(display.render_loop(), name="display-render"),
        asyncio.create_task(display.tick_loop(), name="display-negotiation"),
        asyncio.create_task(display.stats_loop(), name="display-stats"),
    ]
    try:
        done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # a loop that ended on its own: raise its error to the runtime
    finally:
        try:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
        finally:  # even if cancelled again meanwhile: the MP4 must be finished
            await display.close()
            bus.publish(topics.VIDEO_STATS, display.stats())
