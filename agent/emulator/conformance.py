"""The conformance log: every client message checked against NAVTALK_PROTOCOL.md.

:func:`check_shape` checks one decoded client frame against the shapes of the protocol's
"Client → server messages" table (type known, required fields present with the right JSON
types, audio chunks of at most 4096 base64 characters). The brain
(:mod:`agent.emulator.brain`) adds the checks that need the connection's history: audio
before ``realtime.session.updated``, items before ``realtime.session.created``, tools
declared twice, a server offer left unanswered past its deadline, a client offer while the
server's offer is unanswered, ``response.create`` while a response is active.

Each finding is a :class:`Violation`; the server logs it (``! conformance`` at WARNING),
keeps it (:attr:`agent.emulator.server.Emulator.violations`), appends it as one JSON object
per line to ``[emulator] conformance_log_path`` when set, and with ``strict_fail`` closes
the socket (1008) and makes the emulator process exit non-zero.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["MAX_AUDIO_CHUNK_CHARS", "Violation", "ViolationKind", "check_shape"]

MAX_AUDIO_CHUNK_CHARS = 4096  # [seed][sdk][hotel]


class ViolationKind(enum.StrEnum):
    NOT_JSON = "not_json"  # not a JSON object with a string "type"
    BINARY_FRAME = "binary_frame"  # clients send only text frames
    UNKNOWN_TYPE = "unknown_type"
    BAD_FIELD = "bad_field"  # a required field is missing or of the wrong type
    AUDIO_CHUNK_TOO_LARGE = "audio_chunk_too_large"  # base64 chunk > 4096 characters
    AUDIO_BEFORE_UPDATED = "audio_before_updated"
    ITEM_BEFORE_CREATED = "item_before_created"
    TOOLS_DECLARED_TWICE = "tools_declared_twice"  # the same catalog again, same connection
    OFFER_UNANSWERED = "offer_unanswered"  # the server's offer had no answer by the deadline
    CLIENT_OFFER_WHILE_OFFER_PENDING = "client_offer_while_offer_pending"
    RESPONSE_WHILE_ACTIVE = "response_while_active"  # response.create during a response


@dataclass(frozen=True, slots=True)
class Violation:
    kind: ViolationKind
    detail: str
    message_type: str = ""  # the client frame's type, "" when there is none
    session_id: str = ""
    at_s: float = 0.0  # the brain's clock (monotonic seconds)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        return d


# type -> (where, {field: expected JSON type(s)}); "data" = in frame["data"], "" = top level
_STR, _INT, _DICT, _LIST = (str,), (int,), (dict,), (list,)
_SHAPES: dict[str, tuple[str, dict[str, tuple[type, ...]]]] = {
    "realtime.input_audio_buffer.append": ("data", {"audio": _STR}),
    "realtime.input_function_call": ("data", {"content": _STR}),
    "realtime.input_image": ("data", {"content": _STR, "reply": _INT}),
    "realtime.input_text": ("data", {"content": _STR}),  # inferred payload
    "realtime.input_config": ("", {"data": _DICT}),  # payload unknown: a data object
    "conversation.item.create": ("", {"item": _DICT}),
    "response.create": ("", {}),
    "session.update": ("", {"session": _DICT}),  # OpenAI shape [hotel]
    "webrtc.signaling.answer": ("data", {"sdp": _DICT}),
    "webrtc.signaling.offer": ("data", {"sdp": _DICT}),
    "webrtc.signaling.iceCandidate": ("data", {"candidate": _DICT}),
}
KNOWN_TYPES = frozenset(_SHAPES)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _need(obj: Mapping[str, Any], key: str, types: tuple[type, ...], where: str) -> str | None:
    if key not in obj:
        return f"{where}{key} is missing"
    value = obj[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = " or ".join(t.__name__ for t in types)
        return f"{where}{key} must be {names}, not {_type_name(value)}"
    return None


def check_shape(frame: Mapping[str, Any]) -> list[tuple[ViolationKind, str]]:
    """Problems with one client frame's shape (empty when it conforms)."""
    kind = frame.get("type")
    if not isinstance(kind, str):
        return [(ViolationKind.NOT_JSON, "no string type")]
    shape = _SHAPES.get(kind)
    if shape is None:
        return [(ViolationKind.UNKNOWN_TYPE, f"unknown message type {kind!r}")]
    where, fields = shape
    problems: list[str] = []
    obj: Mapping[str, Any] = frame
    if where == "data":
        if not isinstance(frame.get("data"), dict):
            return [
                (
                    ViolationKind.BAD_FIELD,
                    f"data must be an object, not {_type_name(frame.get('data'))}",
                )
            ]
        obj = frame["data"]
    prefix = "data." if where == "data" else ""
    for key, types in fields.items():
        if (p := _need(obj, key, types, prefix)) is not None:
            problems.append(p)
    out = [(ViolationKind.BAD_FIELD, p) for p in problems]
    if problems:
        return out
    if kind == "realtime.input_audio_buffer.append" and len(obj["audio"]) > MAX_AUDIO_CHUNK_CHARS:
        out.append(
            (
                ViolationKind.AUDIO_CHUNK_TOO_LARGE,
                f"audio chunk of {len(obj['audio'])} base64 chars (> 4096)",
            )
        )
    elif kind == "realtime.input_image" and obj["reply"] not in (0, 1):
        out.append((ViolationKind.BAD_FIELD, "data.reply must be 0 or 1"))
    elif kind == "conversation.item.create":
        out += [(ViolationKind.BAD_FIELD, p) for p in _item_problems(frame["item"])]
    elif kind.startswith("webrtc.signaling.") and kind != "webrtc.signaling.iceCandidate":
        sdp = obj["sdp"]
        want = kind.rsplit(".", 1)[1]
        if sdp.get("type") != want:
            out.append((ViolationKind.BAD_FIELD, f"data.sdp.type must be {want!r}"))
        if (p := _need(sdp, "sdp", _STR, "data.sdp.")) is not None:
            out.append((ViolationKind.BAD_FIELD, p))
    elif kind == "webrtc.signaling.iceCandidate":
        cand = obj["candidate"]
        if (p := _need(cand, "candidate", _STR, "data.candidate.")) is not None:
            out.append((ViolationKind.BAD_FIELD, p))
        mid, index = cand.get("sdpMid"), cand.get("sdpMLineIndex")
        if mid is not None and not isinstance(mid, str):
            out.append((ViolationKind.BAD_FIELD, "data.candidate.sdpMid must be str or null"))
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            out.append(
                (ViolationKind.BAD_FIELD, "data.candidate.sdpMLineIndex must be int or null")
            )
    return out


def _item_problems(item: Mapping[str, Any]) -> list[str]:
    kind = item.get("type")
    if kind == "message":
        problems = []
        if item.get("role") != "user":
            problems.append("item.role must be 'user' (only user turns are sent)")
        content = item.get("content")
        if not isinstance(content, list) or not content:
            return [*problems, "item.content must be a non-empty list"]
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "input_text":
                problems.append(f"item.content[{i}].type must be 'input_text'")
            elif not isinstance(part.get("text"), str):
                problems.append(f"item.content[{i}].text must be str")
        return problems
    if kind == "function_call_output":
        return [
            p
            for p in (
                _need(item, "call_id", _STR, "item."),
                _need(item, "output", _STR, "item."),
            )
            if p is not None
        ]
    return [f"item.type must be 'message' or 'function_call_output', not {kind!r}"]
