"""The topic table: which message type rides on which topic, on which plane.

Declared once, here; the bus refuses to publish a message on a topic that does
not carry its type. Who reads and writes a topic is declared by each party next
to its code, as a :class:`ServiceTopics` (``services/<name>.py`` ``TOPICS``,
``agent.runtime.RUNTIME_TOPICS``, ``agent.apps.supervisor.SUPERVISOR_TOPICS``, and
:data:`EXTERNAL_TOPICS` here for integrators). A service subscribes with
``bus.declare(TOPICS)``, which subscribes to its reads and refuses a publish
outside its writes, so a declaration cannot drift from what the service does;
``tests/test_topics.py`` builds the graph from the declarations and checks it
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
from collections.abc import Iterable
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
CAMERA = "camera"
SUPERVISOR = "supervisor"
EXTERNAL = "external"

SERVICES: tuple[str, ...] = (MIC, SESSION, SPEAKER, DISPLAY, TOOLS, CAMERA)
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
VISION_FACE = "vision.face"
HEALTH = "health.*"
METRICS = "metrics.*"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    type: type[m.Message]
    plane: Plane
    doc: str

    @property
    def is_family(self) -> bool:
        return self.name.endswith(".*")

    @property
    def prefix(self) -> str:
        """The ZeroMQ subscription prefix for this topic (families: with the trailing dot)."""
        return self.name[:-1] if self.is_family else self.name


def _t(name: str, type_: type[m.Message], plane: Plane, *rest: object) -> TopicSpec:
    """``_t(name, type, plane, doc)``. (The older form with publisher and reader tuples
    before ``doc`` is accepted and the tuples ignored: the graph comes from declarations.)"""
    doc = rest[-1]
    if not isinstance(doc, str) or len(rest) not in (1, 3):
        raise TypeError(f"_t({name!r}, ...): expected (name, type, plane, doc)")
    return TopicSpec(name, type_, plane, doc)


_C, _M = Plane.CONTROL, Plane.MEDIA

TOPICS: dict[str, TopicSpec] = {
    t.name: t
    for t in (
        _t(AUDIO_MIC, m.AudioFrame, _M, "24 kHz mono PCM16, 20 ms frames"),
        _t(AUDIO_OUT, m.AudioFrame, _M, "avatar voice from WebRTC"),
        _t(AUDIO_PLAYED, m.AudioFrame, _M, "what was played: echo reference"),
        _t(VAD_STATE, m.VadState, _C, "local voice activity"),
        _t(MIC_PREROLL_REQUEST, m.PreRollRequest, _C, "ask for pre-roll"),
        _t(MIC_PREROLL, m.PreRoll, _C, "recent mic audio"),
        _t(NAVTALK_CONNECTION, m.ConnectionEvent, _C, "conversation.connected.*"),
        _t(NAVTALK_SPEECH, m.ServerSpeech, _C, "server VAD"),
        _t(NAVTALK_TRANSCRIPT_USER, m.UserTranscript, _C, "guest transcript"),
        _t(NAVTALK_TRANSCRIPT_ASSISTANT, m.AssistantTranscript, _C, "avatar transcript"),
        _t(NAVTALK_AUDIO_DELTA, m.AudioFrame, _M, "audio-only mode voice, 24 kHz"),
        _t(NAVTALK_AUDIO_DONE, m.ResponseDone, _C, "response audio complete"),
        _t(NAVTALK_FUNCTION_CALL, m.FunctionCall, _C, "the model called a function"),
        _t(NAVTALK_OTHER, m.OtherEvent, _C, "other/unknown events"),
        _t(WEBRTC_REMOTE_OFFER, m.SdpMessage, _C, "server offer"),
        _t(WEBRTC_REMOTE_ANSWER, m.SdpMessage, _C, "server answer"),
        _t(WEBRTC_REMOTE_ICE, m.IceCandidate, _C, "server candidate"),
        _t(WEBRTC_LOCAL_OFFER, m.SdpMessage, _C, "display offer"),
        _t(WEBRTC_LOCAL_ANSWER, m.SdpMessage, _C, "display answer"),
        _t(WEBRTC_LOCAL_ICE, m.IceCandidate, _C, "display candidate"),
        _t(TOOL_CALL, m.ToolCall, _C, "run a tool"),
        _t(TOOL_RESULT, m.ToolResult, _C, "tool outcome (also the session's own error results)"),
        _t(TOOL_CATALOG, m.ToolCatalog, _C, "tool schemas"),
        _t(TOOL_DESCRIBE, m.ToolDescribe, _C, "ask for the catalog"),
        _t(ROBOT_COMMAND, m.RobotCommand, _C, "robot commands"),
        _t(SESSION_STATE, m.SessionState, _C, "session phase"),
        _t(CONTROL_BARGE_IN, m.BargeIn, _C, "stop playback"),
        _t(CONTROL_SHUTDOWN, m.Shutdown, _C, "stop cleanly"),
        _t(CONTROL_VOLUME, m.SetVolume, _C, "speaker volume"),
        _t(CONTROL_SESSION, m.SessionControl, _C, "start/end the session"),
        _t(INPUT_TEXT, m.TextInput, _C, "typed user text"),
        _t(INPUT_IMAGE, m.ImageInput, _C, "image for the model"),
        _t(SPEAKER_STATE, m.SpeakerState, _C, "playing/idle"),
        _t(VIDEO_STATS, m.VideoStats, _C, "display counters"),
        _t(VISION_FACE, m.FaceEvent, _C, "a face came or went (camera)"),
        _t(HEALTH, m.Heartbeat, _C, "heartbeats"),
        _t(METRICS, m.Metrics, _C, "counters and gauges"),
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


def declared_spec(name: str) -> TopicSpec:
    """The spec of a declared name: a topic, a family (``health.*``) or a family member."""
    return TOPICS[name] if name in TOPICS else spec_for(name)


@dataclass(frozen=True)
class ServiceTopics:
    """What one party reads and writes on the bus, declared next to its code.

    Names are topics (``audio.mic``), families (``metrics.*``: any member) or family
    members (``health.tools``). A service hands its declaration to
    :meth:`agent.bus.Bus.declare`, which subscribes to the reads and refuses publishes
    outside the writes.
    """

    reads: tuple[str, ...]
    writes: tuple[str, ...]

    def __init__(self, *, reads: Iterable[str] = (), writes: Iterable[str] = ()):
        object.__setattr__(self, "reads", tuple(reads))
        object.__setattr__(self, "writes", tuple(writes))
        for name in (*self.reads, *self.writes):
            try:
                declared_spec(name)
            except KeyError as exc:
                raise ValueError(f"declared topic {name!r} is not in agent.topics") from exc

    def subscriptions(self, *, without: Iterable[str] = ()) -> list[str]:
        """The subscription prefixes for the reads, less ``without`` (reads this
        configuration does not need; each must be a declared read)."""
        skip = set(without)
        if not skip <= set(self.reads):
            raise ValueError(f"not declared as reads: {sorted(skip - set(self.reads))}")
        return [declared_spec(n).prefix if n in TOPICS else n for n in self.reads if n not in skip]

    def may_write(self, topic: str) -> bool:
        """Whether the concrete ``topic`` is declared as written (by name or by family)."""
        return topic in self.writes or spec_for(topic).name in self.writes

    def read_specs(self) -> set[TopicSpec]:
        return {declared_spec(n) for n in self.reads}

    def write_specs(self) -> set[TopicSpec]:
        return {declared_spec(n) for n in self.writes}


# Integrators' code (taps, recorders, robot controllers, the demo's inputs): the public
# topics of navtalk-agent. Reads: what the agent offers them; writes: what they may ask.
EXTERNAL_TOPICS = ServiceTopics(
    reads=(
        NAVTALK_CONNECTION,
        NAVTALK_FUNCTION_CALL,
        NAVTALK_OTHER,
        NAVTALK_AUDIO_DONE,  # the avatar finished a reply (e.g. a robot waits for it to move)
        ROBOT_COMMAND,
    ),
    writes=(CONTROL_VOLUME, CONTROL_SESSION, INPUT_TEXT, INPUT_IMAGE),
)


def graph(parties: dict[str, ServiceTopics]) -> dict[str, tuple[set[str], set[str]]]:
    """Every topic -> (who writes it, who reads it), from the parties' declarations."""
    edges: dict[str, tuple[set[str], set[str]]] = {name: (set(), set()) for name in TOPICS}
    for party, declared in parties.items():
        for spec in declared.write_specs():
            edges[spec.name][0].add(party)
        for spec in declared.read_specs():
            edges[spec.name][1].add(party)
    return edges
