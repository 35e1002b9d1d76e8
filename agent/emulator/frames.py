"""Server events the brain builds, as plain functions (no state): function calls, the
active-response error, the tool-reply sentence, image sizes and tool-catalog keys."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from agent.emulator.script import Script, render, render_tool_reply

__all__ = [
    "ACTIVE_RESPONSE_CODE",
    "active_response_error",
    "catalog_key",
    "function_call_frames",
    "image_size",
    "tool_reply",
]


def function_call_frames(
    *, call_id: str, response_id: str, item_id: str, event_id: str, name: str, arguments: str
) -> tuple[dict[str, Any], ...]:
    """``function_call_arguments.delta`` x 2 then ``.done`` with both ``data`` and the
    upstream OpenAI event as ``raw_data`` [ios][wire]."""
    half = len(arguments) // 2
    frames: list[dict[str, Any]] = [
        {
            "type": "realtime.response.function_call_arguments.delta",
            "data": {"call_id": call_id, "delta": piece, "response_id": response_id},
        }
        for piece in (arguments[:half], arguments[half:])
    ]
    raw = {
        "type": "response.function_call_arguments.done",
        "event_id": event_id,
        "response_id": response_id,
        "item_id": item_id,
        "output_index": 0,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
    frames.append(
        {
            "type": "realtime.response.function_call_arguments.done",
            "data": {"call_id": call_id, "name": name, "arguments": arguments},
            "raw_data": raw,
        }
    )
    return tuple(frames)


ACTIVE_RESPONSE_CODE = "conversation_already_has_active_response"


def active_response_error(active_response_id: str, event_id: str) -> dict[str, Any]:
    """The answer to ``response.create`` during a response, as OpenAI's realtime API sends
    it (``error`` with ``error.type = "invalid_request_error"`` and
    ``error.code = "conversation_already_has_active_response"``).

    NavTalk mirrors OpenAI's server events under a ``realtime.`` prefix with the payload in
    ``data``, so this is ``realtime.error`` with the OpenAI ``error`` object as ``data`` and
    the upstream event as ``raw_data`` (as the function-call events carry it [ios][wire]).
    UNCERTAIN: no NavTalk source shows an error event; the real service may use another
    name or payload, or drop the request silently. A client must not rely on it: it must
    not send ``response.create`` during a response."""
    error = {
        "type": "invalid_request_error",
        "code": ACTIVE_RESPONSE_CODE,
        "message": "Conversation already has an active response in progress: "
        f"{active_response_id}. Wait until the response is finished before creating a new one.",
        "param": None,
        "event_id": None,
    }
    return {
        "type": "realtime.error",
        "data": error,
        "raw_data": {"type": "error", "event_id": event_id, "error": error},
    }


def tool_reply(script: Script, template: str, output_text: str, args: Mapping[str, Any]) -> str:
    """The sentence spoken for a tool's output (a JSON string, or plain text)."""
    try:
        output: Any = json.loads(output_text)
    except ValueError:
        output = output_text
    if isinstance(output, dict) and "error" in output and len(output) == 1:
        error = output["error"]
        ctx = {"error": error if isinstance(error, dict) else {"message": str(error)}}
        return render(script.tool_error_reply, ctx)
    return render_tool_reply(template, output, args)


def catalog_key(tools: list[Any]) -> str:
    """A canonical form of a tool catalog, to tell a repeated declaration from a new one."""
    return json.dumps(
        sorted(tools, key=lambda t: str(t.get("name")) if isinstance(t, dict) else ""),
        sort_keys=True,
    )


def image_size(data_url: str) -> tuple[int, int]:
    """Width and height of a base64 data-URL image, (0, 0) when it cannot be decoded."""
    import cv2  # the emulator's avatar already needs OpenCV
    import numpy as np

    try:
        raw = np.frombuffer(base64.b64decode(data_url.split(",", 1)[1]), np.uint8)
    except (binascii.Error, ValueError):
        return 0, 0
    img = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    if img is None:
        return 0, 0
    return int(img.shape[1]), int(img.shape[0])
