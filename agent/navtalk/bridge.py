"""NavTalk server events -> bus messages, and bus messages -> what may go to NavTalk. Sans I/O.

:func:`to_bus` maps one event of :mod:`agent.navtalk.events` to the bus messages it
becomes (topic, message, payload frames, latch depth); :func:`failure_of` says which
events end the session and how. :func:`check_local` bounds what local processes put
on the bus before anything is forwarded to NavTalk. Every text that came from the
server is redacted of the license again here (the protocol core redacts the raw frame;
this catches what JSON escapes could hide).

Signaling (BRIEF contract 2): the server's offer is published latched (depth 1) and
its trickled candidates latched (depth :data:`ICE_LATCH`), both stamped with the
current ``connection_id``, so a display that comes up late still gets them, and a
stale offer of an older connection is recognisable.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from agent import topics
from agent.backoff import FailureKind, classify_server_message
from agent.errors import PermanentSessionError, TransientSessionError
from agent.messages import (
    AssistantTranscript,
    AudioFrame,
    BargeIn,
    ConnectionEvent,
    ConnectionStatus,
    FunctionCall,
    IceCandidate,
    IceServer,
    ImageInput,
    Message,
    OtherEvent,
    PreRoll,
    ResponseDone,
    SdpMessage,
    ServerSpeech,
    TextInput,
    UserTranscript,
)
from agent.navtalk import events as ev
from agent.navtalk.protocol import (
    AUDIO_SAMPLE_RATE_HZ,
    MAX_CANDIDATE_CHARS,
    MAX_ID_CHARS,
    MAX_SDP_CHARS,
)
from agent.navtalk.url import redact

__all__ = [
    "ICE_LATCH",
    "OFFER_LATCH",
    "Publish",
    "check_local",
    "stale_signaling",
    "failure_of",
    "ice_servers",
    "to_bus",
]

logger = logging.getLogger(__name__)

OFFER_LATCH = 1
ICE_LATCH = 32
MAX_OTHER_JSON = 4096
MAX_TEXT_CHARS = 16 * 1024  # a typed turn from the bus
MAX_IMAGE_BYTES = 8 * 1024 * 1024  # base64 in a WebSocket frame: ~11 MB
MAX_MIC_FRAME_BYTES = AUDIO_SAMPLE_RATE_HZ * 2  # one second of 24 kHz PCM16 per frame
MAX_PREROLL_BYTES = AUDIO_SAMPLE_RATE_HZ * 2 * 10  # ten seconds


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    msg: Message
    payload: tuple[bytes, ...] = ()
    latch: int = 0  # > 0: publish latched, keeping the last `latch` messages


def ice_servers(servers: tuple[ev.IceServerInfo, ...]) -> list[IceServer]:
    return [
        IceServer(urls=list(s.urls), username=s.username, credential=s.credential) for s in servers
    ]


def other(type_: str, data_json: str = "{}", *, known: bool = True, error: str = "") -> Publish:
    return Publish(
        topics.NAVTALK_OTHER,
        OtherEvent(
            type=redact(type_)[:MAX_ID_CHARS],
            data_json=redact(data_json)[:MAX_OTHER_JSON],
            known=known,
            error=redact(error)[:MAX_OTHER_JSON],
        ),
    )


def to_bus(
    event: ev.Event,
    *,
    connection_id: str,
    ice: tuple[ev.IceServerInfo, ...],
    now_ns: int,
) -> list[Publish]:
    """The bus messages ``event`` becomes (may be none)."""
    match event:
        case ev.ConnectedSuccess():
            msg = ConnectionEvent(
                status=ConnectionStatus.SUCCESS,
                session_id=redact(event.session_id),
                ice_servers=ice_servers(event.ice_servers),
            )
            return [Publish(topics.NAVTALK_CONNECTION, msg)]
        case ev.ConnectedFail():
            text = redact(event.message) or "the server refused the connection"
            msg = ConnectionEvent(status=ConnectionStatus.FAIL, message=text)
            return [Publish(topics.NAVTALK_CONNECTION, msg)]
        case ev.InsufficientBalance():
            text = redact(event.message) or "insufficient balance"
            status = ConnectionStatus.INSUFFICIENT_BALANCE
            msg = ConnectionEvent(status=status, message=text)
            return [Publish(topics.NAVTALK_CONNECTION, msg)]
        case ev.ConnectedClose():
            msg = ConnectionEvent(status=ConnectionStatus.CLOSE, message=redact(event.message))
            return [Publish(topics.NAVTALK_CONNECTION, msg)]
        case ev.ConnectedWarning():
            msg = ConnectionEvent(
                status=ConnectionStatus.WARNING,
                message=redact(event.message),
                avatar_id=redact(event.avatar_id) if event.avatar_id else None,
            )
            return [Publish(topics.NAVTALK_CONNECTION, msg)]
        case ev.SessionCreated() | ev.SessionUpdated():
            return [other(event.TYPE)]
        case ev.SpeechStarted():
            return [
                Publish(topics.NAVTALK_SPEECH, ServerSpeech(started=True)),
                Publish(
                    topics.CONTROL_BARGE_IN, BargeIn(reason="speech_started", at_mono_ns=now_ns)
                ),
            ]
        case ev.SpeechStopped():
            return [Publish(topics.NAVTALK_SPEECH, ServerSpeech(started=False))]
        case ev.InputTranscriptionCompleted():
            msg_u = UserTranscript(text=redact(event.content), item_id=redact(event.item_id))
            return [Publish(topics.NAVTALK_TRANSCRIPT_USER, msg_u)]
        case ev.TranscriptDelta() | ev.TranscriptDone():
            msg_a = AssistantTranscript(
                response_id=redact(event.response_id),
                text=redact(event.content),
                final=isinstance(event, ev.TranscriptDone),
            )
            return [Publish(topics.NAVTALK_TRANSCRIPT_ASSISTANT, msg_a)]
        case ev.AudioDelta():
            # Never mute: always on the bus; the speaker decides whether to play it.
            frame = AudioFrame(
                sample_rate_hz=AUDIO_SAMPLE_RATE_HZ,
                capture_mono_ns=now_ns,
                stream_id=redact(event.response_id),
            )
            return [Publish(topics.NAVTALK_AUDIO_DELTA, frame, (event.pcm,))]
        case ev.AudioDone():
            msg_d = ResponseDone(response_id=redact(event.response_id))
            return [Publish(topics.NAVTALK_AUDIO_DONE, msg_d)]
        case ev.FunctionCallArgumentsDelta():
            return [other(event.TYPE, json.dumps({"call_id": event.call_id}))]
        case ev.FunctionCallDone():
            call = FunctionCall(
                call_id=event.call_id, name=event.name, arguments_json=redact(event.arguments)
            )
            return [Publish(topics.NAVTALK_FUNCTION_CALL, call)]
        case ev.RtcOffer():
            sdp = SdpMessage(
                sdp_type="offer",
                sdp=redact(event.sdp),
                ice_servers=ice_servers(ice),
                connection_id=connection_id,
            )
            return [Publish(topics.WEBRTC_REMOTE_OFFER, sdp, latch=OFFER_LATCH)]
        case ev.RtcAnswer():
            sdp = SdpMessage(sdp_type="answer", sdp=redact(event.sdp), connection_id=connection_id)
            return [Publish(topics.WEBRTC_REMOTE_ANSWER, sdp)]
        case ev.RtcIceCandidate():
            cand = IceCandidate(
                candidate=redact(event.candidate),
                sdp_mid=event.sdp_mid,
                sdp_mline_index=event.sdp_mline_index,
                connection_id=connection_id,
            )
            return [Publish(topics.WEBRTC_REMOTE_ICE, cand, latch=ICE_LATCH)]
        case ev.Unknown():
            try:
                data = json.dumps(event.frame)[: MAX_OTHER_JSON * 2]
            except (ValueError, RecursionError):
                data = "{}"
            return [other(event.type, data, known=False)]
        case ev.Malformed():
            return [other(event.type or "(malformed)", "{}", known=False, error=event.reason)]
        case ev.BinaryFrame():
            return [other("(binary)", json.dumps({"size": event.size}))]
        case _:
            return [other(event.TYPE)]


def failure_of(event: ev.Event, *, ended_by_us: bool) -> Exception | None:
    """The failure an event means for the session (None: it goes on)."""
    match event:
        case ev.ConnectedFail():
            text = redact(event.message) or "the server refused the connection"
            logger.error("< NavTalk refused the session: %s (check the license)", text)
            return PermanentSessionError(f"connection failed: {text}")
        case ev.InsufficientBalance():
            text = redact(event.message) or "insufficient balance"
            logger.error("< NavTalk stopped the service: insufficient balance (%s)", text)
            return PermanentSessionError(f"insufficient balance: {text}")
        case ev.ConnectedClose():
            text = redact(event.message)
            logger.warning("< NavTalk closed the session: %s", text or "(no reason)")
            if ended_by_us:
                return None
            permanent = classify_server_message(text) is FailureKind.PERMANENT
            cls = PermanentSessionError if permanent else TransientSessionError
            return cls(f"closed by the server: {text or 'no reason'}")
        case ev.ConnectedWarning():
            logger.warning(
                "< NavTalk warning: %s (avatar %s)",
                redact(event.message),
                redact(event.avatar_id or "?"),
            )
            return None
        case _:
            return None


def stale_signaling(connection_id: str, current: str | None) -> str | None:
    """Why local signaling for ``connection_id`` must not go to the current connection
    (None: it may). An empty id (a display that predates connection ids) is taken as
    the current connection's."""
    if current is None:
        return "no NavTalk session"
    if connection_id and connection_id != current:
        return f"it is for connection {connection_id[:32]}, the current one is {current}"
    return None


def check_local(msg: Message, payload: list[bytes]) -> str | None:
    """Why a message from a local process may not go to NavTalk (None: it may)."""
    size = sum(len(p) for p in payload)
    match msg:
        case AudioFrame() if size > MAX_MIC_FRAME_BYTES:
            return f"an audio frame of {size} bytes (limit {MAX_MIC_FRAME_BYTES})"
        case AudioFrame() if size % 2:
            return "an audio frame of an odd number of bytes"
        case PreRoll() if size > MAX_PREROLL_BYTES:
            return f"a pre-roll of {size} bytes (limit {MAX_PREROLL_BYTES})"
        case SdpMessage() if len(msg.sdp) > MAX_SDP_CHARS:
            return f"an SDP of {len(msg.sdp)} characters (limit {MAX_SDP_CHARS})"
        case IceCandidate() if len(msg.candidate) > MAX_CANDIDATE_CHARS:
            return f"an ICE candidate of {len(msg.candidate)} characters"
        case IceCandidate() if len(msg.sdp_mid or "") > MAX_ID_CHARS:
            return "an ICE candidate with an over-long sdp_mid"
        case TextInput() if len(msg.text) > MAX_TEXT_CHARS:
            return f"a text of {len(msg.text)} characters (limit {MAX_TEXT_CHARS})"
        case ImageInput() if size > MAX_IMAGE_BYTES:
            return f"an image of {size} bytes (limit {MAX_IMAGE_BYTES})"
        case _:
            return None
