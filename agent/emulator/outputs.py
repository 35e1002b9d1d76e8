"""What the emulator's brain asks its shell to do (the outputs of the sans-I/O core)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.emulator.conformance import Violation

__all__ = [
    "CancelResponses",
    "Close",
    "Drop",
    "Enqueue",
    "Output",
    "Recognize",
    "RemoteIce",
    "RemoteSdp",
    "Report",
    "Respond",
    "Send",
    "StartWebRtc",
]


@dataclass(frozen=True, slots=True)
class Send:
    """Send this frame now (a dict is JSON-encoded; a str goes as it is: malformed tests)."""

    frame: Mapping[str, Any] | str


@dataclass(frozen=True, slots=True)
class Respond:
    """Speak ``text`` as response ``response_id``, after what is queued: synthesize, send
    :func:`agent.emulator.speech.response_frames` paced in real time, feed the avatar's
    voice, then call :meth:`Brain.response_done`."""

    response_id: str
    text: str


@dataclass(frozen=True, slots=True)
class Enqueue:
    """Send ``frames`` as response ``response_id`` after what is queued (function calls wait
    behind the speech in flight, as in the real service); then :meth:`Brain.response_done`."""

    response_id: str
    frames: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class CancelResponses:
    """Barge-in: stop the response being spoken (its ``audio.done`` goes out now) and drop
    the queued ones."""


@dataclass(frozen=True, slots=True)
class StartWebRtc:
    """Create the peer connection and send ``webrtc.signaling.offer`` (candidates in the
    SDP); then call :meth:`Brain.offer_sent`."""


@dataclass(frozen=True, slots=True)
class RemoteSdp:
    sdp_type: str  # "answer" to our offer, or "offer" (client renegotiation)
    sdp: str


@dataclass(frozen=True, slots=True)
class RemoteIce:
    candidate: str
    sdp_mid: str | None
    sdp_mline_index: int | None


@dataclass(frozen=True, slots=True)
class Recognize:
    """Recognize utterance ``utterance_id`` (PCM16 24 kHz) off the event loop, then call
    :meth:`Brain.recognized` with the line heard (or None)."""

    utterance_id: int
    pcm: bytes
    duration_s: float


@dataclass(frozen=True, slots=True)
class Report:
    """A client message broke the protocol: log it in the conformance log."""

    violation: Violation


@dataclass(frozen=True, slots=True)
class Close:
    """Close the socket with a close frame."""

    code: int = 1000
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Drop:
    """Drop the TCP connection without a close frame (fault injection)."""


Output = (
    Send
    | Respond
    | Enqueue
    | CancelResponses
    | StartWebRtc
    | RemoteSdp
    | RemoteIce
    | Recognize
    | Report
    | Close
    | Drop
)
