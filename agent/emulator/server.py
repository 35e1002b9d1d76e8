"""The local NavTalk-compatible server: websockets around one Brain per connection.

Same path and query as the real service (``/wss/v2/realtime-chat?license=...&name=...``
or ``&avatarId=...``), optionally TLS with a self-signed certificate generated at start
(:mod:`agent.emulator.tls`). Per connection a :class:`~agent.emulator.session.Session`
(socket, timers, speech queue, WebRTC) around a sans-I/O
:class:`~agent.emulator.brain.Brain`. Recognition runs in one worker thread shared by
the connections (:mod:`agent.emulator.recognizer`).

The conformance log (:mod:`agent.emulator.conformance`): :attr:`Emulator.violations` holds
every violation of every connection; ``conformance_log_path`` appends them as JSON lines;
with ``strict_fail`` the offending connection gets a ``realtime.error`` event and a 1008
close, and ``navtalk-agent emulator`` exits with status 1 at the end.

Used three ways: ``navtalk-agent emulator`` (:mod:`agent.emulator.cli`), embedded by the
supervisor (which runs that command), and in tests (:class:`Emulator`). Module graph, no
cycles: cli -> server -> session -> (brain -> script, faults, vad, conformance, outputs,
frames), rtc -> avatar -> media, recognizer, speech, tts, tls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
import uuid
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.http11 import Request, Response

from agent.emulator.brain import UPDATED_DELAY_S, Brain
from agent.emulator.conformance import Violation
from agent.emulator.faults import Faults
from agent.emulator.recognizer import GrammarRecognizer, OrderRecognizer, RecognizerMode
from agent.emulator.script import Script
from agent.emulator.session import Observer, Recognizer, Session, SessionRecord
from agent.emulator.tts import Tts
from agent.navtalk.settings import EmulatorSettings
from agent.navtalk.url import RedactFilter, redact, register_secret

__all__ = ["PATH", "Emulator", "SessionRecord", "serve"]

logger = logging.getLogger(__name__)
logger.addFilter(RedactFilter())
# websockets logs the request line (with ?license=...) at DEBUG: give it a redacting logger.
_ws_log = logging.getLogger(__name__ + ".ws")
_ws_log.addFilter(RedactFilter())

PATH = "/wss/v2/realtime-chat"  # [seed][sdk]
MAX_FRAME_BYTES = 16 * 1024 * 1024  # images arrive as base64 data URLs
POLICY_VIOLATION = 1008  # WebSocket close code


class Emulator:
    """The server. ``await start()`` returns the port; ``await close()`` stops everything."""

    def __init__(
        self,
        settings: EmulatorSettings,
        *,
        script: Script | None = None,
        observer: Observer | None = None,
        updated_delay_s: float = UPDATED_DELAY_S,
        created_delay_s: float = 0.0,
    ) -> None:
        self.settings = settings
        self.updated_delay_s = updated_delay_s  # session.created -> session.updated
        self.created_delay_s = created_delay_s  # connected.success -> session.created
        self.script = script if script is not None else Script.load(settings.script_path or None)
        self.observer = observer
        self.faults = Faults(
            reject=settings.reject_license,
            insufficient_balance=settings.insufficient_balance,
            duplicate_name=settings.duplicate_name_warning,
            drop_after_s=settings.drop_after_s,
            malformed=settings.malformed_frames,
        )
        self.mode = RecognizerMode(settings.recognizer)
        self._grammar: GrammarRecognizer | None = None
        if self.mode is RecognizerMode.SPEECH:
            self._grammar = GrammarRecognizer(self.script.hears)
        self.tts = Tts(settings.tts_voice, settings.tts_words_per_minute)
        self.sessions: list[SessionRecord] = []
        self.session_opened = asyncio.Condition()
        self.violations: list[Violation] = []  # the conformance log of every connection
        self.violation_seen = asyncio.Condition()
        self.recognition_cpu_s = 0.0  # CPU spent recognizing (the worker thread's)
        self.recognized_audio_s = 0.0  # audio recognized
        self.port = 0
        self.cert_pem = b""  # the self-signed certificate, when tls
        self._server: Server | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._live: set[Session] = set()

    @property
    def base_url(self) -> str:
        scheme = "wss" if self.settings.tls else "ws"
        return f"{scheme}://{self.settings.host}:{self.port}{PATH}"

    @property
    def failed(self) -> bool:
        """Strict and a client broke the protocol: the run has failed."""
        return self.settings.strict_fail and bool(self.violations)

    async def start(self) -> int:
        from agent.video.peer import is_loopback, restrict_ice_host

        if is_loopback(self.settings.host):  # with or without offers of its own: a client's
            restrict_ice_host("127.0.0.1")  # offer is answered with loopback candidates only
        ctx = None
        if self.settings.tls:
            from agent.emulator.tls import server_context

            ctx, self.cert_pem = server_context(self.settings.host)
        if self._grammar is not None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, "emu-asr")
        self._server = await ws_serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            ssl=ctx,
            process_request=self._process_request,
            max_size=MAX_FRAME_BYTES,
            logger=_ws_log,
        )
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        if self._grammar is not None:
            self._grammar.start_build()  # the decoder is built while the port is open already
        logger.info(
            "= emulator listening on %s (recognizer %s, strict_fail %s)",
            self.base_url,
            self.mode.value,
            self.settings.strict_fail,
        )
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for sess in list(self._live):
            await sess.cleanup()
        if self._executor is not None:
            # A recognition under way finishes in well under a second; wait off the loop.
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
            self._executor = None
        if self.violations:
            logger.warning(
                "! emulator: %d conformance violation(s): %s",
                len(self.violations),
                ", ".join(sorted({v.kind.value for v in self.violations})),
            )

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_sessions(self, n: int, timeout: float) -> SessionRecord:
        """Wait until ``n`` sessions have been opened; return the n-th."""
        async with asyncio.timeout(timeout), self.session_opened:
            await self.session_opened.wait_for(lambda: len(self.sessions) >= n)
        return self.sessions[n - 1]

    async def wait_violations(self, n: int, timeout: float) -> list[Violation]:
        """Wait until ``n`` violations have been logged; return them all."""
        async with asyncio.timeout(timeout), self.violation_seen:
            await self.violation_seen.wait_for(lambda: len(self.violations) >= n)
        return list(self.violations)

    async def report(self, session: Session, violation: Violation) -> None:
        """One entry of the conformance log (called by the sessions)."""
        record = session.record
        logger.warning(
            "! conformance: session %d %s: %s (%s)",
            record.index,
            violation.kind.value,
            violation.detail,
            violation.message_type or "-",
        )
        async with self.violation_seen:
            self.violations.append(violation)
            self.violation_seen.notify_all()
        if self.settings.conformance_log_path:
            line = json.dumps(
                {"session": record.index, **violation.to_json(), "wall_time": time.time()}
            )
            _append_line(self.settings.conformance_log_path, line)
        if self.settings.strict_fail:
            reason = f"conformance: {violation.kind.value}"
            await session.send(
                {
                    "type": "realtime.error",
                    "data": {
                        "type": "invalid_request_error",
                        "code": "conformance_violation",
                        "message": f"{violation.kind.value}: {violation.detail}",
                    },
                }
            )
            await session.ws.close(POLICY_VIOLATION, reason[:120])

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        return None

    def _recognizer(self) -> Recognizer:
        if self._grammar is not None:
            return self._grammar
        return OrderRecognizer(self.script.hears)

    async def _handle(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        license = (query.get("license") or [""])[0]
        register_secret(license)
        avatar_id = (query.get("avatarId") or [""])[0]
        name = (query.get("name") or [""])[0]
        session_id = f"emu-{uuid.uuid4().hex[:12]}"
        faults = self.faults.with_license(license)
        s = self.settings
        brain = Brain(
            self.script,
            faults=faults,
            session_id=session_id,
            avatar_id=avatar_id,
            webrtc=s.webrtc,
            vad_mode=s.vad_mode,
            vad_start_ms=s.vad_start_ms,
            vad_end_ms=s.vad_end_ms,
            offer_deadline_s=s.offer_deadline_s,
            updated_delay_s=self.updated_delay_s,
            created_delay_s=self.created_delay_s,
        )
        record = SessionRecord(
            index=len(self.sessions) + 1,
            session_id=session_id,
            query=redact(urlsplit(ws.request.path if ws.request else "").query),
            stats=brain.stats,
            faults=faults,
            opened_mono=time.monotonic(),
        )
        logger.info(
            "< emulator: session %d %s (%s, avatar %r)",
            record.index,
            session_id,
            record.query,
            avatar_id or name,
        )
        async with self.session_opened:
            self.sessions.append(record)
            self.session_opened.notify_all()
        sess = Session(
            self,
            ws,
            brain,
            record,
            self._recognizer(),
            license_given=bool(license),
            executor=self._executor,
        )
        self._live.add(sess)
        try:
            await sess.run()
        finally:
            self._live.discard(sess)
            await sess.cleanup()


def _append_line(path: str, line: str) -> None:
    # One short line per violation (rare): a blocking append is cheaper than a thread hop.
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError:
        logger.exception("emulator: cannot write the conformance log %s", path)


async def serve(settings: EmulatorSettings, *, ready: Callable[[int], None] | None = None) -> None:
    """Run the emulator until cancelled; ``ready(port)`` is called once it listens."""
    emulator = Emulator(settings)
    await emulator.start()
    try:
        if ready is not None:
            ready(emulator.port)
        await asyncio.Future()  # until cancelled
    finally:
        await emulator.close()
