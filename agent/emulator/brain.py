"""The emulator's conversation logic, sans I/O: client frames in, server frames and actions out.

One :class:`Brain` per WebSocket session. It follows NAVTALK_PROTOCOL.md as a
server: connection events, then ``realtime.session.created``, then (shortly
after) ``realtime.session.updated``; server VAD on the received audio
(webrtcvad at 16 kHz after soxr resampling) with ``speech_started`` /
``speech_stopped``; a scripted "transcription" (there is no ASR: the n-th
utterance is the n-th ``hears`` entry of the script); rules that reply or call a
declared tool; function-call events with both ``data`` and ``raw_data`` [wire].

No sockets, no clock: the shell (:mod:`agent.emulator.server`) passes ``now``
(monotonic seconds), runs the timers via :meth:`Brain.tick`, synthesizes the
speech for :class:`Respond` actions and paces the frames from
:meth:`Brain.response_frames`.

Fault injection: by :class:`Faults` flags, or by tokens in the license value
(split on ``-``, ``_``, ``+`` or ``,``; case-insensitive):

=================  =====================================================================
``reject``/``bad`` ``conversation.connected.fail`` then close
``nobalance``      ``conversation.connected.insufficient_balance`` then close
``dupname``        ``conversation.connected.warning`` (duplicate avatar name) after success
``drop<S>``        the socket is dropped without a close frame S seconds after success
``malformed``      malformed and unknown frames are sent after ``session.updated``
=================  =====================================================================
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import webrtcvad

__all__ = [
    "Brain",
    "CancelResponses",
    "Close",
    "Drop",
    "Faults",
    "Output",
    "RemoteIce",
    "RemoteSdp",
    "Respond",
    "Rule",
    "Script",
    "Send",
    "StartWebRtc",
    "VoiceDetector",
    "render",
]

logger = logging.getLogger(__name__)

IN_RATE_HZ = 24_000  # what clients send [seed]
VAD_RATE_HZ = 16_000
VAD_FRAME_MS = 30
VAD_FRAME_BYTES = VAD_RATE_HZ * VAD_FRAME_MS // 1000 * 2
UPDATED_DELAY_S = 0.05  # session.created -> session.updated (the SDK sends history in between)
AUDIO_CHUNK_MS = 100  # audio.delta size


# --- script ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    match: str  # case-insensitive substring of what was heard
    reply: str = ""
    tool: str = ""
    arguments: Mapping[str, Any] = field(default_factory=dict)
    regex: str = ""  # optional; named groups fill {name} in `arguments`


@dataclass(frozen=True, slots=True)
class Script:
    greeting: str = ""
    fallback: str = "I did not understand."
    tool_error_reply: str = "Sorry, that did not work: {error.message}"
    image_reply: str = "I can see the picture."
    no_tool_reply: str = "I cannot do that."
    hears: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()

    @classmethod
    def load(cls, path: str | Path | None = None) -> Script:
        """Read a TOML script; ``None`` or "" = the built-in ``default_script.toml``."""
        if path:
            raw = Path(path).read_bytes()
        else:
            raw = resources.files("agent.emulator").joinpath("default_script.toml").read_bytes()
        return cls.from_dict(tomllib.loads(raw.decode("utf-8")))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Script:
        rules = tuple(
            Rule(
                match=str(r.get("match", "")),
                reply=str(r.get("reply", "")),
                tool=str(r.get("tool", "")),
                arguments=dict(r.get("arguments", {})),
                regex=str(r.get("regex", "")),
            )
            for r in d.get("rules", [])
        )
        base = cls()
        return cls(
            greeting=str(d.get("greeting", base.greeting)),
            fallback=str(d.get("fallback", base.fallback)),
            tool_error_reply=str(d.get("tool_error_reply", base.tool_error_reply)),
            image_reply=str(d.get("image_reply", base.image_reply)),
            no_tool_reply=str(d.get("no_tool_reply", base.no_tool_reply)),
            hears=tuple(str(h) for h in d.get("hears", [])),
            rules=rules,
        )

    def find(self, text: str) -> tuple[Rule, dict[str, str]] | None:
        lowered = text.lower()
        for rule in self.rules:
            if rule.match and rule.match.lower() not in lowered:
                continue
            groups: dict[str, str] = {}
            if rule.regex:
                m = re.search(rule.regex, text, re.IGNORECASE)
                if m is None:
                    continue
                groups = {k: v.strip() for k, v in m.groupdict().items() if v is not None}
            return rule, groups
        return None


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")


def render(template: str, context: Mapping[str, Any]) -> str:
    """Replace ``{a.b.c}`` with ``context["a"]["b"]["c"]``; unknown paths fall back to the
    nearest known parent (so ``{output.time}`` shows the whole output if it has no ``time``)."""

    def sub(m: re.Match[str]) -> str:
        value: Any = context
        for part in m.group(1).split("."):
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif value is context:
                return m.group(0)
            else:
                break
        if isinstance(value, str):
            return value
        return json.dumps(value) if isinstance(value, dict | list) else str(value)

    return _PLACEHOLDER.sub(sub, template)


# --- faults ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Faults:
    reject: bool = False
    insufficient_balance: bool = False
    duplicate_name: bool = False
    drop_after_s: float = 0.0
    malformed: bool = False

    def with_license(self, license: str) -> Faults:
        """These faults plus those named by tokens in ``license`` (see the module doc)."""
        f = self
        for token in re.split(r"[-_+,]", license.lower()):
            if token in ("reject", "bad", "invalid"):
                f = replace(f, reject=True)
            elif token == "nobalance":
                f = replace(f, insufficient_balance=True)
            elif token == "dupname":
                f = replace(f, duplicate_name=True)
            elif token == "malformed":
                f = replace(f, malformed=True)
            elif m := re.fullmatch(r"drop(\d+(?:\.\d+)?)", token):
                f = replace(f, drop_after_s=float(m.group(1)))
        return f


# --- outputs -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send this frame now (a dict is JSON-encoded; a str goes as it is: malformed tests)."""

    frame: Mapping[str, Any] | str


@dataclass(frozen=True, slots=True)
class Respond:
    """Speak ``text`` as response ``response_id``: synthesize, then send
    :meth:`Brain.response_frames` paced in real time, and feed the avatar's voice."""

    response_id: str
    text: str


@dataclass(frozen=True, slots=True)
class CancelResponses:
    """Barge-in: stop the response being spoken and drop the queued ones."""


@dataclass(frozen=True, slots=True)
class StartWebRtc:
    """Create the peer connection and send ``webrtc.signaling.offer`` (candidates in the SDP)."""


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
class Close:
    """Close the socket with a close frame."""

    code: int = 1000
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Drop:
    """Drop the TCP connection without a close frame (fault injection)."""


Output = Send | Respond | CancelResponses | StartWebRtc | RemoteSdp | RemoteIce | Close | Drop


# --- VAD ---------------------------------------------------------------------------------


class VoiceDetector:
    """Server VAD: PCM16 24 kHz in, ("start"|"stop", audio time s) out. Audio time is the
    received audio's own clock (samples received), not the wall clock."""

    def __init__(self, mode: int = 3, start_ms: int = 90, end_ms: int = 600) -> None:
        self._vad = webrtcvad.Vad(mode)
        self._resampler = soxr.ResampleStream(IN_RATE_HZ, VAD_RATE_HZ, 1, dtype="int16")
        self._buf = bytearray()
        self._start_frames = max(1, start_ms // VAD_FRAME_MS)
        self._end_frames = max(1, end_ms // VAD_FRAME_MS)
        self._voiced = 0
        self._silent = 0
        self._frames = 0
        self.speaking = False
        self.started_at_s = 0.0

    def feed(self, pcm24k: bytes) -> list[tuple[str, float]]:
        usable = len(pcm24k) - len(pcm24k) % 2
        x = np.frombuffer(pcm24k[:usable], dtype="<i2")
        y = self._resampler.resample_chunk(x)
        self._buf += np.asarray(y, dtype="<i2").tobytes()
        out = []
        while len(self._buf) >= VAD_FRAME_BYTES:
            frame = bytes(self._buf[:VAD_FRAME_BYTES])
            del self._buf[:VAD_FRAME_BYTES]
            self._frames += 1
            t = self._frames * VAD_FRAME_MS / 1000
            if self._vad.is_speech(frame, VAD_RATE_HZ):
                self._voiced += 1
                self._silent = 0
            else:
                self._silent += 1
                self._voiced = 0
            if not self.speaking and self._voiced >= self._start_frames:
                self.speaking = True
                self.started_at_s = t - self._voiced * VAD_FRAME_MS / 1000
                out.append(("start", self.started_at_s))
            elif self.speaking and self._silent >= self._end_frames:
                self.speaking = False
                out.append(("stop", t - self._silent * VAD_FRAME_MS / 1000))
        return out


# --- the brain -----------------------------------------------------------------------------


@dataclass(slots=True)
class _PendingTool:
    rule: Rule
    arguments: dict[str, Any]
    output: str | None = None


@dataclass(slots=True)
class SessionStats:
    """What the client did, for tests and benchmarks."""

    received: Counter[str] = field(default_factory=Counter)
    audio_bytes: int = 0
    order_violations: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # user text items received
    declared_tools: set[str] = field(default_factory=set)
    tool_outputs: dict[str, str] = field(default_factory=dict)  # call_id -> output
    heard: list[str] = field(default_factory=list)  # transcripts (scripted)
    replies: list[str] = field(default_factory=list)  # response texts
    images: int = 0
    malformed: int = 0


class Brain:
    def __init__(
        self,
        script: Script,
        *,
        faults: Faults = Faults(),
        session_id: str = "emu-session",
        avatar_id: str = "",
        webrtc: bool = True,
        vad_mode: int = 3,
        vad_start_ms: int = 90,
        vad_end_ms: int = 600,
    ) -> None:
        self.script = script
        self.faults = faults
        self.session_id = session_id
        self.avatar_id = avatar_id
        self.webrtc = webrtc
        self.stats = SessionStats()
        self._vad = VoiceDetector(vad_mode, vad_start_ms, vad_end_ms)
        self._created = False
        self._updated = False
        self._closed = False
        self._timers: list[tuple[float, str]] = []
        self._n = 0  # id counter
        self._utterances = 0
        self._unanswered: list[str] = []  # user text items since the last response.create
        self._calls: dict[str, _PendingTool] = {}

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self.session_id[-6:]}_{self._n}"

    # --- timers --------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        return min((t for t, _ in self._timers), default=None)

    def tick(self, now: float) -> list[Output]:
        due = sorted((t, k) for t, k in self._timers if t <= now)
        self._timers = [(t, k) for t, k in self._timers if t > now]
        out: list[Output] = []
        for _, kind in due:
            if self._closed:
                break
            if kind == "updated":
                out += self._session_updated()
            elif kind == "drop":
                logger.info("= emulator fault: dropping session %s", self.session_id)
                self._closed = True
                out.append(Drop())
        return out

    # --- opening --------------------------------------------------------------------------

    def open(self, now: float, *, license_given: bool = True) -> list[Output]:
        """The socket is open: connection events in the real order [seed]."""
        if not license_given:
            return self._refuse("license is required")
        if self.faults.reject:
            return self._refuse("Invalid license")
        if self.faults.insufficient_balance:
            self._closed = True
            return [
                Send({"type": "conversation.connected.insufficient_balance", "data": {}}),
                Close(1000, "Insufficient points"),
            ]
        out: list[Output] = [
            Send(
                {
                    "type": "conversation.connected.success",
                    "data": {"sessionId": self.session_id, "iceServers": []},
                }
            )
        ]
        if self.faults.duplicate_name:  # right after success [seed]
            avatar = self.avatar_id or "emu-avatar-2"
            out.append(
                Send(
                    {
                        "type": "conversation.connected.warning",
                        "message": "Several avatars share this name; using the most recently "
                        f"updated one: {avatar}",
                        "data": {"avatarId": avatar},
                    }
                )
            )
        if self.webrtc:
            out.append(StartWebRtc())
        out.append(Send({"type": "realtime.session.created", "data": {}}))
        self._created = True
        self._timers.append((now + UPDATED_DELAY_S, "updated"))
        if self.faults.drop_after_s > 0:
            self._timers.append((now + self.faults.drop_after_s, "drop"))
        return out

    def _refuse(self, message: str) -> list[Output]:
        self._closed = True
        return [
            Send({"type": "conversation.connected.fail", "message": message}),
            Close(1000, message),
        ]

    def _session_updated(self) -> list[Output]:
        self._updated = True
        out: list[Output] = [Send({"type": "realtime.session.updated", "data": {}})]
        if self.faults.malformed:
            out += [
                Send("{this is not json"),
                Send("[1, 2, 3]"),
                Send({"data": {"no": "type"}}),
                Send({"type": "realtime.emulator.unknown_event", "data": {"x": 1}}),
                Send({"type": "realtime.response.audio.delta", "data": {"delta": "@@not-b64@@"}}),
            ]
        if self.script.greeting:
            out.append(self._respond(self.script.greeting))
        return out

    # --- receiving ---------------------------------------------------------------------------

    def receive_text(self, text: str, now: float) -> list[Output]:
        if self._closed:
            return []
        try:
            frame = json.loads(text)
        except ValueError:
            self.stats.malformed += 1
            logger.warning("< emulator: client sent malformed JSON")
            return []
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            self.stats.malformed += 1
            return []
        kind: str = frame["type"]
        self.stats.received[kind] += 1
        data = frame.get("data") if isinstance(frame.get("data"), dict) else {}
        assert isinstance(data, dict)
        if kind == "realtime.input_audio_buffer.append":
            return self._audio(data)
        if kind == "realtime.input_function_call":
            self._declare_from_content(data.get("content"))
            return []
        if kind == "session.update":
            session = frame.get("session")
            if isinstance(session, dict) and isinstance(session.get("tools"), list):
                self._declare(session["tools"])
            return []
        if kind == "conversation.item.create":
            return self._item(frame.get("item"))
        if kind == "response.create":
            return self._response_create()
        if kind == "realtime.input_text":
            text_in = data.get("content", data.get("text"))  # inferred payload {data: {content}}
            if isinstance(text_in, str) and self._check_items("realtime.input_text"):
                return self._answer(text_in)
            return []
        if kind == "realtime.input_image":
            return self._image(data)
        if kind == "webrtc.signaling.answer" or kind == "webrtc.signaling.offer":
            sdp = data.get("sdp")
            if isinstance(sdp, dict):
                sdp = sdp.get("sdp")
            if isinstance(sdp, str):
                return [RemoteSdp("answer" if kind.endswith("answer") else "offer", sdp)]
            return []
        if kind == "webrtc.signaling.iceCandidate":
            cand = data.get("candidate")
            if isinstance(cand, dict) and isinstance(cand.get("candidate"), str):
                mid = cand.get("sdpMid")
                index = cand.get("sdpMLineIndex")
                return [
                    RemoteIce(
                        cand["candidate"],
                        mid if isinstance(mid, str) and mid else None,
                        index if isinstance(index, int) else None,
                    )
                ]
            return []
        logger.info("< emulator: ignoring client frame of type %s", kind)
        return []

    def _violation(self, what: str) -> None:
        logger.warning("< emulator: protocol order violated: %s", what)
        self.stats.order_violations.append(what)

    def _check_items(self, what: str) -> bool:
        if not self._created:
            self._violation(f"{what} before realtime.session.created")
            return False
        return True

    def _audio(self, data: dict[str, Any]) -> list[Output]:
        b64 = data.get("audio")
        if not isinstance(b64, str):
            self.stats.malformed += 1
            return []
        if len(b64) > 4096:
            self._violation(f"audio chunk of {len(b64)} base64 chars (> 4096)")
        try:
            pcm = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            self._violation("audio chunk is not whole base64")
            return []
        if not self._updated:
            self._violation("audio before realtime.session.updated")
            return []
        self.stats.audio_bytes += len(pcm)
        out: list[Output] = []
        for what, t in self._vad.feed(pcm):
            if what == "start":
                logger.info("= emulator VAD: speech started at %.2f s", t)
                out.append(CancelResponses())  # barge-in
                out.append(Send({"type": "realtime.input_audio_buffer.speech_started", "data": {}}))
            else:
                duration = t - self._vad.started_at_s
                logger.info("= emulator VAD: speech stopped (%.2f s)", duration)
                out.append(Send({"type": "realtime.input_audio_buffer.speech_stopped", "data": {}}))
                out += self._utterance(duration)
        return out

    def _utterance(self, duration_s: float) -> list[Output]:
        index = self._utterances
        self._utterances += 1
        if index < len(self.script.hears):
            heard = self.script.hears[index]
        else:
            heard = f"(unrecognised speech, {duration_s:.1f} s)"
        self.stats.heard.append(heard)
        item_id = self._id("item")
        out: list[Output] = [
            Send(
                {
                    "type": "realtime.conversation.item.input_audio_transcription.completed",
                    "data": {"content": heard, "item_id": item_id},
                }
            )
        ]
        return out + self._answer(heard)

    def _item(self, item: Any) -> list[Output]:
        if not isinstance(item, dict):
            self.stats.malformed += 1
            return []
        if not self._check_items("conversation.item.create"):
            return []
        if item.get("type") == "message" and item.get("role") == "user":
            texts = [
                c.get("text", "")
                for c in item.get("content", [])
                if isinstance(c, dict) and c.get("type") == "input_text"
            ]
            text = " ".join(t for t in texts if isinstance(t, str))
            self.stats.history.append(text)
            self._unanswered.append(text)
        elif item.get("type") == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not isinstance(output, str):
                self._violation("function_call_output needs a string call_id and output")
                return []
            self.stats.tool_outputs[call_id] = output
            call = self._calls.get(call_id)
            if call is None:
                logger.warning("< emulator: output for unknown call %s", call_id)
            else:
                call.output = output
        return []

    def _response_create(self) -> list[Output]:
        if not self._check_items("response.create"):
            return []
        done = [(cid, c) for cid, c in self._calls.items() if c.output is not None]
        if done:
            out: list[Output] = []
            for cid, call in done:
                del self._calls[cid]
                out.append(self._respond(self._tool_reply(call)))
            return out
        if self._unanswered:
            text = self._unanswered[-1]
            self._unanswered.clear()
            return self._answer(text)
        return [self._respond(self.script.fallback)]

    def _tool_reply(self, call: _PendingTool) -> str:
        assert call.output is not None
        try:
            output: Any = json.loads(call.output)
        except ValueError:
            output = call.output
        if isinstance(output, dict) and "error" in output and len(output) == 1:
            error = output["error"]
            ctx = {"error": error if isinstance(error, dict) else {"message": str(error)}}
            return render(self.script.tool_error_reply, ctx)
        return render(call.rule.reply, {"output": output, "args": call.arguments})

    def _answer(self, heard: str) -> list[Output]:
        found = self.script.find(heard)
        if found is None:
            return [self._respond(self.script.fallback)]
        rule, groups = found
        if not rule.tool:
            return [self._respond(rule.reply or self.script.fallback)]
        if rule.tool not in self.stats.declared_tools:
            return [self._respond(render(self.script.no_tool_reply, {"tool": rule.tool}))]
        args = {
            k: render(v, groups) if isinstance(v, str) else v for k, v in rule.arguments.items()
        }
        return self._function_call(rule, args)

    def _function_call(self, rule: Rule, args: dict[str, Any]) -> list[Output]:
        call_id, response_id, item_id = self._id("call"), self._id("resp"), self._id("item")
        self._calls[call_id] = _PendingTool(rule, args)
        arguments = json.dumps(args)
        half = len(arguments) // 2
        out: list[Output] = []
        for piece in (arguments[:half], arguments[half:]):
            out.append(
                Send(
                    {
                        "type": "realtime.response.function_call_arguments.delta",
                        "data": {"call_id": call_id, "delta": piece, "response_id": response_id},
                    }
                )
            )
        raw = {  # the upstream OpenAI event [ios][wire]
            "type": "response.function_call_arguments.done",
            "event_id": self._id("event"),
            "response_id": response_id,
            "item_id": item_id,
            "output_index": 0,
            "call_id": call_id,
            "name": rule.tool,
            "arguments": arguments,
        }
        out.append(
            Send(
                {
                    "type": "realtime.response.function_call_arguments.done",
                    "data": {"call_id": call_id, "name": rule.tool, "arguments": arguments},
                    "raw_data": raw,
                }
            )
        )
        logger.info("> emulator: function call %s %s(%s)", call_id, rule.tool, arguments)
        return out

    def _image(self, data: dict[str, Any]) -> list[Output]:
        if not self._check_items("realtime.input_image"):
            return []
        content = data.get("content")
        if not isinstance(content, str) or "," not in content:
            self.stats.malformed += 1
            return []
        self.stats.images += 1
        if data.get("reply") not in (1, True, "1"):
            return []
        width = height = 0
        try:
            import cv2  # the emulator's avatar already needs OpenCV

            raw = np.frombuffer(base64.b64decode(content.split(",", 1)[1]), np.uint8)
            img = cv2.imdecode(raw, cv2.IMREAD_COLOR)
            if img is not None:
                height, width = int(img.shape[0]), int(img.shape[1])
        except (binascii.Error, ValueError):
            pass
        return [self._respond(render(self.script.image_reply, {"width": width, "height": height}))]

    def _declare_from_content(self, content: Any) -> None:
        try:
            tools = json.loads(content) if isinstance(content, str) else content
        except ValueError:
            self._violation("realtime.input_function_call content is not a JSON string")
            return
        if isinstance(tools, list):
            self._declare(tools)

    def _declare(self, tools: list[Any]) -> None:
        for t in tools:
            if isinstance(t, dict) and isinstance(t.get("name"), str):
                self.stats.declared_tools.add(t["name"])
        logger.info("< emulator: tools declared: %s", sorted(self.stats.declared_tools))

    # --- responses -------------------------------------------------------------------------

    def _respond(self, text: str) -> Respond:
        self.stats.replies.append(text)
        return Respond(self._id("resp"), text)

    @staticmethod
    def response_frames(
        response_id: str, text: str, pcm: bytes, *, chunk_ms: int = AUDIO_CHUNK_MS
    ) -> list[tuple[float, dict[str, Any]]]:
        """The frames of one spoken response with their send times (s from its start), in the
        real order [seed]: transcript deltas, audio deltas paced in real time, transcript
        done, audio done."""
        out: list[tuple[float, dict[str, Any]]] = []
        for piece in re.findall(r"\S+\s*", text) or [text]:
            out.append(
                (
                    0.0,
                    {
                        "type": "realtime.response.audio_transcript.delta",
                        "data": {"id": response_id, "content": piece},
                    },
                )
            )
        step = IN_RATE_HZ * 2 * chunk_ms // 1000
        t = 0.0
        for i in range(0, len(pcm), step):
            chunk = pcm[i : i + step]
            out.append(
                (
                    t,
                    {
                        "type": "realtime.response.audio.delta",
                        "data": {"delta": base64.b64encode(chunk).decode("ascii")},
                    },
                )
            )
            t += len(chunk) / (IN_RATE_HZ * 2)
        out.append(
            (
                t,
                {
                    "type": "realtime.response.audio_transcript.done",
                    "data": {"id": response_id, "content": text},
                },
            )
        )
        out.append((t, {"type": "realtime.response.audio.done", "data": {}}))
        return out
