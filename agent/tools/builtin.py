"""The tools every device has. Each can be left out with ``tools.disabled_builtins``."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Annotated, Any

import msgspec

from agent import topics
from agent.errors import DeviceError, ErrorCategory, ToolError
from agent.messages import ImageInput, SessionControl, SetVolume
from agent.tools.plugin import Tool, ToolContext, tool

__all__ = [
    "BUILTIN_TOOLS",
    "end_conversation",
    "get_current_time",
    "set_volume",
    "take_photo",
]


@tool
def get_current_time(ctx: ToolContext) -> dict[str, str]:
    """Get the current local date and time on this device, with its time zone.

    Use it whenever the guest asks for the time, the date or the day of the week.
    """
    name = ctx.settings.tools.timezone
    now = dt.datetime.now(zoneinfo.ZoneInfo(name)) if name else dt.datetime.now().astimezone()
    return {
        "iso": now.isoformat(timespec="seconds"),
        "human": f"{now:%A} {now.day} {now:%B %Y}, {now:%H:%M}",
        "timezone": name or now.tzname() or "local",
        "utc_offset": now.strftime("%z"),
    }


@tool
def end_conversation(ctx: ToolContext, reason: str = "") -> dict[str, Any]:
    """End the conversation once you have finished speaking.

    Call it when the guest says goodbye or asks you to stop. Say your goodbye in the
    same turn: the session closes after the avatar finishes speaking.

    Args:
        reason: Why the conversation ends, in a few words (for the device's logs).
    """
    ctx.publish(
        topics.CONTROL_SESSION, SessionControl(action="end_after_speech", reason=reason[:200])
    )
    return {"ok": True, "note": "The conversation will end after you finish speaking."}


@tool(timeout_s=10)
def take_photo(ctx: ToolContext) -> dict[str, Any]:
    """Take a photo with the device's camera and look at it.

    Use it when the guest asks you to look at something or at them. The photo is sent
    to you as an image right after this result.
    """
    from hardware.camera import encode_jpeg  # late: importing OpenCV takes ~100 ms

    try:
        frame = ctx.camera.read()
    except DeviceError as exc:  # its text names the device: for the log, not the model
        raise ToolError("the camera is not available", ErrorCategory.DEVICE) from exc
    if frame.ndim not in (2, 3) or frame.size == 0:
        raise DeviceError(f"the camera returned an unusable frame of shape {frame.shape}")
    cam = ctx.settings.camera
    jpeg = encode_jpeg(frame, quality=cam.jpeg_quality, width=cam.width)
    height, width = frame.shape[:2]
    if cam.width and width > cam.width:
        width, height = cam.width, max(1, round(height * cam.width / width))
    # Published before the result, on the same socket: the session sees the image first.
    ctx.publish(topics.INPUT_IMAGE, ImageInput(mime_type="image/jpeg", reply=False), jpeg)
    return {
        "ok": True,
        "width": width,
        "height": height,
        "note": "The photo was sent to you as an image; describe what you see.",
    }


@tool
def set_volume(
    ctx: ToolContext,
    percent: Annotated[int, msgspec.Meta(ge=0, le=100)],
) -> dict[str, Any]:
    """Set the speaker volume of this device.

    Args:
        percent: The new volume, from 0 (mute) to 100 (loudest).
    """
    if not 0 <= percent <= 100:  # validated already; kept for direct calls
        raise ToolError("percent must be between 0 and 100", ErrorCategory.INVALID_ARGUMENTS)
    ctx.publish(topics.CONTROL_VOLUME, SetVolume(level=percent / 100))
    return {"ok": True, "volume_percent": percent}


BUILTIN_TOOLS: tuple[Tool, ...] = (get_current_time, end_conversation, take_photo, set_volume)
