"""The NavTalk v2 realtime protocol, sans I/O.

:class:`NavTalkProtocol` turns received WebSocket text frames into typed events
(:mod:`agent.navtalk.events`) and builds every frame the client sends, as JSON text. It owns
the session state and its rules; it never touches a socket or a clock (callers pass ``now``,
a monotonic time in seconds, used for logging and the time of the last change).

The facts come from ``NAVTALK_PROTOCOL.md``; each builder names its source tag.
Ordering rules, and what happens when a caller breaks them: builders **raise**
:class:`agent.errors.ProtocolError` (they do not queue). The core is a pure
translator: whether to buffer, drop or wait is policy, and policy belongs to
the caller (the session service holds a bounded backlog of mic audio and asks
:attr:`NavTalkProtocol.can_send_audio` / :attr:`NavTalkProtocol.can_send_items`
before building).

- history (and any ``conversation.item.create``) only once ``realtime.session.created``
  has been received (state CREATED or READY);
- audio only once ``realtime.session.updated`` has been received (state READY);
- nothing at all once CLOSED.

Everything the server sends is untrusted: the license is redacted from each frame before
parsing; argument deltas are bounded per call and in total (over the limit:
:attr:`events.FunctionCallDone.error`); ids, SDPs, candidates are bounded; bad frames are
logged once per burst. One response at a time: see :meth:`NavTalkProtocol.deferred_frames`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import ProtocolError
from agent.navtalk import events as ev
from agent.navtalk.burst import BurstLog
from agent.navtalk.url import redact

__all__ = [
    "AUDIO_CHANNELS",
    "AUDIO_CHUNK_BYTES",
    "AUDIO_SAMPLE_RATE_HZ",
    "MAX_AUDIO_B64_CHARS",
    "MAX_CALL_ARGS_CHARS",
    "MAX_OPEN_CALLS",
    "MAX_TOTAL_ARGS_CHARS",
    "NavTalkProtocol",
    "SessionStatus",
    "ToolDeclaration",
    "field",
]

logger = logging.getLogger(__name__)

AUDIO_SAMPLE_RATE_HZ = 24_000  # [seed][sdk][hotel]: PCM16 LE, 24 kHz, mono
AUDIO_CHANNELS = 1
MAX_AUDIO_B64_CHARS = 4096  # [seed]: base64 split in chunks of <= 4096 characters
# 3072 bytes -> exactly 4096 base64 characters with no padding, so each chunk is whole base64
# on its own (decodable alone) [wire], and holds whole 16-bit samples.
AUDIO_CHUNK_BYTES = MAX_AUDIO_B64_CHARS // 4 * 3
EXCERPT_CHARS = 200
MAX_CALL_ARGS_CHARS = 64 * 1024  # one call's arguments (deltas or the done event's own)
MAX_TOTAL_ARGS_CHARS = 256 * 1024  # the deltas held for every open call together
MAX_OPEN_CALLS = 32  # calls with deltas but no done yet; deltas of further calls are dropped
MAX_ID_CHARS = 256  # call_id, function name, response id
MAX_SDP_CHARS = 256 * 1024
MAX_CANDIDATE_CHARS = 4096
MAX_MLINE_INDEX = 1024
ACTIVE_RESPONSE_CODE = "conversation_already_has_active_response"  # OpenAI's error code


class SessionStatus(enum.Enum):
    """Where the session is. Changed only in :meth:`NavTalkProtocol._set_state`."""

    CONNECTING = "connecting"  # socket opening / open; waiting for conversation.connected.success
    CONNECTED = "connected"  # conversation.connected.success received
    CREATED = "created"  # realtime.session.created received: history may be sent
    READY = "ready"  # realtime.session.updated received: audio may be streamed
    CLOSED = "closed"  # fail / close / insufficient balance / socket lost


@dataclass(frozen=True, slots=True)
class ToolDeclaration:
    """One function as declared to NavTalk; ``parameters`` is a JSON-schema object."""

    name: str
    description: str
    parameters: Mapping[str, Any]


_MISSING = object()


def field(frame: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """Read ``name`` from ``frame["data"]``, then ``frame["raw_data"]``, then the top level.

    Where a field lives varies between NavTalk clients and events [ios][seed][wire].
    """
    for where in ("data", "raw_data"):
        inner = frame.get(where)
        if isinstance(inner, Mapping):
            value = inner.get(name, _MISSING)
            if value is not _MISSING and value is not None:
                return value
    value = frame.get(name, _MISSING)
    if value is not _MISSING and value is not None:
        return value
    return default


def _str(frame: Mapping[str, Any], *names: str) -> str:
    """The first of ``names`` found (see :func:`field`) as a string; numbers are converted."""
    for name in names:
        value = field(frame, name)
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    return ""


def _id(frame: Mapping[str, Any], name: str) -> str:
    """An id-like string field; over MAX_ID_CHARS is malformed."""
    value = _str(frame, name)
    if len(value) > MAX_ID_CHARS:
        raise _Bad(f"{name} over {MAX_ID_CHARS} characters")
    return value


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class _Bad(Exception):
    """Internal: the frame lacks what its type needs (becomes a Malformed event)."""


@dataclass(slots=True)
class _Args:
    """The argument deltas of one open function call."""

    pieces: list[str]
    chars: int = 0
    too_large: bool = False


class NavTalkProtocol:
    """One NavTalk session, from socket open to close. Create a new one per connection."""

    def __init__(self) -> None:
        self._state = SessionStatus.CONNECTING
        self._state_since = 0.0
        self._args: dict[str, _Args] = {}  # function-call argument deltas, per call_id
        self._args_chars = 0  # sum of every _Args.chars
        self._burst = BurstLog()
        self.dropped_deltas = 0  # argument deltas not kept (over a limit)
        self.session_id = ""
        self.ice_servers: tuple[ev.IceServerInfo, ...] = ()
        # A response is in flight from its first event to its audio.done / arguments.done; a
        # response.create asked for meanwhile waits (OpenAI refuses a second one).
        self._responding = False
        self._response_wanted = False

    # --- state --------------------------------------------------------------------------------

    @property
    def state(self) -> SessionStatus:
        return self._state

    @property
    def state_since(self) -> float:
        """``now`` of the last state change."""
        return self._state_since

    @property
    def held_argument_chars(self) -> int:
        """Characters of function-call argument deltas held now (bounded)."""
        return self._args_chars

    @property
    def can_send_items(self) -> bool:
        """History / text turns / tool outputs may be sent (after realtime.session.created)."""
        return self._state in (SessionStatus.CREATED, SessionStatus.READY)

    @property
    def can_send_audio(self) -> bool:
        """Audio may be streamed (after realtime.session.updated)."""
        return self._state is SessionStatus.READY

    def _set_state(self, new: SessionStatus, now: float, why: str) -> None:
        if new is self._state:
            return
        logger.info("= navtalk %s -> %s (%s)", self._state.value, new.value, why)
        self._state = new
        self._state_since = now

    def deferred_frames(self) -> list[str]:
        """Frames held back until now: the ``response.create`` asked for while a response was in
        flight, once that response has ended. Call after handling each received frame."""
        if self._response_wanted and not self._responding and self.can_send_items:
            self._response_wanted = False
            return [_dumps({"type": "response.create"})]
        return []

    def _response_create(self) -> list[str]:
        if self._responding:
            self._response_wanted = True  # several wishes, one response: it answers them all
            return []
        return [_dumps({"type": "response.create"})]

    def connection_lost(self, now: float, why: str = "socket closed") -> None:
        """The socket is gone (closed by either side, or dropped)."""
        self._set_state(SessionStatus.CLOSED, now, why)
        self._responding = self._response_wanted = False
        self._args.clear()
        self._args_chars = 0

    # --- receiving ----------------------------------------------------------------------------

    def receive_bytes(self, data: bytes, now: float) -> list[ev.Event]:
        """A binary frame: the vendor clients only note its size [seed][ios]."""
        return [ev.BinaryFrame(size=len(data))]

    def receive_text(self, text: str, now: float) -> list[ev.Event]:
        """Parse one text frame into events. Never raises."""
        text = redact(text)  # the license, echoed back, goes no further
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError) as exc:
            return [self._malformed(f"not JSON: {str(exc)[:80]}", "", text, now)]
        if not isinstance(frame, dict):
            return [self._malformed("not a JSON object", "", text, now)]
        type_ = frame.get("type")
        if not isinstance(type_, str) or not type_:
            return [self._malformed("no type", "", text, now)]
        if len(type_) > MAX_ID_CHARS:
            return [self._malformed("type too long", type_[:MAX_ID_CHARS], text, now)]
        cls = ev.EVENT_TYPES.get(type_)
        if cls is None:
            logger.debug("< unknown event %s", type_)
            if ACTIVE_RESPONSE_CODE in text:  # our response.create raced one: ask again after it
                self._responding = self._response_wanted = True
            return [ev.Unknown(type=type_, frame=frame)]
        try:
            event = self._parse(cls, frame)
        except _Bad as exc:
            return [self._malformed(str(exc), type_, text, now)]
        return [self._apply(event, now)]

    def _malformed(self, reason: str, type_: str, text: str, now: float) -> ev.Malformed:
        excerpt = redact(text[:EXCERPT_CHARS])
        suppressed = self._burst.admit(f"{type_}:{reason}", now)
        if suppressed is not None:
            more = f" (+{suppressed} more like it)" if suppressed else ""
            logger.warning("< malformed frame (%s) type=%r%s: %s", reason, type_, more, excerpt)
        return ev.Malformed(reason=reason, type=type_, excerpt=excerpt)

    def _parse(self, cls: type[ev.Event], f: dict[str, Any]) -> ev.Event:
        if cls is ev.ConnectedSuccess:
            return ev.ConnectedSuccess(
                session_id=_str(f, "sessionId", "session_id"),
                ice_servers=_ice_servers(field(f, "iceServers", [])),
            )
        if cls is ev.ConnectedFail:
            return ev.ConnectedFail(message=_str(f, "message"))
        if cls is ev.ConnectedClose:
            return ev.ConnectedClose(message=_str(f, "message"))
        if cls is ev.InsufficientBalance:
            return ev.InsufficientBalance(message=_str(f, "message"))
        if cls is ev.ConnectedWarning:
            avatar = _str(f, "avatarId", "avatar_id")
            return ev.ConnectedWarning(message=_str(f, "message"), avatar_id=avatar or None)
        if cls in (ev.SessionCreated, ev.SessionUpdated, ev.SpeechStarted, ev.SpeechStopped):
            return cls()
        if cls is ev.InputTranscriptionCompleted:
            # [seed][sdk][hotel]: data.content; OpenAI's own name is `transcript`.
            return ev.InputTranscriptionCompleted(
                content=_str(f, "content", "transcript"), item_id=_str(f, "item_id")
            )
        if cls is ev.TranscriptDelta:
            return ev.TranscriptDelta(
                response_id=_str(f, "id", "response_id"), content=_str(f, "content", "delta")
            )
        if cls is ev.TranscriptDone:
            return ev.TranscriptDone(
                response_id=_str(f, "id", "response_id"),
                content=_str(f, "content", "transcript"),
            )
        if cls is ev.AudioDelta:
            b64 = field(f, "delta")
            if not isinstance(b64, str):
                raise _Bad("audio.delta without a base64 `delta`")
            try:
                pcm = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _Bad(f"audio.delta is not base64: {exc}") from exc
            return ev.AudioDelta(pcm=pcm, response_id=_str(f, "response_id", "id"))
        if cls is ev.AudioDone:
            return ev.AudioDone(response_id=_str(f, "response_id", "id"))
        if cls is ev.FunctionCallArgumentsDelta:
            call_id = _id(f, "call_id")
            if not call_id:
                raise _Bad("function_call_arguments.delta without call_id")
            return ev.FunctionCallArgumentsDelta(call_id=call_id, delta=_str(f, "delta"))
        if cls is ev.FunctionCallDone:
            call_id = _id(f, "call_id")
            name = _id(f, "name")
            if not call_id or not name:
                raise _Bad("function_call_arguments.done without call_id or name")
            args = field(f, "arguments", "")
            if isinstance(args, Mapping | list):  # tolerate an object where a string is due
                args = _dumps(args) if isinstance(args, Mapping) else json.dumps(args)
            elif not isinstance(args, str):
                args = ""
            return ev.FunctionCallDone(call_id=call_id, name=name, arguments=args)
        if cls in (ev.RtcOffer, ev.RtcAnswer):
            sdp = field(f, "sdp")
            # data.sdp = {type, sdp} (either key order, extra keys allowed) [wire]; a bare
            # string is accepted too.
            if isinstance(sdp, Mapping):
                sdp = sdp.get("sdp")
            if not isinstance(sdp, str) or not sdp:
                raise _Bad("signaling without an sdp")
            if len(sdp) > MAX_SDP_CHARS:
                raise _Bad(f"sdp over {MAX_SDP_CHARS} characters")
            return cls(sdp=sdp)
        if cls is ev.RtcIceCandidate:
            cand = field(f, "candidate")
            if isinstance(cand, Mapping):
                text = cand.get("candidate")
                mid = cand.get("sdpMid")
                index = cand.get("sdpMLineIndex")
            else:
                text, mid, index = cand, field(f, "sdpMid"), field(f, "sdpMLineIndex")
            if not isinstance(text, str):
                raise _Bad("iceCandidate without a candidate")
            if len(text) > MAX_CANDIDATE_CHARS:
                raise _Bad(f"candidate over {MAX_CANDIDATE_CHARS} characters")
            good_index = (
                isinstance(index, int)
                and not isinstance(index, bool)
                and 0 <= index <= MAX_MLINE_INDEX
            )
            return ev.RtcIceCandidate(
                candidate=text,
                sdp_mid=mid[:MAX_ID_CHARS] if isinstance(mid, str) else None,
                sdp_mline_index=index if good_index else None,
            )
        raise AssertionError(f"no parser for {cls.__name__}")  # pragma: no cover

    def _apply(self, event: ev.Event, now: float) -> ev.Event:
        """Update the state and the argument accumulators (only here and in connection_lost);
        returns the event, completed from the accumulated state where needed."""
        match event:
            case ev.ConnectedSuccess():
                self.session_id = event.session_id
                self.ice_servers = event.ice_servers
                self._set_state(SessionStatus.CONNECTED, now, event.TYPE)
            case ev.SessionCreated():
                if self._state in (SessionStatus.CONNECTING, SessionStatus.CONNECTED):
                    self._set_state(SessionStatus.CREATED, now, event.TYPE)
            case ev.SessionUpdated():
                if self._state is not SessionStatus.CLOSED:
                    self._set_state(SessionStatus.READY, now, event.TYPE)
            case ev.ConnectedFail() | ev.ConnectedClose() | ev.InsufficientBalance():
                self._set_state(SessionStatus.CLOSED, now, event.TYPE)
            case ev.TranscriptDelta() | ev.AudioDelta() | ev.TranscriptDone():
                self._responding = True
            case ev.AudioDone():
                self._responding = False
            case ev.FunctionCallArgumentsDelta():
                self._responding = True
                self._add_delta(event, now)
            case ev.FunctionCallDone():
                self._responding = False
                acc = self._args.pop(event.call_id, None)
                if acc is not None:
                    self._args_chars -= acc.chars
                if (acc is not None and acc.too_large) or len(event.arguments) > (
                    MAX_CALL_ARGS_CHARS
                ):
                    return dataclasses.replace(
                        event,
                        arguments="",
                        error=f"the arguments are over {MAX_CALL_ARGS_CHARS} characters",
                    )
                if not event.arguments.strip() and acc is not None and acc.pieces:
                    # [hotel]: use the accumulated deltas
                    return dataclasses.replace(event, arguments="".join(acc.pieces))
            case _:
                pass
        return event

    def _add_delta(self, event: ev.FunctionCallArgumentsDelta, now: float) -> None:
        acc = self._args.get(event.call_id)
        size = len(event.delta)
        if acc is None:
            if len(self._args) >= MAX_OPEN_CALLS:
                self._drop_delta("too many open calls", now)
                return
            acc = self._args[event.call_id] = _Args([])
        if acc.too_large:
            self._drop_delta("call over its limit", now)
            return
        if acc.chars + size > MAX_CALL_ARGS_CHARS or self._args_chars + size > (
            MAX_TOTAL_ARGS_CHARS
        ):
            # Free what it holds; its done event will carry an error instead of arguments.
            acc.too_large = True
            self._args_chars -= acc.chars
            acc.pieces, acc.chars = [], 0
            self._drop_delta("arguments over the limit", now)
            return
        acc.pieces.append(event.delta)
        acc.chars += size
        self._args_chars += size

    def _drop_delta(self, why: str, now: float) -> None:
        self.dropped_deltas += 1
        suppressed = self._burst.admit(f"delta:{why}", now)
        if suppressed is not None:
            more = f" (+{suppressed} more)" if suppressed else ""
            logger.warning("< function-call argument delta dropped: %s%s", why, more)

    # --- sending --------------------------------------------------------------------------------

    def _require(self, allowed: Iterable[SessionStatus], what: str) -> None:
        allowed = tuple(allowed)
        if self._state not in allowed:
            raise ProtocolError(
                f"cannot send {what} in state {self._state.value}"
                f" (allowed: {', '.join(s.value for s in allowed)})"
            )

    _OPEN = (
        SessionStatus.CONNECTING,
        SessionStatus.CONNECTED,
        SessionStatus.CREATED,
        SessionStatus.READY,
    )
    _ITEMS = (SessionStatus.CREATED, SessionStatus.READY)

    def audio_append(self, pcm: bytes) -> list[str]:
        """``realtime.input_audio_buffer.append`` frames for PCM16 LE 24 kHz mono ``pcm``.

        The PCM is cut into 3072-byte pieces, so each message carries at most 4096
        base64 characters and decodes alone [seed][wire]. Only in state READY.
        """
        self._require((SessionStatus.READY,), "audio")
        if len(pcm) % 2:
            raise ProtocolError(f"PCM16 needs whole samples; got {len(pcm)} bytes")
        out = []
        for i in range(0, len(pcm), AUDIO_CHUNK_BYTES):
            b64 = base64.b64encode(pcm[i : i + AUDIO_CHUNK_BYTES]).decode("ascii")
            out.append(
                _dumps({"type": "realtime.input_audio_buffer.append", "data": {"audio": b64}})
            )
        return out

    def history_item(self, text: str) -> str:
        """A replayed user turn: ``conversation.item.create`` [seed][sdk]. After session.created."""
        self._require(self._ITEMS, "history")
        return _user_item(text)

    def text_turn(self, text: str) -> list[str]:
        """A typed user turn the model answers: the item, then ``response.create`` [hotel]."""
        self._require(self._ITEMS, "a text turn")
        return [_user_item(text), *self._response_create()]

    def input_text(self, text: str) -> str:
        """``realtime.input_text``. INFERRED payload ``{"data": {"content": T}}``: every v2
        client defines the type but none shows its payload [seed]. Prefer :meth:`text_turn`."""
        self._require(self._ITEMS, "input_text")
        return _dumps({"type": "realtime.input_text", "data": {"content": text}})

    def input_image(self, image: bytes, *, mime_type: str = "image/jpeg", reply: bool) -> str:
        """``realtime.input_image`` with a data URL; ``reply`` 1 asks for an immediate reply
        [samples: Android, Flutter, React Native]."""
        self._require(self._ITEMS, "an image")
        url = f"data:{mime_type};base64,{base64.b64encode(image).decode('ascii')}"
        return _dumps(
            {"type": "realtime.input_image", "data": {"content": url, "reply": 1 if reply else 0}}
        )

    def declare_tools(self, tools: Sequence[ToolDeclaration]) -> str:
        """``realtime.input_function_call``; ``data.content`` is a JSON *string* holding the list
        of functions [sdk][ios]. Allowed from socket open on (the SDK sends it first)."""
        self._require(self._OPEN, "the tool declaration")
        content = json.dumps([_function(t) for t in tools], ensure_ascii=False)
        return _dumps({"type": "realtime.input_function_call", "data": {"content": content}})

    def session_update(
        self,
        tools: Sequence[ToolDeclaration],
        *,
        instructions: str | None = None,
        voice: str | None = None,
    ) -> str:
        """The OpenAI-style ``session.update`` the hotel client sends after session.created
        [hotel]. Optional; the console normally holds this configuration [seed]."""
        self._require(self._ITEMS, "session.update")
        session: dict[str, Any] = {}
        if instructions is not None:
            session["instructions"] = instructions
        session["turn_detection"] = {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 600,
        }
        if voice is not None:
            session["voice"] = voice
        session["tools"] = [_function(t) for t in tools]
        return _dumps({"type": "session.update", "session": session})

    def function_call_output(self, call_id: str, output: str) -> list[str]:
        """The tool result: ``conversation.item.create`` with a ``function_call_output`` item
        (``output`` is a string; JSON-encode objects), then ``response.create`` [hotel]."""
        self._require(self._ITEMS, "a function call output")
        item = {"type": "function_call_output", "call_id": call_id, "output": output}
        return [
            _dumps({"type": "conversation.item.create", "item": item}),
            *self._response_create(),
        ]

    def webrtc_answer(self, sdp: str) -> str:
        """``webrtc.signaling.answer`` with ``data.sdp = {type: "answer", sdp}`` [sdk][hotel]."""
        self._require(self._OPEN, "a WebRTC answer")
        return _dumps(
            {"type": "webrtc.signaling.answer", "data": {"sdp": {"type": "answer", "sdp": sdp}}}
        )

    def webrtc_offer(self, sdp: str) -> str:
        """``webrtc.signaling.offer`` (client renegotiation) [hotel]."""
        self._require(self._OPEN, "a WebRTC offer")
        return _dumps(
            {"type": "webrtc.signaling.offer", "data": {"sdp": {"type": "offer", "sdp": sdp}}}
        )

    def ice_candidate(
        self, candidate: str, sdp_mid: str | None, sdp_mline_index: int | None
    ) -> str:
        """``webrtc.signaling.iceCandidate``; ``sdpMid`` "" when absent, as iOS sends [ios]."""
        self._require(self._OPEN, "an ICE candidate")
        cand = {
            "candidate": candidate,
            "sdpMid": sdp_mid if sdp_mid is not None else "",
            "sdpMLineIndex": sdp_mline_index,
        }
        return _dumps({"type": "webrtc.signaling.iceCandidate", "data": {"candidate": cand}})


def _user_item(text: str) -> str:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return _dumps({"type": "conversation.item.create", "item": item})


def _function(tool: ToolDeclaration) -> dict[str, Any]:
    params = dict(tool.parameters) if tool.parameters else {}
    params.setdefault("type", "object")
    params.setdefault("properties", {})
    params.setdefault("required", [])
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": params,
    }


def _ice_servers(raw: Any) -> tuple[ev.IceServerInfo, ...]:
    """``iceServers``: a list of ``{urls: str | [str], username?, credential?}`` [seed][sdk]."""
    if not isinstance(raw, list):
        return ()
    out = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            continue
        urls = entry.get("urls", entry.get("url"))
        if isinstance(urls, str):
            url_list: tuple[str, ...] = (urls,)
        elif isinstance(urls, list):
            url_list = tuple(u for u in urls if isinstance(u, str))
        else:
            continue
        user, cred = entry.get("username"), entry.get("credential")
        out.append(
            ev.IceServerInfo(
                urls=url_list,
                username=user if isinstance(user, str) else None,
                credential=cred if isinstance(cred, str) else None,
            )
        )
    return tuple(out)
