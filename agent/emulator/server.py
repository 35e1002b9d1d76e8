"""The local NavTalk-compatible server: websockets + aiortc around the Brain.

Same path and query as the real service (``/wss/v2/realtime-chat?license=...&name=...``
or ``&avatarId=...``), optionally TLS with a self-signed certificate generated at
start. Per session: a Brain (the conversation, sans I/O), a speaker task that
synthesizes replies and sends them paced in real time, a timer task, and an
aiortc peer connection carrying the avatar's video and voice
(:class:`agent.emulator.media.AvatarMedia`), offered after
``conversation.connected.success`` with the server's candidates in the SDP.

Used three ways: ``navtalk-agent emulator`` (:func:`main`), embedded by the
supervisor (:func:`serve`), and in tests (:class:`Emulator`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import signal
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from agent.aio import run_to_end
from agent.emulator.brain import (
    Brain,
    CancelResponses,
    Close,
    Drop,
    Faults,
    Output,
    RemoteIce,
    RemoteSdp,
    Respond,
    Script,
    Send,
    SessionStats,
    StartWebRtc,
)
from agent.emulator.tts import Tts
from agent.navtalk.settings import EmulatorSettings
from agent.navtalk.url import RedactFilter, redact, register_secret

if TYPE_CHECKING:
    from agent.config import Settings

__all__ = [
    "PATH",
    "Emulator",
    "SessionRecord",
    "add_cli_arguments",
    "main",
    "serve",
]

logger = logging.getLogger(__name__)
logger.addFilter(RedactFilter())
# websockets logs the request line (with ?license=...) at DEBUG: give it a redacting logger.
_ws_log = logging.getLogger(__name__ + ".ws")
_ws_log.addFilter(RedactFilter())

PATH = "/wss/v2/realtime-chat"  # [seed][sdk]
MAX_FRAME_BYTES = 16 * 1024 * 1024  # images arrive as base64 data URLs


# observer(record, frame type, CLOCK_MONOTONIC ns at receipt, frame text): tests, benchmarks
Observer = Callable[["SessionRecord", str, int, str], None]


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
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class Emulator:
    """The server. ``await start()`` returns the port; ``await close()`` stops everything."""

    def __init__(
        self,
        settings: EmulatorSettings,
        *,
        script: Script | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.script = script if script is not None else Script.load(settings.script_path or None)
        self.observer = observer
        self.faults = Faults(
            reject=settings.reject_license,
            insufficient_balance=settings.insufficient_balance,
            duplicate_name=settings.duplicate_name_warning,
            drop_after_s=settings.drop_after_s,
            malformed=settings.malformed_frames,
        )
        self.tts = Tts(settings.tts_voice, settings.tts_words_per_minute)
        self.sessions: list[SessionRecord] = []
        self.session_opened = asyncio.Condition()
        self.port = 0
        self.cert_pem = b""  # the self-signed certificate, when tls
        self._server: Server | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._live: set[_Session] = set()

    @property
    def base_url(self) -> str:
        scheme = "wss" if self.settings.tls else "ws"
        return f"{scheme}://{self.settings.host}:{self.port}{PATH}"

    async def start(self) -> int:
        if self.settings.webrtc:
            from agent.video.peer import is_loopback, restrict_ice_host

            if is_loopback(self.settings.host):
                restrict_ice_host("127.0.0.1")  # ICE host candidates on loopback only
        ctx = self._tls_context() if self.settings.tls else None
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
        logger.info("= emulator listening on %s", self.base_url)
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for sess in list(self._live):
            await sess.cleanup()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

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

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        return None

    def _tls_context(self) -> ssl.SSLContext:
        self._tmp = tempfile.TemporaryDirectory(prefix="navtalk-emu-")
        cert, key = _self_signed(self.settings.host)
        self.cert_pem = cert
        cert_path, key_path = Path(self._tmp.name) / "cert.pem", Path(self._tmp.name) / "key.pem"
        cert_path.write_bytes(cert)
        key_path.write_bytes(key)
        key_path.chmod(0o600)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_path, key_path)
        return ctx

    async def _handle(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        license = (query.get("license") or [""])[0]
        register_secret(license)
        avatar_id = (query.get("avatarId") or [""])[0]
        name = (query.get("name") or [""])[0]
        session_id = f"emu-{uuid.uuid4().hex[:12]}"
        faults = self.faults.with_license(license)
        brain = Brain(
            self.script,
            faults=faults,
            session_id=session_id,
            avatar_id=avatar_id,
            webrtc=self.settings.webrtc,
            vad_mode=self.settings.vad_mode,
            vad_start_ms=self.settings.vad_start_ms,
            vad_end_ms=self.settings.vad_end_ms,
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
        sess = _Session(self, ws, brain, record, license_given=bool(license))
        self._live.add(sess)
        try:
            await sess.run()
        finally:
            self._live.discard(sess)
            await sess.cleanup()


class _Session:
    """The I/O of one session: the socket, timers, the speaker and the peer connection."""

    def __init__(
        self,
        emu: Emulator,
        ws: ServerConnection,
        brain: Brain,
        record: SessionRecord,
        *,
        license_given: bool,
    ) -> None:
        self.emu = emu
        self.ws = ws
        self.brain = brain
        self.record = record
        self.license_given = license_given
        self.settings = emu.settings
        self._wake = asyncio.Event()
        self._responses: asyncio.Queue[Respond] = asyncio.Queue(maxsize=32)
        self._speaking: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._rtc_ready: asyncio.Task[None] | None = None
        self._rtc_lock = asyncio.Lock()
        self.pc: Any = None  # aiortc.RTCPeerConnection
        self.media: Any = None  # agent.emulator.media.AvatarMedia
        self._drain: set[asyncio.Task[None]] = set()
        self._cleaned = False

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
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
                    logger.info("< emulator: binary frame of %d bytes ignored", len(message))
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
        for task in list(self._tasks) + list(self._drain):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._drain, return_exceptions=True)
        if self.pc is not None:
            await run_to_end(self.pc.close())  # see agent.aio
        self.record.closed_mono = time.monotonic()
        self.record.closed.set()

    async def execute(self, outputs: list[Output]) -> None:
        for out in outputs:
            match out:
                case Send(frame=frame):
                    await self.send(frame)
                case Respond():
                    try:
                        self._responses.put_nowait(out)
                    except asyncio.QueueFull:
                        logger.warning("= emulator: response queue full; dropping %r", out.text)
                case CancelResponses():
                    await self._cancel_responses()
                case StartWebRtc():
                    self._rtc_ready = self._spawn(self._offer(), "emu-offer")
                case RemoteSdp() | RemoteIce():
                    self._spawn(self._signal(out), "emu-signal")
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
            response = await self._responses.get()
            self._speaking = asyncio.create_task(self._speak(response), name="emu-speak")
            try:
                await self._speaking
            except asyncio.CancelledError:
                if self._speaking.cancelled() and not _current_cancelling():
                    continue  # barge-in cancelled the response, not us
                raise
            finally:
                self._speaking = None

    async def _speak(self, response: Respond) -> None:
        pcm = await self.emu.tts.synthesize(response.text)
        if self.media is not None:
            self.media.speak(pcm)
        frames = Brain.response_frames(response.response_id, response.text, pcm)
        start = time.monotonic()
        pace = self.settings.pace
        for at, frame in frames:
            if frame["type"] == "realtime.response.audio.delta" and not (
                self.settings.send_audio_deltas
            ):
                continue
            delay = start + at / pace - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.send(frame)

    async def _cancel_responses(self) -> None:
        while not self._responses.empty():
            self._responses.get_nowait()
        if self.media is not None:
            self.media.stop_speaking()
        task = self._speaking
        if task is not None and not task.done():
            task.cancel()
            logger.info("= emulator: barge-in, response cancelled")
            await self.send({"type": "realtime.response.audio.done", "data": {}})

    # --- WebRTC ------------------------------------------------------------------------------

    def _new_pc(self) -> Any:
        from aiortc import RTCConfiguration, RTCPeerConnection

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        media = _avatar_media(self.settings)
        if media is not None:
            self.media = media
            pc.addTrack(media.video)
            pc.addTrack(media.audio)
        else:
            pc.addTransceiver("video", direction="sendrecv")
            pc.addTransceiver("audio", direction="sendrecv")

        @pc.on("connectionstatechange")
        def _state() -> None:
            self.record.rtc_states.append(str(pc.connectionState))
            logger.info("= emulator WebRTC %s", pc.connectionState)

        @pc.on("track")
        def _track(track: Any) -> None:  # a client camera: always drain remote tracks
            task = asyncio.create_task(_drain(track))
            self._drain.add(task)
            task.add_done_callback(self._drain.discard)

        return pc

    async def _offer(self) -> None:
        async with self._rtc_lock:
            self.pc = self._new_pc()
            # aiortc gathers before it writes the SDP: the candidates are in the offer [wire].
            await self.pc.setLocalDescription(await self.pc.createOffer())
            sdp = self.pc.localDescription.sdp
        await self.send(
            {"type": "webrtc.signaling.offer", "data": {"sdp": {"type": "offer", "sdp": sdp}}}
        )

    async def _signal(self, out: RemoteSdp | RemoteIce) -> None:
        from aiortc import RTCSessionDescription
        from aiortc.sdp import candidate_from_sdp

        if self._rtc_ready is not None:
            await asyncio.gather(self._rtc_ready, return_exceptions=True)
        try:
            async with self._rtc_lock:
                if isinstance(out, RemoteIce):
                    if self.pc is None or not out.candidate:
                        return  # end of candidates, or no connection yet
                    text = out.candidate.removeprefix("candidate:")
                    cand = candidate_from_sdp(text)
                    cand.sdpMid = out.sdp_mid
                    cand.sdpMLineIndex = out.sdp_mline_index
                    await self.pc.addIceCandidate(cand)
                elif out.sdp_type == "answer":
                    if self.pc is None:
                        logger.warning("< emulator: answer without an offer")
                        return
                    await self.pc.setRemoteDescription(RTCSessionDescription(out.sdp, "answer"))
                else:  # client-initiated offer (renegotiation [hotel]): answer it
                    self.record.client_offers += 1
                    # Always on a fresh connection: a client offers when it restarted or its
                    # connection failed, so the offer brings new ICE credentials and a new
                    # DTLS fingerprint, which aiortc cannot apply to a live connection (no
                    # ICE restart): the old one would stay "connecting" for ever.
                    if self.pc is not None:
                        await run_to_end(self.pc.close())  # see agent.aio
                    self.pc = self._new_pc()
                    await self.pc.setRemoteDescription(RTCSessionDescription(out.sdp, "offer"))
                    await self.pc.setLocalDescription(await self.pc.createAnswer())
                    answer = self.pc.localDescription.sdp
                    await self.send(
                        {
                            "type": "webrtc.signaling.answer",
                            "data": {"sdp": {"type": "answer", "sdp": answer}},
                        }
                    )
        except Exception:  # a bad SDP from the client must not end the session
            logger.exception("emulator: WebRTC signaling failed")


async def _drain(track: Any) -> None:
    from aiortc.mediastreams import MediaStreamError

    try:
        while True:
            await track.recv()
    except MediaStreamError:
        return


def _avatar_media(settings: EmulatorSettings) -> Any:
    try:
        from agent.emulator.media import AvatarMedia
    except ImportError as exc:  # pragma: no cover - while media.py is being written
        logger.warning("= emulator: no avatar media (%s); offering empty tracks", exc)
        return None
    return AvatarMedia(settings.video_width, settings.video_height, settings.video_fps)


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


def _self_signed(host: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for localhost, 127.0.0.1 and ``host`` (PEM cert, PEM key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "navtalk-agent emulator")])
    alt: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    try:
        alt.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        if host and host != "localhost":
            alt.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


# --- entry points ----------------------------------------------------------------------------


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


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``navtalk-agent emulator``; each overrides the [emulator] setting of the config."""
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 8765; 0 = any free port)")
    parser.add_argument("--tls", action="store_true", default=None, help="wss:// (self-signed)")
    parser.add_argument("--script", metavar="FILE", help="conversation rules (TOML)")
    parser.add_argument("--no-webrtc", action="store_true", help="do not offer WebRTC")
    parser.add_argument("--pace", type=float, help="audio pacing factor (1.0 = real time)")
    faults = parser.add_argument_group("fault injection (also by license tokens: see brain.py)")
    faults.add_argument("--reject-license", action="store_true", help="fail every connection")
    faults.add_argument("--insufficient-balance", action="store_true", help="no balance")
    faults.add_argument("--duplicate-name", action="store_true", help="duplicate-name warning")
    faults.add_argument("--drop-after", type=float, metavar="S", help="drop each session after S s")
    faults.add_argument("--malformed", action="store_true", help="send malformed frames")


def settings_from_args(args: argparse.Namespace, base: EmulatorSettings) -> EmulatorSettings:
    changes: dict[str, Any] = {}
    for attr, key in (("host", "host"), ("port", "port"), ("script", "script_path"),
                      ("pace", "pace"), ("drop_after", "drop_after_s")):  # fmt: skip
        value = getattr(args, attr, None)
        if value is not None:
            changes[key] = value
    for attr, key in (("tls", "tls"), ("reject_license", "reject_license"),
                      ("insufficient_balance", "insufficient_balance"),
                      ("duplicate_name", "duplicate_name_warning"),
                      ("malformed", "malformed_frames")):  # fmt: skip
        if getattr(args, attr, None):
            changes[key] = True
    if getattr(args, "no_webrtc", False):
        changes["webrtc"] = False
    return replace_struct(base, changes)


def replace_struct(base: EmulatorSettings, changes: Mapping[str, Any]) -> EmulatorSettings:
    import msgspec

    # Through msgspec.convert so the Meta constraints (port range, ...) are checked.
    merged = msgspec.structs.asdict(base) | dict(changes)
    return msgspec.convert(merged, EmulatorSettings)


def main(args: argparse.Namespace, settings: Settings) -> int:
    """``navtalk-agent emulator``: serve until Ctrl-C. Returns the exit code."""
    emu_settings = settings_from_args(args, settings.emulator)

    def ready(port: int) -> None:
        scheme = "wss" if emu_settings.tls else "ws"
        print(
            f"NavTalk emulator on {scheme}://{emu_settings.host}:{port}{PATH}"
            "?license=ANY&name=navtalk.Leo",
            flush=True,
        )

    async def until_signal() -> None:
        # SIGTERM (the supervisor, systemd) and SIGINT stop the server cleanly: exit code 0.
        loop = asyncio.get_running_loop()
        server = asyncio.create_task(serve(emu_settings, ready=ready), name="emulator")
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, server.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await server
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping: a second SIGTERM is moot

    asyncio.run(until_signal())
    return 0
