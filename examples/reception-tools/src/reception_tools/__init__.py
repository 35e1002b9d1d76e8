"""Example navtalk-agent tools for a hotel reception robot.

Loaded through the entry point in pyproject.toml (group ``navtalk_agent.tools``):
every ``@tool`` in this module becomes a function the avatar can call.
"""

from __future__ import annotations

import datetime
import json
import unicodedata
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal

import msgspec

from agent import topics
from agent.messages import RobotCommand
from agent.tools import ErrorCategory, ToolContext, ToolError, tool

__all__ = ["lookup_reservation", "turn_head"]


@cache
def _reservations() -> list[dict[str, Any]]:
    """The sample bookings shipped with the package (a real desk would query its PMS)."""
    text = resources.files(__package__).joinpath("reservations.json").read_text("utf-8")
    data: list[dict[str, Any]] = json.loads(text)["reservations"]
    return data


def _fold(text: str) -> str:
    """Lower case without accents: speech transcripts often drop them ("Muller")."""
    decomposed = unicodedata.normalize("NFKD", text.strip().casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


@tool
def lookup_reservation(name: str) -> dict[str, Any]:
    """Find a guest's hotel reservation by family name.

    Use it when a guest arrives or asks about their booking. Confirm the room number
    and dates with the guest; never read out other guests' bookings.

    Args:
        name: The guest's family name, as they said it (accents optional).
    """
    wanted = _fold(name)
    if not wanted:
        raise ToolError(
            "the name is empty; ask the guest for their family name",
            ErrorCategory.INVALID_ARGUMENTS,
        )
    matches = [r for r in _reservations() if _fold(r["name"]) == wanted]
    if not matches:
        return {"found": False, "summary": f"There is no reservation under the name {name}."}
    first = matches[0]
    check_in = datetime.date.fromisoformat(first["check_in"])
    nights = (datetime.date.fromisoformat(first["check_out"]) - check_in).days
    summary = (
        f"Room {first['room']} for {first['guests']} "
        f"guest{'s' if first['guests'] != 1 else ''}, {nights} night{'s' if nights != 1 else ''} "
        f"from {check_in.day} {check_in:%B}{', breakfast included' if first['breakfast'] else ''}."
    )
    return {"found": True, "summary": summary, "reservations": matches}


@tool(timeout_s=5)
async def turn_head(
    ctx: ToolContext,
    direction: Literal["left", "right", "center"],
    degrees: Annotated[int, msgspec.Meta(ge=0, le=90)] = 30,
) -> str:
    """Turn the robot's head, for instance to look at a guest or point at the lifts.

    Args:
        direction: Where to turn: left, right, or back to center.
        degrees: How far to turn, 0 to 90 degrees (ignored for center).
    """
    params = {"direction": direction, "degrees": 0 if direction == "center" else degrees}
    ctx.publish(
        topics.ROBOT_COMMAND,
        RobotCommand(action="turn_head", params_json=json.dumps(params)),
    )
    ctx.logger.info("turn_head %s %d", direction, params["degrees"])
    return f"Turning the head {direction}" + (
        "" if direction == "center" else f" by {degrees} degrees"
    )
