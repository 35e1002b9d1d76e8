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
    "encode_jpeg",
    "end_conversation",
    "get_current_time",
    "set_volume",
    "take_photo",
]

PHOTO_MAX_WIDTH = 960  # the vendor's samples send about 960 x 540
PHOTO_MAX_HEIGHT = 540
PHOTO_JPEG_QUALITY = 70


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
    frame = ctx.camera.read()
    jpeg, width, height = encode_jpeg(frame)
    ctx.publish(topics.INPUT_IMAGE, ImageInput(mime_type="image/jpeg", reply=False), jpeg)
    return {
        "ok": True,
        "width": width,
        "height": height,
        "note": "The photo was sent to you as an image; describe what you see.",
    }


def encode_jpeg(
    frame: Any,
    *,
    max_width: int = PHOTO_MAX_WIDTH,
    max_height: int = PHOTO_MAX_HEIGHT,
    quality: int = PHOTO_JPEG_QUALITY,
) -> tuple[bytes, int, int]:
    """A BGR frame as JPEG bytes, scaled down to fit ``max_width`` x ``max_height``."""
    import cv2  # late: importing OpenCV costs ~100 ms and only this tool needs it
    import numpy as np

    image = np.asarray(frame)
    if image.ndim not in (2, 3) or image.size == 0:
        raise DeviceError(f"the camera returned an unusable frame of shape {image.shape}")
    height, width = image.shape[:2]
    scale = min(1.0, max_width / width, max_height / height)
    if scale < 1.0:
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DeviceError("JPEG encoding of the camera frame failed")
    return bytes(buf), width, height


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
