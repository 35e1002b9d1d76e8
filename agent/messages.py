"""The bus contract: every message that travels between navtalk-agent processes.

A bus message is a ZeroMQ multipart list ``[topic, body, *payload]``:

- ``topic``: dotted ASCII (``audio.mic``), so SUB prefix filters work; see
  :mod:`agent.topics` for which message type rides on which topic.
- ``body``: an :class:`Envelope` encoded as MessagePack. It carries the
  sender, a per-(sender, topic) sequence number, two timestamps and the typed
  message itself (a tagged union: the ``kind`` field names the class).
- ``payload``: bulk bytes (PCM, JPEG) as raw frames, never base64 in the body.

Messages are frozen and validated on decode; units live in field names.
An unknown ``kind`` fails to decode with :class:`agent.errors.MessageDecodeError`,
which receivers log and drop.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec

from agent.errors import ErrorCategory, MessageDecodeError
from agent.msgpack_limits import MsgpackLimitError, check_msgpack

__all__ = [
    "AnyMessage",
    "AssistantTranscript",
    "AudioFrame",
    "BargeIn",
    "ConnectionEvent",
    "ConnectionStatus",
    "Envelope",
    "ErrorInfo",
    "FunctionCall",
    "Heartbeat",
    "IceCandidate",
    "IceServer",
    "ImageInput",
    "Message",
    "Metrics",
    "OtherEvent",
    "PreRoll",
    "PreRollRequest",
    "ResponseDone",
    "RobotCommand",
    "SdpMessage",
    "ServerSpeech",
    "SessionControl",
    "SessionPhase",
    "SessionState",
    "SetVolume",
    "Shutdown",
    "SpeakerState",
    "TextInput",
    "ToolCall",
    "ToolCatalog",
    "ToolDescribe",
    "ToolResult",
    "ToolSpec",
    "UserTranscript",
    "VadState",
    "VideoStats",
    "decode_envelope",
    "encode_envelope",
]

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag=True):
    """Base of every bus message. The ``kind`` tag on the wire is the class name."""


# --- audio -------------------------------------------------------------------------------


class AudioFrame(Message, frozen=True, kw_only=True, tag=True):
    """A block of interleaved signed 16-bit little-endian PCM; the samples are payload[0].

    Rides on ``audio.mic`` (24 kHz mono, 20 ms), ``audio.out`` (the avatar's
    voice, usually 48 kHz), ``audio.played`` (what the speaker played, the
    echo reference) and ``navtalk.audio.delta`` (audio-only mode, 24 kHz).
    """

    sample_rate_hz: Annotated[int, msgspec.Meta(gt=0)]
    channels: Annotated[int, msgspec.Meta(ge=1, le=32)] = 1
    capture_mono_ns: NonNegInt = 0  # CLOCK_MONOTONIC when the first sample was captured/received
    stream_id: str = ""  # e.g. the response id, so a consumer can tell utterances apart


class VadState(Message, frozen=True, kw_only=True, tag=True):
    """Local voice activity changed (``vad.state``)."""

    speaking: bool
    at_mono_ns: NonNegInt  # capture time of the frame where the change was decided


class PreRollRequest(Message, frozen=True, kw_only=True, tag=True):
    """Ask the mic for its recent audio (``mic.preroll.request``)."""

    request_id: str
    duration_ms: Annotated[int, msgspec.Meta(gt=0, le=10_000)] = 1000


class PreRoll(Message, frozen=True, kw_only=True, tag=True):
    """The mic's recent audio (``mic.preroll``); PCM16 mono in payload[0]."""

    request_id: str
    sample_rate_hz: int
    end_mono_ns: NonNegInt  # capture time just after the last sample


# --- NavTalk server events (published by the session) --------------------------------------


class ConnectionStatus(enum.StrEnum):
    SUCCESS = "success"
    FAIL = "fail"
    CLOSE = "close"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    WARNING = "warning"


class IceServer(msgspec.Struct, frozen=True, kw_only=True):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class ConnectionEvent(Message, frozen=True, kw_only=True, tag=True):
    """A ``conversation.connected.*`` event (``navtalk.connection``)."""

    status: ConnectionStatus
    message: str = ""
    session_id: str | None = None
    avatar_id: str | None = None
    ice_servers: list[IceServer] = []


class ServerSpeech(Message, frozen=True, kw_only=True, tag=True):
    """Server-side VAD: ``speech_started`` / ``speech_stopped`` (``navtalk.speech``)."""

    started: bool


class UserTranscript(Message, frozen=True, kw_only=True, tag=True):
    """What the guest said, as the server transcribed it (``navtalk.transcript.user``)."""

    text: str
    item_id: str = ""


class AssistantTranscript(Message, frozen=True, kw_only=True, tag=True):
    """A piece (``final=False``) or the whole (``final=True``) of the avatar's reply text
    (``navtalk.transcript.assistant``)."""

    response_id: str
    text: str
    final: bool = False


class ResponseDone(Message, frozen=True, kw_only=True, tag=True):
    """The avatar's audio for a response is complete (``navtalk.audio.done``)."""

    response_id: str = ""


class FunctionCall(Message, frozen=True, kw_only=True, tag=True):
    """The model called a function (``navtalk.function_call``); the session also sends
    a ``tool.call`` for the tools process."""

    call_id: str
    name: str
    arguments_json: str


class OtherEvent(Message, frozen=True, kw_only=True, tag=True):
    """Any other server event, unknown types and malformed frames included (``navtalk.other``)."""

    type: str
    data_json: str = "{}"  # the frame, with the license redacted, truncated to a few kB
    known: bool = True
    error: str = ""  # set for malformed frames


# --- WebRTC signaling (session <-> display) ------------------------------------------------


class SdpMessage(Message, frozen=True, kw_only=True, tag=True):
    """An SDP offer or answer (``webrtc.remote.*`` from the server, ``webrtc.local.*`` to it)."""

    sdp_type: Literal["offer", "answer"]
    sdp: str
    ice_servers: list[IceServer] = []  # filled by the session on remote offers
    connection_id: str = ""  # the session's NavTalk connection this belongs to (new per connect)


class IceCandidate(Message, frozen=True, kw_only=True, tag=True):
    """A trickled ICE candidate (``webrtc.remote.ice`` / ``webrtc.local.ice``)."""

    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None
    connection_id: str = ""  # as in SdpMessage: copied by the display into its candidates


# --- tools -----------------------------------------------------------------------------------


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An error that crossed a process boundary."""

    category: ErrorCategory
    message: str
    retryable: bool = False


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One tool as declared to NavTalk: JSON schema of its parameters as a JSON string."""

    name: str
    description: str
    parameters_json: str
    timeout_ms: Annotated[int, msgspec.Meta(gt=0)] = 10_000


class ToolCatalog(Message, frozen=True, kw_only=True, tag=True):
    """Every tool the tools process will run (``tool.catalog``)."""

    tools: list[ToolSpec]


class ToolDescribe(Message, frozen=True, kw_only=True, tag=True):
    """Ask the tools process to publish its catalog again (``tool.describe``)."""


class ToolCall(Message, frozen=True, kw_only=True, tag=True):
    """Run a tool (``tool.call``). Always answered by exactly one ``tool.result``."""

    call_id: str
    name: str
    arguments_json: str
    timeout_ms: Annotated[int, msgspec.Meta(gt=0)] = 10_000


class ToolResult(Message, frozen=True, kw_only=True, tag=True):
    """The outcome of a tool call (``tool.result``): JSON output, or an error."""

    call_id: str
    name: str
    ok: bool
    output_json: str = "null"
    error: ErrorInfo | None = None


class RobotCommand(Message, frozen=True, kw_only=True, tag=True):
    """A command for the robot's own controllers, published by tool plugins
    (``robot.command``); consumed outside navtalk-agent."""

    action: str
    params_json: str = "{}"


# --- session, control, inputs ----------------------------------------------------------------


class SessionPhase(enum.StrEnum):
    IDLE = "idle"  # no session wanted
    CONNECTING = "connecting"
    CONNECTED = "connected"  # conversation.connected.success received
    CREATED = "created"  # realtime.session.created received
    READY = "ready"  # realtime.session.updated received: audio flows
    CLOSED = "closed"
    FAILED = "failed"  # permanent failure; no retry


class SessionState(Message, frozen=True, kw_only=True, tag=True):
    """The session's phase (``session.state``), published on change and periodically."""

    phase: SessionPhase
    detail: str = ""
    session_id: str | None = None
    ice_servers: list[IceServer] = []
    retry_in_ms: int | None = None
    # The current NavTalk socket connection (as SdpMessage.connection_id), "" when none: a
    # display that starts mid-session stamps its own offer with it.
    connection_id: str = ""
    # The kiosk visit (agent.navtalk.policy.VisitPhase): idle (ready for a guest), starting,
    # engaged, closing; "" from a session that predates visits.
    visit: str = ""
    visit_detail: str = ""  # e.g. "ready", "budget spent", "idle" (why it is closing)


class BargeIn(Message, frozen=True, kw_only=True, tag=True):
    """The guest interrupted: drop queued playback now (``control.barge_in``)."""

    reason: str = "speech_started"
    at_mono_ns: NonNegInt = 0


class Shutdown(Message, frozen=True, kw_only=True, tag=True):
    """Every service stops cleanly (``control.shutdown``)."""

    reason: str = ""


class SetVolume(Message, frozen=True, kw_only=True, tag=True):
    """Speaker volume, 0.0 (mute) to 1.0 (full) (``control.volume``)."""

    level: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class SessionControl(Message, frozen=True, kw_only=True, tag=True):
    """Start or end the NavTalk session (``control.session``)."""

    action: Literal["start", "end", "end_after_speech"]
    reason: str = ""


class TextInput(Message, frozen=True, kw_only=True, tag=True):
    """Typed text for the model, as a user turn (``input.text``)."""

    text: str
    reply: bool = True


class ImageInput(Message, frozen=True, kw_only=True, tag=True):
    """An image for the model (``input.image``); the encoded image is payload[0]."""

    mime_type: Literal["image/jpeg", "image/png"] = "image/jpeg"
    reply: bool = False


class SpeakerState(Message, frozen=True, kw_only=True, tag=True):
    """Whether the speaker is playing (``speaker.state``), with its buffer counters."""

    playing: bool
    queued_ms: float = 0.0
    underruns: NonNegInt = 0
    overruns: NonNegInt = 0
    volume: float = 1.0


class VideoStats(Message, frozen=True, kw_only=True, tag=True):
    """Display counters (``video.stats``)."""

    frames_received: NonNegInt
    frames_rendered: NonNegInt
    frames_dropped: NonNegInt
    render_lag_ms_p50: float = 0.0
    render_lag_ms_p99: float = 0.0
    connection_state: str = ""


HealthStatus = Literal["starting", "ok", "degraded", "stopping"]


class Heartbeat(Message, frozen=True, kw_only=True, tag=True):
    """A service is alive (``health.<service>``)."""

    service: str
    pid: int
    status: HealthStatus = "ok"
    detail: str = ""
    uptime_s: float = 0.0


class Metrics(Message, frozen=True, kw_only=True, tag=True):
    """Counters and gauges of a service (``metrics.<service>``)."""

    service: str
    values: dict[str, float]


class FaceEvent(Message, frozen=True, kw_only=True, tag=True):
    """A guest's face came or went (``vision.face``), published by the camera on change."""

    seen: bool  # true: a face of the minimum size for N frames; false: none for N frames
    width_px: NonNegInt = 0  # the largest face's width when seen (0 when lost)
    faces: NonNegInt = 0  # how many faces of the minimum size the deciding frame held
    at_mono_ns: NonNegInt = 0  # when the deciding frame was read


AnyMessage = (
    AudioFrame
    | VadState
    | PreRollRequest
    | PreRoll
    | ConnectionEvent
    | ServerSpeech
    | UserTranscript
    | AssistantTranscript
    | ResponseDone
    | FunctionCall
    | OtherEvent
    | SdpMessage
    | IceCandidate
    | ToolCatalog
    | ToolDescribe
    | ToolCall
    | ToolResult
    | RobotCommand
    | SessionState
    | BargeIn
    | Shutdown
    | SetVolume
    | SessionControl
    | TextInput
    | ImageInput
    | SpeakerState
    | VideoStats
    | Heartbeat
    | Metrics
    | FaceEvent
)


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    """The body frame: who sent it, its sequence number, when, and the message."""

    sender: str
    seq: int
    mono_ns: int  # CLOCK_MONOTONIC at publish (comparable between processes on one board)
    wall_ns: int  # wall clock at publish (comparable between boards, roughly)
    msg: AnyMessage


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)

# Bounds on a body frame from the bus, checked before decoding (bulk bytes ride as payload
# frames, not in the body). The deepest legal body is ~5 levels (Envelope > ConnectionEvent
# > ice_servers > IceServer > urls); the largest a tool catalog.
MAX_BODY_BYTES = 1024 * 1024
MAX_BODY_DEPTH = 16
MAX_BODY_ITEMS = 10_000


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_envelope(body: bytes | memoryview) -> Envelope:
    """Decode and validate a body frame; raise MessageDecodeError on anything wrong,
    including a body over MAX_BODY_BYTES, nested deeper than MAX_BODY_DEPTH or holding more
    than MAX_BODY_ITEMS objects (refused before the recursive decoder sees it)."""
    if len(body) > MAX_BODY_BYTES:
        raise MessageDecodeError(f"bad message body: {len(body)} bytes, limit {MAX_BODY_BYTES}")
    data = bytes(body)
    try:
        check_msgpack(data, max_depth=MAX_BODY_DEPTH, max_items=MAX_BODY_ITEMS)
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, MsgpackLimitError) as exc:
        raise MessageDecodeError(f"bad message body: {exc}") from exc
    except RecursionError as exc:  # belt and braces: the check above should make it impossible
        raise MessageDecodeError("bad message body: nested too deep") from exc
