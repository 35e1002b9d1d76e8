"""The session service: the NavTalk WebSocket, the conversation history and the session policy.

A thin asyncio shell; the decisions live in sans-I/O cores of :mod:`agent.navtalk`::

    bus ─ audio.mic, mic.preroll ──▶ AudioBacklog ──▶ realtime.input_audio_buffer.append
    bus ─ tool.catalog (tools only) ──▶ ToolCalls ──▶ realtime.input_function_call (once per
                                                      connection, again on a change)
    bus ─ tool.result ──▶ ToolCalls.pending ──▶ function_call_output + response.create
    bus ─ webrtc.local.*, input.*                  ─▶ check_local ─▶ signaling, turns
    bus ─ control.session, vad.state, speaker.state, server events, ticks ─▶ SessionPolicy
         ─▶ connect / close / pre-roll / wrap-up line (services.session_parts.visit)
    NavTalk frames ─▶ NavTalkProtocol ─▶ events ─▶ bridge.to_bus ─▶ navtalk.*, webrtc.remote.*
    connection ends ─▶ Link (handshake deadline, backoff, attempts) ─▶ retry / give up / idle

Policy decided here (the cores enforce the protocol and the limits):

- Mic audio is streamed only while READY (after ``realtime.session.updated``); before, it
  waits in a bounded backlog behind the mic's pre-roll and is flushed once READY.
- A visit is one guest's conversation (:mod:`agent.navtalk.policy`): after a dropped
  connection its last N user turns are replayed right after ``realtime.session.created``;
  a new visit starts fresh. SQLite only records (in a thread of its own).
- Tool calls: one ``tool.call`` per function call, each call_id answered exactly once
  (early ones are held until ``realtime.session.created``); the session's deadline is a
  safety net behind the tools process's own timeout.
- Signaling: the server's offer and candidates are published latched with the
  connection's id and unlatched once answered or when the connection ends; local
  signaling of another connection is dropped.

The license never reaches a log line, a bus message, SQLite or an error: it is registered
with :func:`agent.navtalk.url.redact`, and the protocol core redacts every server frame.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
import uuid
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from agent import topics
from agent.backoff import FailureKind, classify
from agent.bus import Bus, Delivery
from agent.config import Settings
from agent.errors import (
    ConfigError,
    PermanentSessionError,
    ProtocolError,
    TransientSessionError,
)
from agent.messages import (
    AudioFrame,
    FaceEvent,
    Heartbeat,
    IceCandidate,
    ImageInput,
    PreRoll,
    SdpMessage,
    SessionControl,
    SessionPhase,
    SessionState,
    SpeakerState,
    TextInput,
    ToolCatalog,
    ToolDescribe,
    ToolResult,
    VadState,
)
from agent.navtalk import events as ev
from agent.navtalk import policy as pol
from agent.navtalk.bridge import Publish, check_local, failure_of, ice_servers, to_bus
from agent.navtalk.burst import BurstLog
from agent.navtalk.calls import ToolCalls
from agent.navtalk.history import ConversationStore, HistoryThread, Role
from agent.navtalk.link import Link, LinkState, RetryPolicy
from agent.navtalk.protocol import NavTalkProtocol
from agent.navtalk.settings import read_license
from agent.navtalk.url import RedactFilter, build_url, redact, register_secret
from services.session_parts.audio import MicRelay
from services.session_parts.conn import Connection, SignalingRelay, close_detail
from services.session_parts.embedded import embedded_host, wait_listening
from services.session_parts.tools import ToolRelay
from services.session_parts.visit import VisitRelay

__all__ = ["EMULATOR_LICENSE", "SessionService", "clear_history", "effective_url", "run"]

log = logging.getLogger(__name__)
log.addFilter(RedactFilter())
_ws_log = logging.getLogger(__name__ + ".ws")  # given to websockets (it logs the request line)
_ws_log.addFilter(RedactFilter())

EMULATOR_LICENSE = "emulator-demo"  # used with the embedded emulator when NAVTALK_LICENSE is unset
MAX_FRAME_BYTES = 4 * 1024 * 1024  # a bigger server frame closes the socket (1009)


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


class SessionService:
    def __init__(self, settings: Settings, bus: Bus, license: str) -> None:
        if not license:
            raise ConfigError("the NavTalk license is empty (set NAVTALK_LICENSE)")
        register_secret(license)
        self.settings = settings
        self.cfg = c = settings.session
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
        self.history: HistoryThread | None = None
        self.tools = ToolCalls(default_timeout_ms=c.tool_timeout_ms)
        self.link = Link(RetryPolicy.from_settings(c), random.Random())
        self._conn: Connection | None = None
        self._wanted = asyncio.Event()
        self._burst = BurstLog()
        self.mic = MicRelay(
            bus,
            preroll_ms=c.preroll_ms,
            backlog_ms=c.max_audio_backlog_ms,
            current=lambda: self._conn,
            wanted=self._wanted.is_set,
            flood=self._flood,
        )
        self.relay = ToolRelay(bus, self.tools, lambda: self._conn)
        self.signaling = SignalingRelay(bus, lambda: self._conn, self._flood)
        self._phase = SessionPhase.IDLE
        self._detail = ""
        self._retry_in_ms: int | None = None
        self._await_emulator = settings.emulator.embedded  # the first connect waits for it
        self.visit = VisitRelay(
            c,
            wanted=self._wanted,
            mic=self.mic,
            current=lambda: self._conn,
            end=self.end_session,
            publish=lambda: self._publish_state(self._phase, self._detail),
        )
        self.stats: collections.Counter[str] = collections.Counter()

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        if self.cfg.history_enabled:
            self.history = HistoryThread(
                self.cfg.history_db_path,
                max_age_s=self.cfg.history_max_age_s,
                max_rows=self.cfg.history_max_rows,
            )
            await self.history.open(wall_s=time.time())
        log.info("= session service: NavTalk at %s", self._safe_url)
        self.bus.publish(topics.TOOL_DESCRIBE, ToolDescribe())
        self._publish_state(SessionPhase.IDLE, "starting")
        await self.visit.open_budget()
        await self.visit.feed(pol.Start(time.monotonic()))
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._bus_loop(), name="session-bus")
                tg.create_task(self._connection_loop(), name="session-conn")
                tg.create_task(self.relay.deadline_loop(), name="session-deadlines")
                tg.create_task(self._state_loop(), name="session-state")
                tg.create_task(self.visit.tick_loop(), name="session-visit")
        except* Exception as group:  # a loop died: say so, then let the process end
            for exc in group.exceptions:
                log.error("= session loop failed: %s", redact(repr(exc)), exc_info=exc)
            raise
        finally:
            conn = self._conn
            if conn is not None:
                conn.ended_by_us = True
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await conn.ws.close(1000, "agent stopping")
            await self.visit.save_budget()
            if self.history is not None:
                await self.history.close()

    def _publish(self, p: Publish) -> None:
        if p.latch:
            self.bus.publish(p.topic, p.msg, *p.payload, latch=p.latch)
        else:
            self.bus.publish(p.topic, p.msg, *p.payload)

    def _flood(
        self, key: str, fmt: str, *args: object, exc_info: bool = False, level: int = 30
    ) -> None:
        """Log ``fmt % args`` once per burst of ``key`` (the rest are counted)."""
        suppressed = self._burst.admit(key, time.monotonic())
        if suppressed is None:
            return
        more = f" (+{suppressed} more since the last line)" if suppressed else ""
        log.log(level, fmt + "%s", *args, more, exc_info=exc_info)

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
                ice_servers=ice_servers(proto.ice_servers) if proto else [],
                retry_in_ms=self._retry_in_ms,
                visit=self.visit.phase.value,
                visit_detail=self.visit.detail,
            ),
        )

    async def _state_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.state_interval_s)
            self._publish_state(self._phase, self._detail)

    # --- connection policy -------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        while True:
            await self._wanted.wait()
            self._retry_in_ms = None
            error: BaseException | None = None
            try:
                await self._one_session()
            except Exception as exc:  # classified below; websockets handshake errors included
                error = exc
            self.relay.fail_pending("the NavTalk session ended")
            outcome = self.link.ended(None if error is None else classify(error))
            now = time.monotonic()
            if outcome.state is LinkState.IDLE and not self._wanted.is_set():  # ended on purpose
                self._publish_state(SessionPhase.IDLE, "session ended")
                await self.visit.feed(pol.Ended(pol.EndKind.BY_US, "session ended", now))
                continue
            if outcome.state is LinkState.IDLE:  # a new visit wanted it meanwhile: connect again
                continue
            reason = redact(str(error) or type(error).__name__)
            if outcome.state is LinkState.FAILED:
                self._wanted.clear()
                log.error(
                    "= NavTalk session failed after %d attempt(s), not retrying: %s",
                    outcome.failures,
                    reason,
                )
                self._publish_state(SessionPhase.FAILED, reason)
                await self.visit.feed(pol.Ended(pol.EndKind.FAILED, reason, now))
                continue
            delay = outcome.retry_in_s or 0.0
            self._retry_in_ms = int(delay * 1000)
            log.warning(
                "= NavTalk session lost (%s); reconnecting in %.2f s (failure %d%s)",
                reason,
                delay,
                outcome.failures,
                ", after a healthy session" if outcome.healthy else "",
            )
            self._publish_state(SessionPhase.CLOSED, reason)
            await self.visit.feed(pol.Ended(pol.EndKind.RETRYING, reason, now))
            await asyncio.sleep(delay)

    async def _one_session(self) -> None:
        """Connect and run one session; returns when we ended it, raises on any failure."""
        if self.tools.catalog is None and self.cfg.declare_tools and self.cfg.catalog_wait_ms > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.catalog_wait_ms / 1000):
                    await self.relay.catalog_event.wait()
        replay = self.visit.replay()  # this visit's turns only: empty for a new visit
        connection_id = uuid.uuid4().hex[:12]
        self.link.opening(connection_id)
        self.relay.new_connection()
        proto = NavTalkProtocol()
        self._publish_state(SessionPhase.CONNECTING, "")
        if self._await_emulator:  # started with us: not a failure while it comes up
            self._await_emulator = False
            emu = self.settings.emulator
            await wait_listening(embedded_host(emu), emu.port)
        log.info("> connecting to %s (connection %s)", self._safe_url, connection_id)
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
        conn = Connection(ws, proto, connection_id, replay=replay)
        conn.ended_by_us = not self._wanted.is_set()  # ended while it was connecting
        self._conn = conn
        loop = asyncio.get_running_loop()
        self.link.opened(loop.time())
        try:
            try:
                async with asyncio.timeout_at(self.link.deadline) as scope:
                    conn.handshake = scope
                    if self.cfg.declare_tools:
                        await self.relay.declare(conn)  # [sdk]: right after open
                    await self._read_loop(conn)
            except TimeoutError:
                if not self.link.handshake_expired(loop.time()):
                    raise
                why = (
                    f"no realtime.session.updated {self.cfg.handshake_timeout_s:g} s after the"
                    f" socket opened (NavTalk state {proto.state.value})"
                )
                log.warning("= NavTalk handshake timed out: %s", why)
                conn.failure = TransientSessionError(f"handshake timed out: {why}")
        finally:
            self._conn = None
            proto.connection_lost(time.monotonic())
            self.signaling.unlatch()
            # asyncio.timeout, not wait_for: on 3.11, wait_for swallows a cancellation that
            # lands as the close completes (the agent stopping just as the server hangs up),
            # and this loop would then reconnect instead of stopping.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await ws.close()
        detail = conn.failure or close_detail(ws, conn.ended_by_us)
        log.info("= NavTalk connection %s ended: %s", connection_id, redact(str(detail)))
        if conn.failure is not None:
            raise conn.failure
        if not conn.ended_by_us:
            raise TransientSessionError(str(detail))

    async def _read_loop(self, conn: Connection) -> None:
        if conn.ended_by_us:
            return
        with contextlib.suppress(ConnectionClosed):  # close_detail() says why
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
                    except Exception:  # never die on one bad event; log a flood once
                        self._flood(
                            f"event:{type(event).__name__}",
                            "handling %s failed",
                            type(event).__name__,
                            exc_info=True,
                        )
                deferred = conn.proto.deferred_frames()
                if deferred:
                    await conn.send(*deferred)
                if conn.failure is not None or conn.ended_by_us:
                    return

    async def end_session(self, reason: str) -> None:
        """Close the current session on purpose (no reconnect)."""
        self._wanted.clear()
        conn = self._conn
        if conn is None:
            self._publish_state(SessionPhase.IDLE, reason)
            await self.visit.feed(pol.Ended(pol.EndKind.BY_US, reason, time.monotonic()))
            return
        conn.ended_by_us = True
        log.info("> ending the NavTalk session: %s", reason)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await conn.ws.close(1000, "session ended")

    # --- server events -------------------------------------------------------------------------

    async def _on_event(self, conn: Connection, event: ev.Event) -> None:
        proto = conn.proto
        self.stats[type(event).__name__] += 1
        outs = to_bus(
            event,
            connection_id=conn.connection_id,
            ice=proto.ice_servers,
            now_ns=time.monotonic_ns(),
        )
        for out in outs:
            self._publish(out)
        await self.visit.on_server_event(event)
        failure = failure_of(event, ended_by_us=conn.ended_by_us)
        if failure is not None:
            conn.failure = failure
        match event:
            case ev.ConnectedSuccess():
                self._publish_state(SessionPhase.CONNECTED, "")
            case ev.SessionCreated():
                self.link.session_created()
                self._publish_state(SessionPhase.CREATED, "")
                await self._on_created(conn)
            case ev.SessionUpdated():
                self.link.session_updated()
                if conn.handshake is not None:
                    conn.handshake.reschedule(None)
                self._publish_state(SessionPhase.READY, "")
                await self.mic.flush(conn)
            case ev.InputTranscriptionCompleted():
                self._remember(Role.USER, event.content, proto.session_id)
            case ev.TranscriptDone():
                self._remember(Role.ASSISTANT, event.content, proto.session_id)
            case ev.FunctionCallDone():
                await self.relay.on_call(event)
            case ev.Unknown():
                kind = redact(event.type[:80])
                self._flood(f"unknown:{kind}", "< unknown NavTalk event %s", kind, level=20)
            case ev.BinaryFrame():
                self._flood("binary", "< binary frame of %d bytes", event.size)
            case _:
                pass

    def _remember(self, role: Role, text: str, session_id: str) -> None:
        if role is Role.USER:
            self.visit.remember(redact(text))
        if self.history is not None and text.strip():
            self.history.add(role, redact(text), wall_s=time.time(), session_id=session_id)

    async def _on_created(self, conn: Connection) -> None:
        if self.cfg.send_session_update:
            await conn.send(conn.proto.session_update(self.tools.declarations()))
        await self.relay.send_held(conn)  # outputs of calls that came before session.created
        if conn.replay:  # read before connecting: no disk on this path
            log.info("> replaying %d user message(s) of history", len(conn.replay))
        for text in conn.replay:
            await conn.send(conn.proto.history_item(text))

    async def _on_catalog(self, msg: ToolCatalog, sender: str) -> None:
        if not await self.relay.on_catalog(msg, sender, declare=self.cfg.declare_tools):
            self._flood("catalog", "< tool.catalog from %r ignored: not the tools service", sender)

    # --- bus -----------------------------------------------------------------------------------

    async def _bus_loop(self) -> None:
        async for delivery in self.bus:
            try:
                await self._on_bus(delivery)
            except ConnectionClosed:
                pass  # the reader sees it too and handles the reconnect
            except ProtocolError as exc:
                self._flood(f"proto:{delivery.topic}", "= dropped %s: %s", delivery.topic, exc)
            except Exception:
                self._flood(
                    f"bus:{delivery.topic}", "handling %s failed", delivery.topic, exc_info=True
                )

    async def _on_bus(self, d: Delivery) -> None:
        msg = d.msg
        refused = check_local(msg, d.payload)
        if refused is not None:
            self.stats["refused_local"] += 1
            self._flood(f"size:{d.topic}", "= %s from %s dropped: %s", d.topic, d.sender, refused)
            return
        match msg:
            case AudioFrame() if d.topic == topics.AUDIO_MIC:
                await self.mic.on_mic(msg, d.payload)
            case PreRoll():
                self.mic.on_preroll(msg, d.payload)
            case ToolResult() if d.sender != self.bus.sender:
                await self.relay.on_result(msg)
            case ToolCatalog():
                await self._on_catalog(msg, d.sender)
            case SdpMessage():
                await self.signaling.on_sdp(msg)
            case IceCandidate():
                await self.signaling.on_ice(msg)
            case TextInput() if (conn := self._conn) is not None:
                if msg.reply:
                    await conn.send(*conn.proto.text_turn(msg.text))
                else:
                    await conn.send(conn.proto.history_item(msg.text))
                self._remember(Role.USER, msg.text, conn.proto.session_id)
            case ImageInput() if (conn := self._conn) is not None and d.payload:
                image = conn.proto.input_image(
                    d.payload[0], mime_type=msg.mime_type, reply=msg.reply
                )
                await conn.send(image)
            case SessionControl():
                log.info("< control.session %s %s", msg.action, redact(msg.reason))
                await self.visit.feed(pol.Command(msg.action, msg.reason, time.monotonic()))
            case VadState():
                await self.visit.feed(pol.Vad(msg.speaking, time.monotonic()))
            case FaceEvent():
                await self.visit.feed(pol.Face(msg.seen, time.monotonic()))
            case Heartbeat() if msg.service == topics.TOOLS:
                await self.relay.on_tools_heartbeat(msg.pid)
            case SpeakerState():
                await self.visit.feed(pol.Speaker(msg.playing, time.monotonic()))
            case TextInput() | ImageInput():
                log.info("= %s dropped: no NavTalk session", d.topic)
            case _:
                pass


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
        topics.VAD_STATE,
        topics.VISION_FACE,
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
