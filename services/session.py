"""The session service: the NavTalk WebSocket, the conversation history and the session policy.

A thin asyncio shell around :class:`agent.navtalk.protocol.NavTalkProtocol`::

    bus ─ audio.mic, mic.preroll ───────────▶ backlog ─▶ realtime.input_audio_buffer.append
    bus ─ tool.catalog ─────────────────────▶ realtime.input_function_call (on socket open)
    bus ─ tool.result ──▶ PendingCalls ─────▶ function_call_output + response.create
    bus ─ webrtc.local.*, input.*, control.session ─▶ signaling, text/image turns, start/end
    NavTalk events ─▶ navtalk.*, webrtc.remote.*, tool.call, control.barge_in, session.state

Policy decided here (the core only enforces the protocol's order):

- Mic audio is streamed only while READY (after ``realtime.session.updated``). While a
  session is wanted but not ready, frames wait in a bounded backlog (oldest dropped),
  preceded by the mic's pre-roll, and are flushed once READY.
- History: the last N user turns are replayed right after ``realtime.session.created``.
- Tool calls: one ``tool.call`` per function call; a call with no ``tool.result`` within its
  timeout gets an explicit error output (and an error ``tool.result`` on the bus).
- Reconnect with exponential backoff and jitter after transient failures only
  (:mod:`agent.backoff`); a rejected license or no balance stops until ``control.session
  start``.

The license never reaches a log line, a bus message or an error: it is registered with
:func:`agent.navtalk.url.redact`, and every text that could hold it goes through redact.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agent import topics
from agent.backoff import FailureKind, backoff, classify, classify_server_message
from agent.bus import Bus, Delivery
from agent.config import Settings
from agent.errors import (
    ConfigError,
    ErrorCategory,
    PermanentSessionError,
    ProtocolError,
    TransientSessionError,
)
from agent.messages import (
    AssistantTranscript,
    AudioFrame,
    BargeIn,
    ConnectionEvent,
    ConnectionStatus,
    ErrorInfo,
    FunctionCall,
    Heartbeat,
    IceCandidate,
    IceServer,
    ImageInput,
    OtherEvent,
    PreRoll,
    PreRollRequest,
    ResponseDone,
    SdpMessage,
    ServerSpeech,
    SessionControl,
    SessionPhase,
    SessionState,
    SpeakerState,
    TextInput,
    ToolCall,
    ToolCatalog,
    ToolDescribe,
    ToolResult,
    ToolSpec,
    UserTranscript,
)
from agent.navtalk import events as ev
from agent.navtalk.history import ConversationStore, Role
from agent.navtalk.pending import Completion, PendingCalls, error_output
from agent.navtalk.protocol import (
    AUDIO_SAMPLE_RATE_HZ,
    NavTalkProtocol,
    SessionStatus,
    ToolDeclaration,
)
from agent.navtalk.settings import read_license
from agent.navtalk.url import RedactFilter, build_url, redact, register_secret

__all__ = ["EMULATOR_LICENSE", "SessionService", "clear_history", "effective_url", "run"]

log = logging.getLogger(__name__)
log.addFilter(RedactFilter())
_ws_log = logging.getLogger(__name__ + ".ws")  # given to websockets (it logs the request line)
_ws_log.addFilter(RedactFilter())

EMULATOR_LICENSE = "emulator-demo"  # used with the embedded emulator when NAVTALK_LICENSE is unset
MAX_OTHER_JSON = 4096
END_AFTER_SPEECH_MAX_S = 15.0  # wait at most this long for the speaker to go idle
END_AFTER_SPEECH_GRACE_S = 0.3  # audio still on its way to the speaker after audio.done
MAX_FRAME_BYTES = 16 * 1024 * 1024

_PHASES = {
    SessionStatus.CONNECTING: SessionPhase.CONNECTING,
    SessionStatus.CONNECTED: SessionPhase.CONNECTED,
    SessionStatus.CREATED: SessionPhase.CREATED,
    SessionStatus.READY: SessionPhase.READY,
    SessionStatus.CLOSED: SessionPhase.CLOSED,
}


# --- entry points for the CLI and the runtime ---------------------------------------------------


def clear_history(settings: Settings) -> int:
    """``navtalk-agent history clear``: delete every stored turn; returns how many there were."""
    path = Path(settings.session.history_db_path).expanduser()
    if not path.exists():
        return 0
    with ConversationStore(path) as store:
        return store.clear()


def effective_url(settings: Settings) -> str:
    """The base URL to connect to: the embedded emulator's when it is on, else navtalk.url."""
    emu = settings.emulator
    if emu.embedded:
        scheme = "wss" if emu.tls else "ws"
        host = "127.0.0.1" if emu.host in ("0.0.0.0", "") else emu.host
        return f"{scheme}://{host}:{emu.port}/wss/v2/realtime-chat"
    return settings.navtalk.url


async def run(settings: Settings, bus: Bus, *, license: str | None = None) -> None:
    """Run the session service until cancelled. ``license`` defaults to NAVTALK_LICENSE
    (or :data:`EMULATOR_LICENSE` with the embedded emulator when that is unset)."""
    if license is None:
        try:
            license = read_license()
        except ConfigError:
            if not settings.emulator.embedded:
                raise
            license = EMULATOR_LICENSE
    service = SessionService(settings, bus, license)
    bus.declare(TOPICS)
    await bus.start()
    await service.run()


# --- the service --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Conn:
    """One WebSocket connection and its protocol core."""

    ws: ClientConnection
    proto: NavTalkProtocol
    ended_by_us: bool = False
    failure: BaseException | None = None


class SessionService:
    def __init__(self, settings: Settings, bus: Bus, license: str) -> None:
        if not license:
            raise ConfigError("the NavTalk license is empty (set NAVTALK_LICENSE)")
        register_secret(license)
        self.settings = settings
        self.cfg = settings.session
        self.bus = bus
        nav = settings.navtalk
        self._url = build_url(
            effective_url(settings),
            license,
            name=nav.name or "navtalk.Leo",
            avatar_id=nav.avatar_id,
            model=nav.model,
        )
        self._safe_url = redact(self._url)
        self.store: ConversationStore | None = None
        self.pending = PendingCalls()
        self.catalog: list[ToolSpec] | None = None
        self._catalog_event = asyncio.Event()
        self._conn: _Conn | None = None
        self._wanted = asyncio.Event()
        self._wake_deadlines = asyncio.Event()
        self._phase = SessionPhase.IDLE
        self._detail = ""
        self._retry_in_ms: int | None = None
        self._backlog: collections.deque[tuple[int, bytes]] = collections.deque()
        self._backlog_bytes = 0
        self._backlog_max = self.cfg.max_audio_backlog_ms * AUDIO_SAMPLE_RATE_HZ * 2 // 1000
        self._preroll_id = ""
        self._end_after_speech = False
        self._tools_pid = 0  # the tools process's pid, from its heartbeats
        self._speaker_idle = asyncio.Event()
        self._speaker_idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rng = random.Random()
        self._warned_format = False
        self.stats: collections.Counter[str] = collections.Counter()

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        if self.cfg.history_enabled:
            self.store = ConversationStore(
                self.cfg.history_db_path,
                max_age_s=self.cfg.history_max_age_s,
                max_rows=self.cfg.history_max_rows,
            )
            self.store.prune(wall_s=time.time())
        log.info("= session service: NavTalk at %s", self._safe_url)
        self.bus.publish(topics.TOOL_DESCRIBE, ToolDescribe())
        if self.cfg.autostart:
            self._wanted.set()
        self._publish_state(SessionPhase.IDLE, "starting")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._bus_loop(), name="session-bus")
                tg.create_task(self._connection_loop(), name="session-conn")
                tg.create_task(self._deadline_loop(), name="session-deadlines")
                tg.create_task(self._state_loop(), name="session-state")
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            conn = self._conn
            if conn is not None:
                conn.ended_by_us = True
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await conn.ws.close(1000, "agent stopping")
            if self.store is not None:
                self.store.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("task %s failed: %s", t.get_name(), redact(repr(t.exception())))

        task.add_done_callback(done)

    # --- session.state -----------------------------------------------------------------------

    def _publish_state(self, phase: SessionPhase, detail: str = "") -> None:
        changed = phase is not self._phase or detail != self._detail
        self._phase, self._detail = phase, redact(detail)
        if changed:
            log.info("= session %s%s", phase.value, f" ({self._detail})" if self._detail else "")
        conn = self._conn
        proto = conn.proto if conn is not None else None
        self.bus.publish(
            topics.SESSION_STATE,
            SessionState(
                phase=phase,
                detail=self._detail,
                session_id=(proto.session_id or None) if proto else None,
                ice_servers=_ice(proto.ice_servers) if proto else [],
                retry_in_ms=self._retry_in_ms,
            ),
        )

    async def _state_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.state_interval_s)
            self._publish_state(self._phase, self._detail)

    # --- connection policy -------------------------------------------------------------------

    def _new_backoff(self) -> Iterator[float]:
        c = self.cfg
        return backoff(
            initial_s=c.reconnect_initial_s,
            max_s=max(c.reconnect_max_s, c.reconnect_initial_s),
            factor=c.reconnect_factor,
            jitter=c.reconnect_jitter,
            rng=self._rng,
        )

    async def _connection_loop(self) -> None:
        delays = self._new_backoff()
        failures = 0
        while True:
            await self._wanted.wait()
            self._retry_in_ms = None
            reached_connected = False
            try:
                reached_connected = await self._one_session()
                kind: FailureKind | None = None
                error: BaseException | None = None
            except (PermanentSessionError, TransientSessionError, ProtocolError, OSError) as exc:
                error, kind = exc, classify(exc)
            except Exception as exc:  # websockets handshake errors and the like
                error, kind = exc, classify(exc)
            self._fail_pending("the NavTalk session ended")
            if kind is None:  # we ended it on purpose
                self._publish_state(SessionPhase.IDLE, "session ended")
                continue
            assert error is not None
            reason = redact(str(error) or type(error).__name__)
            if reached_connected:
                delays, failures = self._new_backoff(), 0
            failures += 1
            give_up = (
                kind is FailureKind.PERMANENT
                or not self.cfg.reconnect
                or (0 < self.cfg.reconnect_max_attempts <= failures)
            )
            if give_up:
                self._wanted.clear()
                log.error("= NavTalk session failed, not retrying: %s", reason)
                self._publish_state(SessionPhase.FAILED, reason)
                delays, failures = self._new_backoff(), 0
                continue
            delay = next(delays)
            self._retry_in_ms = int(delay * 1000)
            log.warning("= NavTalk session lost (%s); reconnecting in %.2f s", reason, delay)
            self._publish_state(SessionPhase.CLOSED, reason)
            await asyncio.sleep(delay)

    async def _one_session(self) -> bool:
        """Connect and run one session. Returns whether it reached CONNECTED when we ended it;
        raises on any failure (classified by the caller)."""
        self._request_preroll()
        if self.catalog is None and self.cfg.declare_tools and self.cfg.catalog_wait_ms > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.catalog_wait_ms / 1000):
                    await self._catalog_event.wait()
        proto = NavTalkProtocol()
        self._publish_state(SessionPhase.CONNECTING, "")
        log.info("> connecting to %s", self._safe_url)
        try:
            ws = await connect(
                self._url,
                open_timeout=self.cfg.connect_timeout_s,
                ping_interval=self.cfg.ping_interval_s or None,
                max_size=MAX_FRAME_BYTES,
                compression=None,  # deflate costs ~1-4 ms per audio chunk on small boards
                logger=_ws_log,
            )
        except Exception as exc:
            raise (
                TransientSessionError(f"cannot connect: {redact(str(exc))}")
                if classify(exc) is FailureKind.TRANSIENT
                else PermanentSessionError(f"connection refused: {redact(str(exc))}")
            ) from None
        conn = _Conn(ws, proto)
        self._conn = conn
        try:
            if self.cfg.declare_tools and self.catalog is not None:
                await self._declare_tools(conn)  # [sdk]: right after open, before any event
            await self._read_loop(conn)
        finally:
            self._conn = None
            proto.connection_lost(time.monotonic())
            # asyncio.timeout, not wait_for: on 3.11, wait_for swallows a cancellation that
            # lands as the close completes (the agent stopping just as the server hangs up),
            # and this loop would then reconnect instead of stopping.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await ws.close()
        if conn.failure is not None:
            raise conn.failure
        if not conn.ended_by_us:
            raise TransientSessionError("the connection dropped")
        return proto.session_id != ""

    async def _read_loop(self, conn: _Conn) -> None:
        try:
            async for message in conn.ws:
                now = time.monotonic()
                if isinstance(message, bytes):
                    events = conn.proto.receive_bytes(message, now)
                else:
                    events = conn.proto.receive_text(message, now)
                for event in events:
                    try:
                        await self._on_event(conn, event)
                    except ConnectionClosed:
                        raise
                    except Exception:  # never die on one bad event
                        log.exception("handling %s failed", type(event).__name__)
                if conn.failure is not None or conn.ended_by_us:
                    return
        except ConnectionClosed as exc:
            if conn.failure is None and not conn.ended_by_us:
                if exc.rcvd is None:
                    detail = "connection dropped (no close frame)"
                else:
                    reason = redact(exc.rcvd.reason)
                    detail = f"closed by the server (code {exc.rcvd.code}"
                    detail += f", {reason})" if reason else ")"
                conn.failure = TransientSessionError(detail)

    async def _send(self, conn: _Conn, *frames: str) -> None:
        for frame in frames:
            await conn.ws.send(frame)

    async def end_session(self, reason: str) -> None:
        """Close the current session on purpose (no reconnect)."""
        self._wanted.clear()
        self._end_after_speech = False
        conn = self._conn
        if conn is None:
            self._publish_state(SessionPhase.IDLE, reason)
            return
        conn.ended_by_us = True
        log.info("> ending the NavTalk session: %s", reason)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await conn.ws.close(1000, "session ended")

    # --- server events -------------------------------------------------------------------------

    async def _on_event(self, conn: _Conn, event: ev.Event) -> None:
        proto = conn.proto
        self.stats[type(event).__name__] += 1
        pub = self.bus.publish
        match event:
            case ev.ConnectedSuccess():
                pub(
                    topics.NAVTALK_CONNECTION,
                    ConnectionEvent(
                        status=ConnectionStatus.SUCCESS,
                        session_id=event.session_id,
                        ice_servers=_ice(event.ice_servers),
                    ),
                )
                self._publish_state(SessionPhase.CONNECTED, "")
            case ev.ConnectedFail():
                msg = redact(event.message) or "the server refused the connection"
                pub(
                    topics.NAVTALK_CONNECTION,
                    ConnectionEvent(status=ConnectionStatus.FAIL, message=msg),
                )
                log.error("< NavTalk refused the session: %s (check the license)", msg)
                conn.failure = PermanentSessionError(f"connection failed: {msg}")
            case ev.InsufficientBalance():
                msg = redact(event.message) or "insufficient balance"
                pub(
                    topics.NAVTALK_CONNECTION,
                    ConnectionEvent(status=ConnectionStatus.INSUFFICIENT_BALANCE, message=msg),
                )
                log.error("< NavTalk stopped the service: insufficient balance (%s)", msg)
                conn.failure = PermanentSessionError(f"insufficient balance: {msg}")
            case ev.ConnectedClose():
                msg = redact(event.message)
                pub(
                    topics.NAVTALK_CONNECTION,
                    ConnectionEvent(status=ConnectionStatus.CLOSE, message=msg),
                )
                log.warning("< NavTalk closed the session: %s", msg or "(no reason)")
                if not conn.ended_by_us:
                    cls = (
                        PermanentSessionError
                        if classify_server_message(msg) is FailureKind.PERMANENT
                        else TransientSessionError
                    )
                    conn.failure = cls(f"closed by the server: {msg or 'no reason'}")
            case ev.ConnectedWarning():
                msg = redact(event.message)
                pub(
                    topics.NAVTALK_CONNECTION,
                    ConnectionEvent(
                        status=ConnectionStatus.WARNING, message=msg, avatar_id=event.avatar_id
                    ),
                )
                log.warning("< NavTalk warning: %s (avatar %s)", msg, event.avatar_id or "?")
            case ev.SessionCreated():
                self._other(event.TYPE)
                self._publish_state(SessionPhase.CREATED, "")
                await self._on_created(conn)
            case ev.SessionUpdated():
                self._other(event.TYPE)
                self._publish_state(SessionPhase.READY, "")
                await self._flush_backlog(conn)
            case ev.SpeechStarted():
                now_ns = time.monotonic_ns()
                pub(topics.NAVTALK_SPEECH, ServerSpeech(started=True))
                pub(topics.CONTROL_BARGE_IN, BargeIn(reason="speech_started", at_mono_ns=now_ns))
            case ev.SpeechStopped():
                pub(topics.NAVTALK_SPEECH, ServerSpeech(started=False))
            case ev.InputTranscriptionCompleted():
                pub(
                    topics.NAVTALK_TRANSCRIPT_USER,
                    UserTranscript(text=event.content, item_id=event.item_id),
                )
                self._remember(Role.USER, event.content, proto.session_id)
            case ev.TranscriptDelta():
                pub(
                    topics.NAVTALK_TRANSCRIPT_ASSISTANT,
                    AssistantTranscript(response_id=event.response_id, text=event.content),
                )
            case ev.TranscriptDone():
                pub(
                    topics.NAVTALK_TRANSCRIPT_ASSISTANT,
                    AssistantTranscript(
                        response_id=event.response_id, text=event.content, final=True
                    ),
                )
                self._remember(Role.ASSISTANT, event.content, proto.session_id)
            case ev.AudioDelta():
                if self.cfg.audio_only:
                    pub(
                        topics.NAVTALK_AUDIO_DELTA,
                        AudioFrame(
                            sample_rate_hz=AUDIO_SAMPLE_RATE_HZ,
                            capture_mono_ns=time.monotonic_ns(),
                            stream_id=event.response_id,
                        ),
                        event.pcm,
                    )
            case ev.AudioDone():
                pub(topics.NAVTALK_AUDIO_DONE, ResponseDone(response_id=event.response_id))
                if self._end_after_speech:
                    self._end_after_speech = False
                    self._spawn(self._end_when_quiet(), "session-end-after-speech")
            case ev.FunctionCallArgumentsDelta():
                self._other(event.TYPE, json.dumps({"call_id": event.call_id}))
            case ev.FunctionCallDone():
                await self._on_function_call(conn, event)
            case ev.RtcOffer():
                pub(
                    topics.WEBRTC_REMOTE_OFFER,
                    SdpMessage(
                        sdp_type="offer", sdp=event.sdp, ice_servers=_ice(proto.ice_servers)
                    ),
                )
            case ev.RtcAnswer():
                pub(topics.WEBRTC_REMOTE_ANSWER, SdpMessage(sdp_type="answer", sdp=event.sdp))
            case ev.RtcIceCandidate():
                pub(
                    topics.WEBRTC_REMOTE_ICE,
                    IceCandidate(
                        candidate=event.candidate,
                        sdp_mid=event.sdp_mid,
                        sdp_mline_index=event.sdp_mline_index,
                    ),
                )
            case ev.Unknown():
                log.info("< unknown NavTalk event %s", event.type)
                self._other(event.type, json.dumps(event.frame), known=False)
            case ev.Malformed():
                self._other(event.type or "(malformed)", "{}", known=False, error=event.reason)
            case ev.BinaryFrame():
                log.info("< binary frame of %d bytes", event.size)
                self._other("(binary)", json.dumps({"size": event.size}))
            case _:
                self._other(event.TYPE)

    def _other(
        self, type_: str, data_json: str = "{}", *, known: bool = True, error: str = ""
    ) -> None:
        self.bus.publish(
            topics.NAVTALK_OTHER,
            OtherEvent(
                type=type_,
                data_json=redact(data_json)[:MAX_OTHER_JSON],
                known=known,
                error=redact(error),
            ),
        )

    def _remember(self, role: Role, text: str, session_id: str) -> None:
        if self.store is not None and text.strip():
            try:
                self.store.add(role, text, wall_s=time.time(), session_id=session_id)
            except Exception:  # the disk must not end the conversation
                log.exception("history: could not store a %s turn", role.value)

    async def _on_created(self, conn: _Conn) -> None:
        if self.cfg.send_session_update:
            await self._send(conn, conn.proto.session_update(self._declarations()))
        if self.store is None or not self.cfg.history_enabled:
            return
        self.store.prune(wall_s=time.time())
        texts = self.store.last_user_messages(self.cfg.history_replay_count)
        if texts:
            log.info("> replaying %d user message(s) of history", len(texts))
        for text in texts:
            await self._send(conn, conn.proto.history_item(text))

    # --- audio -----------------------------------------------------------------------------------

    def _request_preroll(self) -> None:
        if self.cfg.preroll_ms <= 0:
            return
        self._preroll_id = uuid.uuid4().hex[:12]
        self.bus.publish(
            topics.MIC_PREROLL_REQUEST,
            PreRollRequest(request_id=self._preroll_id, duration_ms=self.cfg.preroll_ms),
        )

    def _buffer(self, capture_ns: int, pcm: bytes) -> None:
        self._backlog.append((capture_ns, pcm))
        self._backlog_bytes += len(pcm)
        while self._backlog_bytes > self._backlog_max and self._backlog:
            _, old = self._backlog.popleft()
            self._backlog_bytes -= len(old)
            self.stats["backlog_dropped"] += 1

    async def _flush_backlog(self, conn: _Conn) -> None:
        if not self._backlog:
            return
        pcm = b"".join(p for _, p in self._backlog)
        self._backlog.clear()
        self._backlog_bytes = 0
        log.info("> sending %d ms of buffered audio", len(pcm) * 1000 // (AUDIO_SAMPLE_RATE_HZ * 2))
        await self._send(conn, *conn.proto.audio_append(pcm))

    async def _on_mic(self, frame: AudioFrame, payload: list[bytes]) -> None:
        if not payload:
            return
        if frame.sample_rate_hz != AUDIO_SAMPLE_RATE_HZ or frame.channels != 1:
            if not self._warned_format:
                self._warned_format = True
                log.warning(
                    "< audio.mic is %d Hz x%d; NavTalk needs 24000 Hz mono: dropped",
                    frame.sample_rate_hz,
                    frame.channels,
                )
            return
        pcm = payload[0]
        conn = self._conn
        if conn is not None and conn.proto.can_send_audio:
            await self._send(conn, *conn.proto.audio_append(pcm))
            self.stats["audio_frames_sent"] += 1
        elif self._wanted.is_set():
            self._buffer(frame.capture_mono_ns, bytes(pcm))

    def _on_preroll(self, msg: PreRoll, payload: list[bytes]) -> None:
        if msg.request_id != self._preroll_id or not payload:
            return
        if msg.sample_rate_hz != AUDIO_SAMPLE_RATE_HZ:
            log.warning("< pre-roll at %d Hz ignored", msg.sample_rate_hz)
            return
        conn = self._conn
        if conn is not None and conn.proto.can_send_audio:
            return  # too late: live audio is already flowing
        # Frames captured before the pre-roll's end are in the pre-roll already.
        kept = [(t, p) for t, p in self._backlog if t >= msg.end_mono_ns]
        self._backlog.clear()
        self._backlog_bytes = 0
        self._buffer(msg.end_mono_ns, bytes(payload[0]))
        for t, p in kept:
            self._buffer(t, p)

    # --- tools ---------------------------------------------------------------------------------

    def _declarations(self) -> list[ToolDeclaration]:
        out = []
        for spec in self.catalog or []:
            try:
                params = json.loads(spec.parameters_json or "{}")
            except ValueError:
                log.warning("= tool %s has invalid parameters JSON; not declared", spec.name)
                continue
            out.append(ToolDeclaration(spec.name, spec.description, params if params else {}))
        return out

    async def _declare_tools(self, conn: _Conn) -> None:
        decls = self._declarations()
        log.info("> declaring %d tool(s): %s", len(decls), ", ".join(d.name for d in decls))
        await self._send(conn, conn.proto.declare_tools(decls))

    async def _on_function_call(self, conn: _Conn, event: ev.FunctionCallDone) -> None:
        args = event.arguments or "{}"
        self.bus.publish(
            topics.NAVTALK_FUNCTION_CALL,
            FunctionCall(call_id=event.call_id, name=event.name, arguments_json=args),
        )
        spec = next((t for t in self.catalog or [] if t.name == event.name), None)
        if self.catalog is not None and spec is None:
            log.warning("< the model called %s, which is not in the catalog", event.name)
            output = error_output(ErrorCategory.UNKNOWN_TOOL, f"no tool named {event.name!r}")
            result = ToolResult(
                call_id=event.call_id,
                name=event.name,
                ok=False,
                error=ErrorInfo(
                    category=ErrorCategory.UNKNOWN_TOOL, message=f"no tool {event.name}"
                ),
            )
            self.bus.publish(topics.TOOL_RESULT, result)
            await self._send(conn, *conn.proto.function_call_output(event.call_id, output))
            return
        timeout_ms = spec.timeout_ms if spec is not None else self.cfg.tool_timeout_ms
        self.pending.add(
            event.call_id, event.name, args, now=time.monotonic(), timeout_s=timeout_ms / 1000
        )
        self._wake_deadlines.set()
        log.info("> tool.call %s %s", event.call_id, event.name)
        self.bus.publish(
            topics.TOOL_CALL,
            ToolCall(
                call_id=event.call_id, name=event.name, arguments_json=args, timeout_ms=timeout_ms
            ),
        )

    async def _complete(self, done: Completion, *, publish: bool) -> None:
        if publish:
            self.bus.publish(topics.TOOL_RESULT, done.result)
        conn = self._conn
        if conn is None or not conn.proto.can_send_items:
            log.warning("= tool result for %s has no session to go to", done.call.call_id)
            return
        log.info(
            "> function_call_output %s (%s)", done.call.call_id, "ok" if done.result.ok else "error"
        )
        await self._send(conn, *conn.proto.function_call_output(done.call.call_id, done.output))

    async def _deadline_loop(self) -> None:
        while True:
            due = self.pending.next_deadline()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake_deadlines.wait()
            self._wake_deadlines.clear()
            for done in self.pending.expire(time.monotonic()):
                log.warning("= tool call %s (%s) timed out", done.call.call_id, done.call.name)
                try:
                    await self._complete(done, publish=True)
                except ConnectionClosed:
                    pass

    async def _on_tools_heartbeat(self, pid: int) -> None:
        """A tools process that died took its running calls with it, and the restarted one
        never saw them: answer them now (with an error) rather than at their timeouts."""
        old, self._tools_pid = self._tools_pid, pid
        if not old or pid == old or not len(self.pending):
            return
        log.warning(
            "= the tools process was replaced (pid %d -> %d): answering %d pending call(s)",
            old, pid, len(self.pending),
        )  # fmt: skip
        for done in self.pending.fail_all(f"the tools process died (pid {old})"):
            with contextlib.suppress(ConnectionClosed):
                await self._complete(done, publish=True)

    def _fail_pending(self, reason: str) -> None:
        for done in self.pending.fail_all(reason):
            self.bus.publish(topics.TOOL_RESULT, done.result)

    # --- bus -----------------------------------------------------------------------------------

    async def _bus_loop(self) -> None:
        async for delivery in self.bus:
            try:
                await self._on_bus(delivery)
            except ConnectionClosed:
                pass  # the reader sees it too and handles the reconnect
            except ProtocolError as exc:
                log.warning("= dropped %s: %s", delivery.topic, exc)
            except Exception:
                log.exception("handling %s failed", delivery.topic)

    async def _on_bus(self, d: Delivery) -> None:
        msg = d.msg
        conn = self._conn
        match msg:
            case AudioFrame() if d.topic == topics.AUDIO_MIC:
                await self._on_mic(msg, d.payload)
            case PreRoll():
                self._on_preroll(msg, d.payload)
            case ToolResult() if d.sender != self.bus.sender:
                done = self.pending.resolve(msg)
                if done is None:
                    log.info("< tool.result for %s ignored (late or unknown)", msg.call_id)
                else:
                    await self._complete(done, publish=False)
            case ToolCatalog():
                self.catalog = list(msg.tools)
                self._catalog_event.set()
                log.info("< tool catalog: %s", ", ".join(t.name for t in msg.tools) or "(empty)")
                if (
                    conn is not None
                    and self.cfg.declare_tools
                    and conn.proto.state is not (SessionStatus.CLOSED)
                ):
                    await self._declare_tools(conn)
            case SdpMessage() if conn is not None:
                if msg.sdp_type == "answer":
                    await self._send(conn, conn.proto.webrtc_answer(msg.sdp))
                else:
                    await self._send(conn, conn.proto.webrtc_offer(msg.sdp))
            case IceCandidate() if conn is not None:
                await self._send(
                    conn, conn.proto.ice_candidate(msg.candidate, msg.sdp_mid, msg.sdp_mline_index)
                )
            case TextInput() if conn is not None:
                if msg.reply:
                    await self._send(conn, *conn.proto.text_turn(msg.text))
                else:
                    await self._send(conn, conn.proto.history_item(msg.text))
                self._remember(Role.USER, msg.text, conn.proto.session_id)
            case ImageInput() if conn is not None and d.payload:
                await self._send(
                    conn,
                    conn.proto.input_image(d.payload[0], mime_type=msg.mime_type, reply=msg.reply),
                )
            case SessionControl():
                await self._on_control(msg)
            case Heartbeat() if msg.service == topics.TOOLS:
                await self._on_tools_heartbeat(msg.pid)
            case SpeakerState():
                if msg.playing:
                    self._speaker_idle.clear()
                else:
                    self._speaker_idle.set()
            case SdpMessage() | IceCandidate() | TextInput() | ImageInput():
                log.info("= %s dropped: no NavTalk session", d.topic)
            case _:
                pass

    async def _on_control(self, msg: SessionControl) -> None:
        log.info("< control.session %s %s", msg.action, msg.reason)
        if msg.action == "start":
            self._wanted.set()
        elif msg.action == "end":
            await self.end_session(msg.reason or "control.session end")
        else:  # end_after_speech: at the next audio.done, once the speaker is quiet
            if self._conn is None:
                await self.end_session(msg.reason or "end after speech")
            else:
                self._end_after_speech = True

    async def _end_when_quiet(self) -> None:
        try:
            async with asyncio.timeout(END_AFTER_SPEECH_MAX_S):
                # audio.done comes when the last words were sent, not played: give them time
                # to reach the speaker (WebRTC, jitter buffer) before asking if it is quiet.
                await asyncio.sleep(END_AFTER_SPEECH_GRACE_S)
                await self._speaker_idle.wait()
        except TimeoutError:
            log.warning(
                "= the speaker still plays %.0f s after the last words; ending anyway",
                END_AFTER_SPEECH_MAX_S,
            )
        await self.end_session("conversation ended after the avatar's last words")


TOPICS = topics.ServiceTopics(
    reads=(
        topics.AUDIO_MIC,
        f"health.{topics.TOOLS}",  # a new pid: the calls the old process held are lost
        topics.MIC_PREROLL,
        topics.TOOL_RESULT,
        topics.TOOL_CATALOG,
        topics.WEBRTC_LOCAL_OFFER,
        topics.WEBRTC_LOCAL_ANSWER,
        topics.WEBRTC_LOCAL_ICE,
        topics.INPUT_TEXT,
        topics.INPUT_IMAGE,
        topics.CONTROL_SESSION,
        topics.SPEAKER_STATE,
    ),
    writes=(
        topics.NAVTALK_CONNECTION,
        topics.NAVTALK_SPEECH,
        topics.NAVTALK_TRANSCRIPT_USER,
        topics.NAVTALK_TRANSCRIPT_ASSISTANT,
        topics.NAVTALK_AUDIO_DELTA,
        topics.NAVTALK_AUDIO_DONE,
        topics.NAVTALK_FUNCTION_CALL,
        topics.NAVTALK_OTHER,
        topics.WEBRTC_REMOTE_OFFER,
        topics.WEBRTC_REMOTE_ANSWER,
        topics.WEBRTC_REMOTE_ICE,
        topics.SESSION_STATE,
        topics.CONTROL_BARGE_IN,
        topics.MIC_PREROLL_REQUEST,
        topics.TOOL_CALL,
        topics.TOOL_RESULT,  # the error results it makes itself (deadline, tools restarted)
        topics.TOOL_DESCRIBE,
    ),
)


def _ice(servers: tuple[ev.IceServerInfo, ...]) -> list[IceServer]:
    return [
        IceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in servers
    ]
