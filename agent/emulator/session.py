"""The I/O of one emulator connection: the socket, timers, the speech queue, recognition in an
executor and the peer connection, around a sans-I/O :class:`~agent.emulator.brain.Brain`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from agent.emulator.brain import Brain
from agent.emulator.conformance import Violation
from agent.emulator.faults import Faults
from agent.emulator.outputs import (
    CancelResponses,
    Close,
    Drop,
    Enqueue,
    Output,
    Recognize,
    RemoteIce,
    RemoteSdp,
    Report,
    Respond,
    Send,
    StartWebRtc,
)
from agent.emulator.rtc import RtcLink
from agent.emulator.speech import response_frames
from agent.emulator.stats import SessionStats

if TYPE_CHECKING:
    from agent.emulator.server import Emulator

__all__ = ["Observer", "Recognizer", "SessionRecord", "Session"]

logger = logging.getLogger(__name__)

RESPONSE_QUEUE = 32

# observer(record, frame type, CLOCK_MONOTONIC ns at receipt, frame text): tests, benchmarks
Observer = Callable[["SessionRecord", str, int, str], None]


class Recognizer(Protocol):
    def recognize(self, pcm24k: bytes) -> str | None: ...


@dataclass(slots=True)
class SessionRecord:
    """One client session, as the emulator saw it (for tests, benchmarks and logs)."""

    index: int
    session_id: str
    query: str  # redacted
    stats: SessionStats
    faults: Faults
    opened_mono: float
    closed_mono: float | None = None
    close_code: int | None = None
    sent: list[str] = field(default_factory=list)  # types of the frames we sent, in order
    rtc_states: list[str] = field(default_factory=list)  # connectionState changes
    client_offers: int = 0
    offers_sent_mono: list[float] = field(default_factory=list)  # server offers sent
    answers_mono: list[float] = field(default_factory=list)  # client answers received
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def violations(self) -> list[Violation]:
        return self.stats.violations


class Session:
    def __init__(
        self,
        emu: Emulator,
        ws: ServerConnection,
        brain: Brain,
        record: SessionRecord,
        recognizer: Recognizer,
        *,
        license_given: bool,
        executor: concurrent.futures.Executor | None,
    ) -> None:
        self.emu = emu
        self.ws = ws
        self.brain = brain
        self.record = record
        self.recognizer = recognizer
        self.license_given = license_given
        self.executor = executor
        self.settings = emu.settings
        self._wake = asyncio.Event()
        self._responses: asyncio.Queue[Respond | Enqueue] = asyncio.Queue(RESPONSE_QUEUE)
        self._speaking: asyncio.Task[None] | None = None
        self._current: str | None = None  # response id in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self.rtc = RtcLink(
            self.settings,
            self.send,
            on_state=record.rtc_states.append,
            on_offer_sent=self._offer_sent,
        )
        self._cleaned = False

    @property
    def media(self) -> Any:
        return self.rtc.media

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("emulator task %s failed", task.get_name(), exc_info=task.exception())

    async def run(self) -> None:
        self._spawn(self._timer_loop(), "emu-timers")
        self._spawn(self._speaker_loop(), "emu-speaker")
        try:
            await self.execute(self.brain.open(time.monotonic(), license_given=self.license_given))
            async for message in self.ws:
                now_ns = time.monotonic_ns()
                if isinstance(message, bytes):
                    await self.execute(self.brain.receive_bytes(len(message), now_ns / 1e9))
                    continue
                if self.emu.observer is not None:
                    self.emu.observer(self.record, _peek_type(message), now_ns, message)
                await self.execute(self.brain.receive_text(message, now_ns / 1e9))
                self._wake.set()
        except ConnectionClosed:
            pass
        finally:
            self.record.close_code = self.ws.close_code
            logger.info(
                "= emulator: session %d closed (code %s)", self.record.index, self.ws.close_code
            )

    async def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.rtc.close()
        self.record.client_offers = self.rtc.client_offers
        self.record.closed_mono = time.monotonic()
        self.record.closed.set()

    async def execute(self, outputs: list[Output]) -> None:
        for out in outputs:
            match out:
                case Send(frame=frame):
                    await self.send(frame)
                case Respond() | Enqueue():
                    try:
                        self._responses.put_nowait(out)
                    except asyncio.QueueFull:
                        logger.warning(
                            "= emulator: response queue full; dropping %s", out.response_id
                        )
                        await self.execute(self.brain.response_done(out.response_id, _now()))
                case CancelResponses():
                    await self._cancel_responses()
                case StartWebRtc():
                    self.rtc.start_offer()
                case RemoteSdp() | RemoteIce():
                    if isinstance(out, RemoteSdp) and out.sdp_type == "answer":
                        self.record.answers_mono.append(time.monotonic())
                    self._spawn(self._signal(out), "emu-signal")
                case Recognize():
                    self._spawn(self._recognize(out), "emu-recognize")
                case Report(violation=violation):
                    await self.emu.report(self, violation)
                case Close(code=code, reason=reason):
                    await self.ws.close(code, reason)
                case Drop():
                    self.ws.transport.abort()

    async def send(self, frame: Mapping[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        kind = frame.get("type", "?") if isinstance(frame, Mapping) else "(raw)"
        self.record.sent.append(str(kind))
        try:
            await self.ws.send(text)
        except ConnectionClosed:
            pass

    def _offer_sent(self) -> None:
        self.record.offers_sent_mono.append(time.monotonic())
        self._spawn(self.execute(self.brain.offer_sent(_now())), "emu-offer-sent")
        self._wake.set()

    async def _signal(self, out: RemoteSdp | RemoteIce) -> None:
        await self.rtc.signal(out)
        self.record.client_offers = self.rtc.client_offers

    async def _recognize(self, out: Recognize) -> None:
        if self.executor is None:
            line, cpu_s = _timed_recognize(self.recognizer, out.pcm)
        else:
            loop = asyncio.get_running_loop()
            line, cpu_s = await loop.run_in_executor(
                self.executor, _timed_recognize, self.recognizer, out.pcm
            )
        logger.info("= emulator heard %r in %.2f s of speech", line, out.duration_s)
        self.emu.recognition_cpu_s += cpu_s
        self.emu.recognized_audio_s += len(out.pcm) / 48_000  # PCM16 24 kHz
        await self.execute(self.brain.recognized(out.utterance_id, line, _now()))

    # --- timers and speech ----------------------------------------------------------------

    async def _timer_loop(self) -> None:
        while True:
            due = self.brain.next_timer()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.execute(self.brain.tick(time.monotonic()))

    async def _speaker_loop(self) -> None:
        while True:
            item = await self._responses.get()
            self._current = item.response_id
            coro = self._speak(item) if isinstance(item, Respond) else self._emit(item)
            self._speaking = asyncio.create_task(coro, name="emu-speak")
            try:
                await self._speaking
            except asyncio.CancelledError:
                if self._speaking.cancelled() and not _current_cancelling():
                    continue  # barge-in cancelled the response, not us
                raise
            finally:
                self._speaking = None
                self._current = None

    async def _emit(self, item: Enqueue) -> None:
        # The response is over once its last frame is out: tell the brain just before, so a
        # client answering at once (function_call_output + response.create) finds no
        # active response.
        for i, frame in enumerate(item.frames):
            if i == len(item.frames) - 1:
                await self.execute(self.brain.response_done(item.response_id, _now()))
            await self.send(frame)
            self.brain.response_started(item.response_id, _now())

    async def _speak(self, response: Respond) -> None:
        pcm = await self.emu.tts.synthesize(response.text)
        if self.media is not None:
            self.media.speak(pcm)
        frames = response_frames(response.response_id, response.text, pcm)
        start = time.monotonic()
        pace = self.settings.pace
        for i, (at, frame) in enumerate(frames):
            if frame["type"] == "realtime.response.audio.delta" and not (
                self.settings.send_audio_deltas
            ):
                continue
            delay = start + at / pace - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if i == len(frames) - 1:
                await self.execute(self.brain.response_done(response.response_id, _now()))
            await self.send(frame)
            self.brain.response_started(response.response_id, _now())

    async def _cancel_responses(self) -> None:
        while not self._responses.empty():
            dropped = self._responses.get_nowait()
            self.brain.response_done(dropped.response_id, _now())
        if self.media is not None:
            self.media.stop_speaking()
        task, current = self._speaking, self._current
        if task is not None and not task.done():
            task.cancel()
            logger.info("= emulator: barge-in, response %s cancelled", current)
            if current is not None:
                self.brain.response_done(current, _now())
            await self.send({"type": "realtime.response.audio.done", "data": {}})


def _timed_recognize(recognizer: Recognizer, pcm: bytes) -> tuple[str | None, float]:
    started = time.thread_time()  # the CPU of this (executor) thread only
    line = recognizer.recognize(pcm)
    return line, time.thread_time() - started


def _now() -> float:
    return time.monotonic()


def _current_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _peek_type(text: str) -> str:
    """The ``type`` of a client frame without parsing it all (for the observer hook)."""
    at = text.find('"type"')
    if at < 0:
        return ""
    start = text.find('"', text.find(":", at) + 1)
    end = text.find('"', start + 1)
    return text[start + 1 : end] if start >= 0 and end > start else ""
