"""The topic table: which message type rides on which topic, who publishes it, who reads it.

Declared once, here. The bus refuses to publish a message on a topic that
does not carry its type, and ``tests/test_topics.py`` checks that the graph
has no orphan (a topic somebody publishes and nobody reads, or the reverse).

Topics ending in ``.*`` are families: the last part is the sending service's
name (``health.mic``).

Every topic belongs to a *plane*. The media plane (audio frames) has small
high-water marks and may drop; the control plane has large ones and must not.
Each plane is its own XSUB/XPUB proxy, so a burst of audio can never push a
tool result out of a queue.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent import messages as m


class Plane(enum.StrEnum):
    MEDIA = "media"
    CONTROL = "control"


# The processes (and the one "outside" party: taps, recorders, integrators' code).
MIC = "mic"
SESSION = "session"
SPEAKER = "speaker"
DISPLAY = "display"
TOOLS = "tools"
SUPERVISOR = "supervisor"
EXTERNAL = "external"

SERVICES: tuple[str, ...] = (MIC, SESSION, SPEAKER, DISPLAY, TOOLS)
ALL_PARTIES: frozenset[str] = frozenset((*SERVICES, SUPERVISOR, EXTERNAL))

# Topic names, for code to import instead of spelling strings.
AUDIO_MIC = "audio.mic"
AUDIO_OUT = "audio.out"
AUDIO_PLAYED = "audio.played"
VAD_STATE = "vad.state"
MIC_PREROLL_REQUEST = "mic.preroll.request"
MIC_PREROLL = "mic.preroll.audio"
NAVTALK_CONNECTION = "navtalk.connection"
NAVTALK_SPEECH = "navtalk.speech"
NAVTALK_TRANSCRIPT_USER = "navtalk.transcript.user"
NAVTALK_TRANSCRIPT_ASSISTANT = "navtalk.transcript.assistant"
NAVTALK_AUDIO_DELTA = "navtalk.audio.delta"
NAVTALK_AUDIO_DONE = "navtalk.audio.done"
NAVTALK_FUNCTION_CALL = "navtalk.function_call"
NAVTALK_OTHER = "navtalk.other"
WEBRTC_REMOTE_OFFER = "webrtc.remote.offer"
WEBRTC_REMOTE_ANSWER = "webrtc.remote.answer"
WEBRTC_REMOTE_ICE = "webrtc.remote.ice"
WEBRTC_LOCAL_OFFER = "webrtc.local.offer"
WEBRTC_LOCAL_ANSWER = "webrtc.local.answer"
WEBRTC_LOCAL_ICE = "webrtc.local.ice"
TOOL_CALL = "tool.call"
TOOL_RESULT = "tool.result"
TOOL_CATALOG = "tool.catalog"
TOOL_DESCRIBE = "tool.describe"
ROBOT_COMMAND = "robot.command"
SESSION_STATE = "session.state"
CONTROL_BARGE_IN = "control.barge_in"
CONTROL_SHUTDOWN = "control.shutdown"
CONTROL_VOLUME = "control.volume"
CONTROL_SESSION = "control.session"
INPUT_TEXT = "input.text"
INPUT_IMAGE = "input.image"
SPEAKER_STATE = "speaker.state"
VIDEO_STATS = "video.stats"
HEALTH = "health.*"
METRICS = "metrics.*"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    type: type[m.Message]
    plane: Plane
    publishers: frozenset[str]
    subscribers: frozenset[str]
    doc: str

    @property
    def is_family(self) -> bool:
        return self.name.endswith(".*")

    @property
    def prefix(self) -> str:
        """The ZeroMQ subscription prefix for this topic (families: with the trailing dot)."""
        return self.name[:-1] if self.is_family else self.name


def _t(
    name: str,
    type_: type[m.Message],
    plane: Plane,
    pub: tuple[str, ...],
    sub: tuple[str, ...],
    doc: str,
) -> TopicSpec:
    return TopicSpec(name, type_, plane, frozenset(pub), frozenset(sub), doc)


_C, _M = Plane.CONTROL, Plane.MEDIA
_ALL = (*SERVICES, SUPERVISOR)

TOPICS: dict[str, TopicSpec] = {
    t.name: t
    for t in (
        _t(AUDIO_MIC, m.AudioFrame, _M, (MIC,), (SESSION,), "24 kHz mono PCM16, 20 ms frames"),
        _t(AUDIO_OUT, m.AudioFrame, _M, (DISPLAY,), (SPEAKER,), "avatar voice from WebRTC"),
        _t(AUDIO_PLAYED, m.AudioFrame, _M, (SPEAKER,), (MIC,), "what was played: echo reference"),
        _t(VAD_STATE, m.VadState, _C, (MIC,), (DISPLAY,), "local voice activity"),
        _t(MIC_PREROLL_REQUEST, m.PreRollRequest, _C, (SESSION,), (MIC,), "ask for pre-roll"),
        _t(MIC_PREROLL, m.PreRoll, _C, (MIC,), (SESSION,), "recent mic audio"),
        _t(
            NAVTALK_CONNECTION,
            m.ConnectionEvent,
            _C,
            (SESSION,),
            (DISPLAY, EXTERNAL),
            "conversation.connected.*",
        ),
        _t(NAVTALK_SPEECH, m.ServerSpeech, _C, (SESSION,), (DISPLAY,), "server VAD"),
        _t(
            NAVTALK_TRANSCRIPT_USER,
            m.UserTranscript,
            _C,
            (SESSION,),
            (DISPLAY,),
            "guest transcript",
        ),
        _t(
            NAVTALK_TRANSCRIPT_ASSISTANT,
            m.AssistantTranscript,
            _C,
            (SESSION,),
            (DISPLAY,),
            "avatar transcript pieces and whole",
        ),
        _t(
            NAVTALK_AUDIO_DELTA,
            m.AudioFrame,
            _M,
            (SESSION,),
            (SPEAKER,),
            "audio-only mode voice, 24 kHz",
        ),
        _t(
            NAVTALK_AUDIO_DONE,
            m.ResponseDone,
            _C,
            (SESSION,),
            (SPEAKER, DISPLAY),
            "response audio complete",
        ),
        _t(
            NAVTALK_FUNCTION_CALL,
            m.FunctionCall,
            _C,
            (SESSION,),
            (EXTERNAL,),
            "the model called a function",
        ),
        _t(NAVTALK_OTHER, m.OtherEvent, _C, (SESSION,), (EXTERNAL,), "other/unknown events"),
        _t(WEBRTC_REMOTE_OFFER, m.SdpMessage, _C, (SESSION,), (DISPLAY,), "server offer"),
        _t(WEBRTC_REMOTE_ANSWER, m.SdpMessage, _C, (SESSION,), (DISPLAY,), "server answer"),
        _t(WEBRTC_REMOTE_ICE, m.IceCandidate, _C, (SESSION,), (DISPLAY,), "server candidate"),
        _t(WEBRTC_LOCAL_OFFER, m.SdpMessage, _C, (DISPLAY,), (SESSION,), "display offer"),
        _t(WEBRTC_LOCAL_ANSWER, m.SdpMessage, _C, (DISPLAY,), (SESSION,), "display answer"),
        _t(WEBRTC_LOCAL_ICE, m.IceCandidate, _C, (DISPLAY,), (SESSION,), "display candidate"),
        _t(TOOL_CALL, m.ToolCall, _C, (SESSION,), (TOOLS,), "run a tool"),
        _t(
            TOOL_RESULT,
            m.ToolResult,
            _C,
            (TOOLS, SESSION),
            (SESSION, DISPLAY),
            "tool outcome (the session publishes the error results it makes itself)",
        ),
        _t(TOOL_CATALOG, m.ToolCatalog, _C, (TOOLS,), (SESSION,), "tool schemas"),
        _t(TOOL_DESCRIBE, m.ToolDescribe, _C, (SESSION,), (TOOLS,), "ask for the catalog"),
        _t(ROBOT_COMMAND, m.RobotCommand, _C, (TOOLS,), (EXTERNAL,), "robot commands"),
        _t(SESSION_STATE, m.SessionState, _C, (SESSION,), (DISPLAY, MIC, TOOLS), "session phase"),
        _t(CONTROL_BARGE_IN, m.BargeIn, _C, (SESSION,), (SPEAKER, DISPLAY), "stop playback"),
        _t(CONTROL_SHUTDOWN, m.Shutdown, _C, (SUPERVISOR,), _ALL[:-1], "stop cleanly"),
        _t(CONTROL_VOLUME, m.SetVolume, _C, (TOOLS, EXTERNAL), (SPEAKER,), "speaker volume"),
        _t(
            CONTROL_SESSION,
            m.SessionControl,
            _C,
            (TOOLS, EXTERNAL),
            (SESSION,),
            "start/end the session",
        ),
        _t(INPUT_TEXT, m.TextInput, _C, (EXTERNAL,), (SESSION,), "typed user text"),
        _t(INPUT_IMAGE, m.ImageInput, _C, (TOOLS, EXTERNAL), (SESSION,), "image for the model"),
        _t(SPEAKER_STATE, m.SpeakerState, _C, (SPEAKER,), (MIC, DISPLAY, SESSION), "playing/idle"),
        _t(VIDEO_STATS, m.VideoStats, _C, (DISPLAY,), (SUPERVISOR,), "display counters"),
        _t(HEALTH, m.Heartbeat, _C, _ALL, (SUPERVISOR, SESSION), "heartbeats (the session: tools)"),
        _t(METRICS, m.Metrics, _C, _ALL, (SUPERVISOR,), "counters and gauges"),
    )
}


def spec_for(topic: str) -> TopicSpec:
    """The spec of a concrete topic (``health.mic`` finds the ``health.*`` family)."""
    spec = TOPICS.get(topic)
    if spec is not None:
        return spec
    head, _, _ = topic.rpartition(".")
    family = TOPICS.get(f"{head}.*")
    if family is None:
        raise KeyError(f"unknown topic {topic!r}")
    return family


def published_by(party: str) -> list[TopicSpec]:
    return [t for t in TOPICS.values() if party in t.publishers]


def subscribed_by(party: str) -> list[TopicSpec]:
    return [t for t in TOPICS.values() if party in t.subscribers]
