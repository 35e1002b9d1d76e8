"""The emulator's conversation logic, sans I/O: client frames in, server frames and actions out.

One :class:`Brain` per WebSocket connection. It follows NAVTALK_PROTOCOL.md as a server:
connection events, then ``realtime.session.created``, then (shortly after)
``realtime.session.updated``; server VAD on the received audio with ``speech_started`` /
``speech_stopped``; recognition of the utterance (:class:`~agent.emulator.outputs.Recognize`,
run by the shell off the event loop) against the script's ``hears`` lines; rules that reply
or call a declared tool; function-call events with both ``data`` and ``raw_data`` [wire].

Strict, in the real service's order: on a barge-in ``speech_started`` goes out before the
cut response's ``audio.done``; function-call events wait behind the speech in flight
(:class:`~agent.emulator.outputs.Enqueue`); ``response.create`` while a response is active
gets an error event. Every client message is checked (:mod:`agent.emulator.conformance`)
and each violation is reported (:class:`~agent.emulator.outputs.Report`).

No sockets, no clock: the shell (:mod:`agent.emulator.session`) passes ``now`` (monotonic
seconds), runs the timers via :meth:`Brain.tick`, and tells the brain when things happened
(:meth:`offer_sent`, :meth:`response_done`, :meth:`recognized`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import logging
from dataclasses import dataclass
from typing import Any

from agent.emulator.conformance import Violation, ViolationKind, check_shape
from agent.emulator.faults import Faults
from agent.emulator.frames import (
    ACTIVE_RESPONSE_CODE,
    active_response_error,
    catalog_key,
    function_call_frames,
    image_size,
    tool_reply,
)
from agent.emulator.outputs import (
    CancelResponses,
    Close,
    Drop,
    Enqueue,
    Output,
    Recognize,
    RemoteIce,
    RemoteSdp,
    Report,
    Respond,
    Send,
    StartWebRtc,
)
from agent.emulator.script import Rule, Script, render
from agent.emulator.stats import SessionStats
from agent.emulator.vad import UtteranceRecorder, VadEvent, VoiceDetector

__all__ = ["Brain", "Phase", "SessionStats"]  # SessionStats is re-exported (stats.py)

logger = logging.getLogger(__name__)
# A response.create that reaches us within this long of a response's first frame may have
# left the client before that frame arrived: a race (refused, not flagged).
RACE_GRACE_S = 1.0

UPDATED_DELAY_S = 0.05  # session.created -> session.updated (the SDK sends history in between)
OFFER_DEADLINE_S = 3.0  # a server offer unanswered this long is a violation


class Phase(enum.Enum):
    CONNECTING = "connecting"  # socket open, nothing sent yet
    CREATED = "created"  # realtime.session.created sent: the client may send items
    READY = "ready"  # realtime.session.updated sent: the client may stream audio
    CLOSED = "closed"


class _Timer(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    DROP = "drop"
    OFFER_DEADLINE = "offer_deadline"


@dataclass(slots=True)
class _PendingTool:
    rule: Rule
    arguments: dict[str, Any]
    output: str | None = None


class Brain:
    def __init__(
        self,
        script: Script,
        *,
        faults: Faults | None = None,
        session_id: str = "emu-session",
        avatar_id: str = "",
        webrtc: bool = True,
        vad_mode: int = 3,
        vad_start_ms: int = 90,
        vad_end_ms: int = 600,
        offer_deadline_s: float = OFFER_DEADLINE_S,
        updated_delay_s: float = UPDATED_DELAY_S,
        created_delay_s: float = 0.0,
    ) -> None:
        self.script = script
        self.faults = faults if faults is not None else Faults()
        self.session_id = session_id
        self.avatar_id = avatar_id
        self.webrtc = webrtc
        self.offer_deadline_s = offer_deadline_s
        self.updated_delay_s = updated_delay_s
        self.created_delay_s = created_delay_s
        self.stats = SessionStats()
        self._phase = Phase.CONNECTING
        self._vad = VoiceDetector(vad_mode, vad_start_ms, vad_end_ms)
        self._timers: list[tuple[float, _Timer]] = []
        self._n = 0  # id counter
        self._unanswered: list[str] = []  # user text items since the last response.create
        self._calls: dict[str, _PendingTool] = {}
        self._active: list[str] = []  # response ids queued or in flight, oldest first
        self._seen: dict[str, float] = {}  # active response -> when its first frame went out
        self._catalog: str | None = None  # the declared tools, canonical JSON
        self._offer_pending = False
        self._recorder = UtteranceRecorder()
        self._utterances = 0

    @property
    def phase(self) -> Phase:
        return self._phase

    def _set_phase(self, new: Phase, why: str) -> None:
        if new is not self._phase:
            logger.info(
                "= emulator %s: %s -> %s (%s)", self.session_id, self._phase.value, new.value, why
            )
            self._phase = new

    @property
    def response_active(self) -> bool:
        return bool(self._active)

    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self.session_id[-6:]}_{self._n}"

    def _violate(self, kind: ViolationKind, detail: str, now: float, msg: str = "") -> Report:
        v = Violation(kind, detail, msg, self.session_id, now)
        self.stats.violations.append(v)
        return Report(v)

    # --- timers --------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        return min((t for t, _ in self._timers), default=None)

    def tick(self, now: float) -> list[Output]:
        due = sorted(((t, k) for t, k in self._timers if t <= now), key=lambda x: x[0])
        self._timers = [(t, k) for t, k in self._timers if t > now]
        out: list[Output] = []
        for _, kind in due:
            if self._phase is Phase.CLOSED:
                break
            if kind is _Timer.CREATED:
                out += self._session_created(now)
            elif kind is _Timer.UPDATED:
                out += self._session_updated()
            elif kind is _Timer.DROP:
                logger.info("= emulator fault: dropping session %s", self.session_id)
                self._set_phase(Phase.CLOSED, "drop fault")
                out.append(Drop())
            elif kind is _Timer.OFFER_DEADLINE and self._offer_pending:
                out.append(
                    self._violate(
                        ViolationKind.OFFER_UNANSWERED,
                        f"the server's WebRTC offer had no answer within "
                        f"{self.offer_deadline_s:g} s",
                        now,
                    )
                )
        return out

    # --- opening --------------------------------------------------------------------------

    def open(self, now: float, *, license_given: bool = True) -> list[Output]:
        """The socket is open: connection events in the real order [seed]."""
        if not license_given:
            return self._refuse("license is required")
        if self.faults.reject:
            return self._refuse("Invalid license")
        if self.faults.insufficient_balance:
            self._set_phase(Phase.CLOSED, "insufficient balance fault")
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
        if self.created_delay_s > 0:  # the real service first connects upstream
            self._timers.append((now + self.created_delay_s, _Timer.CREATED))
        else:
            out += self._session_created(now)
        if self.faults.drop_after_s > 0:
            self._timers.append((now + self.faults.drop_after_s, _Timer.DROP))
        return out

    def _session_created(self, now: float) -> list[Output]:
        self._set_phase(Phase.CREATED, "session.created sent")
        self._timers.append((now + self.updated_delay_s, _Timer.UPDATED))
        return [Send({"type": "realtime.session.created", "data": {}})]

    def _refuse(self, message: str) -> list[Output]:
        self._set_phase(Phase.CLOSED, message)
        return [
            Send({"type": "conversation.connected.fail", "message": message}),
            Close(1000, message),
        ]

    def _session_updated(self) -> list[Output]:
        self._set_phase(Phase.READY, "session.updated sent")
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

    # --- events from the shell -----------------------------------------------------------

    def offer_sent(self, now: float) -> list[Output]:
        """The server's WebRTC offer went out: it must be answered within the deadline."""
        self._offer_pending = True
        self._timers.append((now + self.offer_deadline_s, _Timer.OFFER_DEADLINE))
        return []

    def response_started(self, response_id: str, now: float) -> None:
        """A frame of ``response_id`` is out: a round trip later the client knows."""
        if response_id in self._active:
            self._seen.setdefault(response_id, now)

    def response_done(self, response_id: str, now: float) -> list[Output]:
        """Response ``response_id`` has been sent completely (or was cancelled)."""
        if response_id in self._active:
            self._active.remove(response_id)
        self._seen.pop(response_id, None)
        return []

    def recognized(self, utterance_id: int, line: str | None, now: float) -> list[Output]:
        """The recognizer's verdict on an utterance: a script line, or None (the fallback)."""
        if self._phase is Phase.CLOSED:
            return []
        heard = line if line is not None else f"(unrecognised speech #{utterance_id})"
        self.stats.heard.append(heard)
        self.stats.recognized.append(line is not None)
        out: list[Output] = [
            Send(
                {
                    "type": "realtime.conversation.item.input_audio_transcription.completed",
                    "data": {"content": heard, "item_id": self._id("item")},
                }
            )
        ]
        if line is None:
            return [*out, self._respond(self.script.fallback)]
        return out + self._answer(line)

    def receive_bytes(self, size: int, now: float) -> list[Output]:
        self.stats.malformed += 1
        return [self._violate(ViolationKind.BINARY_FRAME, f"binary frame of {size} bytes", now)]

    # --- receiving ---------------------------------------------------------------------------

    def receive_text(self, text: str, now: float) -> list[Output]:
        if self._phase is Phase.CLOSED:
            return []
        try:
            frame = json.loads(text)
        except ValueError:
            frame = None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            self.stats.malformed += 1
            return [self._violate(ViolationKind.NOT_JSON, "not a JSON object with a type", now)]
        kind: str = frame["type"]
        self.stats.received[kind] += 1
        problems = check_shape(frame)
        out: list[Output] = [self._violate(k, d, now, kind) for k, d in problems]
        if any(k is not ViolationKind.AUDIO_CHUNK_TOO_LARGE for k, _ in problems):
            return out  # not usable
        raw_data = frame.get("data")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        if kind == "realtime.input_audio_buffer.append":
            return out + self._audio(data["audio"], now)
        if kind == "realtime.input_function_call":
            return out + self._declare_from_content(data["content"], now)
        if kind == "session.update":
            tools = frame["session"].get("tools")
            return out + (self._declare(tools, now) if isinstance(tools, list) else [])
        if kind == "conversation.item.create":
            return out + self._item(frame["item"], now)
        if kind == "response.create":
            return out + self._response_create(now)
        if kind == "realtime.input_text":
            return out + self._input_text(data["content"], now)
        if kind == "realtime.input_image":
            return out + self._image(data, now)
        if kind in ("webrtc.signaling.answer", "webrtc.signaling.offer"):
            return out + self._remote_sdp(kind, data["sdp"]["sdp"], now)
        if kind == "webrtc.signaling.iceCandidate":
            cand = data["candidate"]
            mid, index = cand.get("sdpMid"), cand.get("sdpMLineIndex")
            return [
                *out,
                RemoteIce(
                    cand["candidate"],
                    mid if mid else None,
                    index if isinstance(index, int) else None,
                ),
            ]
        logger.info("< emulator: %s accepted and ignored", kind)  # input_config: payload unknown
        return out

    def _items_allowed(self, what: str, now: float) -> list[Output]:
        if self._phase is Phase.CONNECTING:
            return [
                self._violate(
                    ViolationKind.ITEM_BEFORE_CREATED,
                    f"{what} before realtime.session.created",
                    now,
                    what,
                )
            ]
        return []

    def _remote_sdp(self, kind: str, sdp: str, now: float) -> list[Output]:
        out: list[Output] = []
        if kind.endswith("answer"):
            self._offer_pending = False
            return [RemoteSdp("answer", sdp)]
        if self._offer_pending:
            out.append(
                self._violate(
                    ViolationKind.CLIENT_OFFER_WHILE_OFFER_PENDING,
                    "client sent an offer while the server's offer was unanswered",
                    now,
                    kind,
                )
            )
            self._offer_pending = False  # the client's offer replaces ours
        return [*out, RemoteSdp("offer", sdp)]

    # --- audio -------------------------------------------------------------------------------

    def _audio(self, b64: str, now: float) -> list[Output]:
        kind = "realtime.input_audio_buffer.append"
        try:
            pcm = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            return [
                self._violate(ViolationKind.BAD_FIELD, "data.audio is not whole base64", now, kind)
            ]
        if self._phase is not Phase.READY:
            return [
                self._violate(
                    ViolationKind.AUDIO_BEFORE_UPDATED,
                    "audio before realtime.session.updated",
                    now,
                    kind,
                )
            ]
        self.stats.audio_bytes += len(pcm)
        self._recorder.feed(pcm)
        out: list[Output] = []
        for what, t in self._vad.feed(pcm):
            if what is VadEvent.START:
                logger.info("= emulator VAD: speech started at %.2f s", t)
                # The real order: speech_started, then the cut response's audio.done.
                out.append(Send({"type": "realtime.input_audio_buffer.speech_started", "data": {}}))
                if self._active:
                    out.append(CancelResponses())
                    self._active.clear()
                self._recorder.start()
            else:
                duration = t - self._vad.started_at_s
                logger.info("= emulator VAD: speech stopped (%.2f s)", duration)
                out.append(Send({"type": "realtime.input_audio_buffer.speech_stopped", "data": {}}))
                self._utterances += 1
                out.append(Recognize(self._utterances, self._recorder.stop(), duration))
        return out

    # --- items and responses -----------------------------------------------------------------

    def _item(self, item: dict[str, Any], now: float) -> list[Output]:
        early = self._items_allowed("conversation.item.create", now)
        if early:
            return early
        if item.get("type") == "message":
            text = " ".join(c["text"] for c in item["content"])
            self.stats.history.append(text)
            self._unanswered.append(text)
        else:  # function_call_output (check_shape allows only these two)
            call_id, output = item["call_id"], item["output"]
            self.stats.tool_outputs[call_id] = output
            call = self._calls.get(call_id)
            if call is None:
                logger.warning("< emulator: output for unknown call %s", call_id)
            else:
                call.output = output
        return []

    def _response_create(self, now: float) -> list[Output]:
        early = self._items_allowed("response.create", now)
        if early:
            return early
        if self._active:
            return self._already_active(now)
        done = [(cid, c) for cid, c in self._calls.items() if c.output is not None]
        if done:
            out: list[Output] = []
            for cid, call in done:
                del self._calls[cid]
                assert call.output is not None
                reply = tool_reply(self.script, call.rule.reply, call.output, call.arguments)
                out.append(self._respond(reply))
            return out
        if self._unanswered:
            text = self._unanswered[-1]
            self._unanswered.clear()
            return self._answer(text)
        return [self._respond(self.script.fallback)]

    def _already_active(self, now: float) -> list[Output]:
        """``response.create`` during a response: an error event (see
        :func:`agent.emulator.frames.active_response_error` for the shape and its
        uncertainty) and a conformance violation."""
        active = self._active[0]
        self.stats.errors_sent.append(ACTIVE_RESPONSE_CODE)
        error = Send(active_response_error(active, self._id("event")))
        if not any(now - self._seen.get(r, now) >= RACE_GRACE_S for r in self._active):
            # No frame of it has reached the client: a race it could not avoid (the greeting
            # starting as the guest types). Refused as the service would, not a violation.
            logger.info("= emulator: response.create raced response %s: refused", active)
            return [error]
        what = f"response.create while response {active} is active"
        return [
            self._violate(ViolationKind.RESPONSE_WHILE_ACTIVE, what, now, "response.create"),
            error,
        ]

    def _input_text(self, text: str, now: float) -> list[Output]:
        early = self._items_allowed("realtime.input_text", now)
        if early:
            return early
        if self._active:
            return self._already_active(now)
        return self._answer(text)

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
        return [self._function_call(rule, args)]

    def _function_call(self, rule: Rule, args: dict[str, Any]) -> Enqueue:
        call_id, response_id = self._id("call"), self._id("resp")
        self._calls[call_id] = _PendingTool(rule, args)
        arguments = json.dumps(args)
        frames = function_call_frames(
            call_id=call_id,
            response_id=response_id,
            item_id=self._id("item"),
            event_id=self._id("event"),
            name=rule.tool,
            arguments=arguments,
        )
        logger.info("> emulator: function call %s %s(%s) queued", call_id, rule.tool, arguments)
        self._active.append(response_id)
        return Enqueue(response_id, frames)

    def _image(self, data: dict[str, Any], now: float) -> list[Output]:
        early = self._items_allowed("realtime.input_image", now)
        if early:
            return early
        content: str = data["content"]
        if "," not in content:
            self.stats.malformed += 1
            return [
                self._violate(
                    ViolationKind.BAD_FIELD,
                    "data.content is not a data URL",
                    now,
                    "realtime.input_image",
                )
            ]
        self.stats.images += 1
        if data["reply"] != 1:
            return []
        width, height = image_size(content)
        return [self._respond(render(self.script.image_reply, {"width": width, "height": height}))]

    # --- tools ---------------------------------------------------------------------------------

    def _declare_from_content(self, content: str, now: float) -> list[Output]:
        kind = "realtime.input_function_call"
        try:
            tools = json.loads(content)
        except ValueError:
            return [
                self._violate(
                    ViolationKind.BAD_FIELD, "data.content is not a JSON string", now, kind
                )
            ]
        if not isinstance(tools, list):
            return [
                self._violate(
                    ViolationKind.BAD_FIELD,
                    "data.content is not a JSON list of functions",
                    now,
                    kind,
                )
            ]
        return self._declare(tools, now, kind)

    def _declare(self, tools: list[Any], now: float, kind: str = "session.update") -> list[Output]:
        out: list[Output] = []
        names = []
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                out.append(
                    self._violate(
                        ViolationKind.BAD_FIELD, f"tool {i} has no string name", now, kind
                    )
                )
                continue
            names.append(t["name"])
        self.stats.declarations += 1
        catalog = catalog_key(tools)
        if self._catalog == catalog:
            out.append(
                self._violate(
                    ViolationKind.TOOLS_DECLARED_TWICE,
                    f"the same {len(names)} tools declared again "
                    f"(declaration {self.stats.declarations})",
                    now,
                    kind,
                )
            )
        elif self._catalog is not None:
            logger.info("< emulator: tool catalog changed")
        self._catalog = catalog
        self.stats.declared_tools = set(names)
        logger.info("< emulator: tools declared: %s", sorted(names))
        return out

    # --- responses -------------------------------------------------------------------------

    def _respond(self, text: str) -> Respond:
        self.stats.replies.append(text)
        response = Respond(self._id("resp"), text)
        self._active.append(response.response_id)
        return response
