"""Typed NavTalk server events, one frozen class per event type.

:class:`agent.navtalk.protocol.NavTalkProtocol` turns each received frame into
one of these. Frames of a type not listed here become :class:`Unknown`; frames
that are not valid JSON or lack what their type needs become :class:`Malformed`.
Parsing never raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "AudioDelta",
    "AudioDone",
    "BinaryFrame",
    "ConnectedClose",
    "ConnectedFail",
    "ConnectedSuccess",
    "ConnectedWarning",
    "Event",
    "FunctionCallArgumentsDelta",
    "FunctionCallDone",
    "IceServerInfo",
    "InputTranscriptionCompleted",
    "InsufficientBalance",
    "Malformed",
    "RtcAnswer",
    "RtcIceCandidate",
    "RtcOffer",
    "SessionCreated",
    "SessionUpdated",
    "SpeechStarted",
    "SpeechStopped",
    "TranscriptDelta",
    "TranscriptDone",
    "Unknown",
    "EVENT_TYPES",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every server event. ``TYPE`` is the wire ``type`` string."""

    TYPE: ClassVar[str] = ""


@dataclass(frozen=True, slots=True)
class IceServerInfo:
    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


# --- conversation.connected.* ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectedSuccess(Event):
    TYPE: ClassVar[str] = "conversation.connected.success"
    session_id: str = ""
    ice_servers: tuple[IceServerInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class ConnectedFail(Event):
    TYPE: ClassVar[str] = "conversation.connected.fail"
    message: str = ""


@dataclass(frozen=True, slots=True)
class ConnectedClose(Event):
    TYPE: ClassVar[str] = "conversation.connected.close"
    message: str = ""


@dataclass(frozen=True, slots=True)
class InsufficientBalance(Event):
    TYPE: ClassVar[str] = "conversation.connected.insufficient_balance"
    message: str = ""


@dataclass(frozen=True, slots=True)
class ConnectedWarning(Event):
    TYPE: ClassVar[str] = "conversation.connected.warning"
    message: str = ""
    avatar_id: str | None = None  # the avatar the server chose, when it says so in a field


# --- realtime.* -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionCreated(Event):
    TYPE: ClassVar[str] = "realtime.session.created"


@dataclass(frozen=True, slots=True)
class SessionUpdated(Event):
    TYPE: ClassVar[str] = "realtime.session.updated"


@dataclass(frozen=True, slots=True)
class SpeechStarted(Event):
    TYPE: ClassVar[str] = "realtime.input_audio_buffer.speech_started"


@dataclass(frozen=True, slots=True)
class SpeechStopped(Event):
    TYPE: ClassVar[str] = "realtime.input_audio_buffer.speech_stopped"


@dataclass(frozen=True, slots=True)
class InputTranscriptionCompleted(Event):
    TYPE: ClassVar[str] = "realtime.conversation.item.input_audio_transcription.completed"
    content: str = ""
    item_id: str = ""


@dataclass(frozen=True, slots=True)
class TranscriptDelta(Event):
    TYPE: ClassVar[str] = "realtime.response.audio_transcript.delta"
    response_id: str = ""
    content: str = ""


@dataclass(frozen=True, slots=True)
class TranscriptDone(Event):
    TYPE: ClassVar[str] = "realtime.response.audio_transcript.done"
    response_id: str = ""
    content: str = ""


@dataclass(frozen=True, slots=True)
class AudioDelta(Event):
    """A piece of the avatar's voice, decoded from base64: PCM16 LE, 24 kHz, mono (inferred)."""

    TYPE: ClassVar[str] = "realtime.response.audio.delta"
    pcm: bytes = b""
    response_id: str = ""


@dataclass(frozen=True, slots=True)
class AudioDone(Event):
    TYPE: ClassVar[str] = "realtime.response.audio.done"
    response_id: str = ""


@dataclass(frozen=True, slots=True)
class FunctionCallArgumentsDelta(Event):
    TYPE: ClassVar[str] = "realtime.response.function_call_arguments.delta"
    call_id: str = ""
    delta: str = ""


@dataclass(frozen=True, slots=True)
class FunctionCallDone(Event):
    """The model called ``name``. ``arguments`` is the JSON string (from the deltas when the
    done event carried none). ``error`` is set (and ``arguments`` empty) when the arguments
    were over the protocol core's limits: the call must be answered with an error."""

    TYPE: ClassVar[str] = "realtime.response.function_call_arguments.done"
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    error: str = ""


# --- webrtc.signaling.* -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RtcOffer(Event):
    TYPE: ClassVar[str] = "webrtc.signaling.offer"
    sdp: str = ""


@dataclass(frozen=True, slots=True)
class RtcAnswer(Event):
    TYPE: ClassVar[str] = "webrtc.signaling.answer"
    sdp: str = ""


@dataclass(frozen=True, slots=True)
class RtcIceCandidate(Event):
    TYPE: ClassVar[str] = "webrtc.signaling.iceCandidate"
    candidate: str = ""
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None


# --- everything else -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unknown(Event):
    """A well-formed frame of a type this client does not know; ``frame`` is the whole object."""

    type: str = ""
    frame: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Malformed(Event):
    """A frame that is not valid JSON, not an object, or lacks what its type needs."""

    reason: str = ""
    type: str = ""  # the frame's type when it had one
    excerpt: str = ""  # the start of the frame text (callers redact before logging it)


@dataclass(frozen=True, slots=True)
class BinaryFrame(Event):
    """A binary WebSocket frame; the vendor samples only log its size [seed][ios]."""

    size: int = 0


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        ConnectedSuccess,
        ConnectedFail,
        ConnectedClose,
        InsufficientBalance,
        ConnectedWarning,
        SessionCreated,
        SessionUpdated,
        SpeechStarted,
        SpeechStopped,
        InputTranscriptionCompleted,
        TranscriptDelta,
        TranscriptDone,
        AudioDelta,
        AudioDone,
        FunctionCallArgumentsDelta,
        FunctionCallDone,
        RtcOffer,
        RtcAnswer,
        RtcIceCandidate,
    )
}
