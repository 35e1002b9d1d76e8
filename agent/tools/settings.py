"""Settings of the tools service (the ``[tools]`` section)."""

from __future__ import annotations

import zoneinfo
from typing import Annotated, Literal

import msgspec

BuiltinName = Literal["get_current_time", "end_conversation", "take_photo", "set_volume"]
ToolName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class ToolsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True  # run the tools service at all
    # Load tools from installed packages' entry points (group "navtalk_agent.tools").
    entry_points: bool = True
    # Extra tool modules: dotted names ("mycompany.tools", "pkg.mod:attr") or paths to .py files.
    # Every Tool (made with @tool) found in a module is loaded.
    modules: tuple[str, ...] = ()
    # Tools declared to NavTalk and allowed to run, by name. Empty = every loaded tool.
    allow: tuple[ToolName, ...] = ()
    # Built-in tools to leave out, e.g. ["take_photo"] on a device without a camera.
    disabled_builtins: tuple[BuiltinName, ...] = ()
    # Timeout of a tool that does not set its own (@tool(timeout_s=...)), seconds.
    default_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0
    # Threads that run sync handlers. A sync handler that never returns keeps its thread
    # (Python cannot kill a thread), so this also caps how many stuck handlers there can be.
    pool_size: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    # Largest tool output (JSON characters) sent back to the model; larger = bad_output error.
    max_output_chars: Annotated[int, msgspec.Meta(ge=64, le=1_000_000)] = 16_384
    # IANA time zone for get_current_time, e.g. "Europe/Paris". "" = the device's local zone.
    timezone: str = ""

    def __post_init__(self) -> None:
        if self.timezone:
            try:
                zoneinfo.ZoneInfo(self.timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(
                    f"unknown time zone {self.timezone!r} (use an IANA name like 'Europe/Paris')"
                ) from exc
