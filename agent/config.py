"""Configuration: TOML profiles loaded into one frozen, typed tree.

Every setting has a default, so a profile lists only what it changes
(``config/default.toml`` lists and explains every one). A bad value stops the
start with one :class:`~agent.errors.ConfigError` that names the file, the
key, the value and what is allowed::

    config/robot.toml: mic.vad_aggressiveness = 7: Expected `int` <= 3

Secrets (the NavTalk license) are read only from the environment
(``NAVTALK_LICENSE``), never from a file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from agent.audio.settings import MicSettings, SpeakerSettings
from agent.errors import ConfigError
from agent.navtalk.settings import (
    LICENSE_ENV,
    EmulatorSettings,
    NavTalkSettings,
    SessionSettings,
)
from agent.remote_settings import RemoteSettings
from agent.tools.settings import ToolsSettings
from agent.video.settings import CameraSettings, DisplaySettings

__all__ = [
    "BusSettings",
    "LogSettings",
    "PlaneEndpoints",
    "Settings",
    "SupervisorSettings",
    "default_settings",
    "apply_overrides",
    "bus_toml",
    "load",
    "loads",
]


Endpoint = Annotated[str, msgspec.Meta(pattern=r"^(ipc|tcp|inproc)://.+")]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class PlaneEndpoints(_Section, frozen=True, kw_only=True):
    """One plane of the bus: its proxy's two endpoints and queue bound."""

    publish: Endpoint  # where services' PUB sockets connect (the proxy's XSUB binds here)
    subscribe: Endpoint  # where services' SUB sockets connect (the proxy's XPUB binds here)
    hwm: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)]  # high-water mark, messages


def _ipc(name: str) -> str:
    return f"ipc:///tmp/navtalk-agent/{name}"


class ControlPlane(PlaneEndpoints, frozen=True, kw_only=True):
    """Control plane: events, tool calls, signaling. Large HWM: must not drop."""

    publish: Endpoint = _ipc("control-in")  # where PUB sockets connect (proxy XSUB binds)
    subscribe: Endpoint = _ipc("control-out")  # where SUB sockets connect (proxy XPUB binds)
    hwm: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 100_000  # messages queued per peer


class MediaPlane(PlaneEndpoints, frozen=True, kw_only=True):
    """Media plane: audio frames. Small HWM (~2 s of 20 ms frames): drops when a reader lags."""

    publish: Endpoint = _ipc("media-in")  # where PUB sockets connect (proxy XSUB binds)
    subscribe: Endpoint = _ipc("media-out")  # where SUB sockets connect (proxy XPUB binds)
    hwm: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 100  # messages queued per peer


class BusSettings(_Section, frozen=True, kw_only=True):
    """The ZeroMQ bus: ipc:// on one board, tcp:// to spread processes over boards."""

    control: ControlPlane = ControlPlane()
    media: MediaPlane = MediaPlane()


class SupervisorSettings(_Section, frozen=True, kw_only=True):
    """The supervisor (navtalk-agent run): heartbeats, restarts, pinning, metrics."""

    heartbeat_interval_s: PositiveFloat = 1.0  # how often each service says it is alive
    heartbeat_timeout_s: PositiveFloat = 6.0  # silent this long => restarted
    startup_grace_s: PositiveFloat = 20.0  # time a new process gets before its first heartbeat
    restart_initial_s: PositiveFloat = 0.5  # first restart delay; doubles each time
    restart_max_s: PositiveFloat = 15.0  # restart delay cap
    # A process in service (heartbeats) this long before it died is restarted at once (no
    # backoff), and its death does not count towards the crash-loop breaker.
    restart_stable_s: PositiveFloat = 5.0
    crash_loop_restarts: Annotated[int, msgspec.Meta(ge=1)] = 5  # this many quick deaths ...
    crash_loop_window_s: PositiveFloat = 60.0  # ... within this window => pause its restarts
    crash_loop_cooldown_s: PositiveFloat = 60.0  # ... for this long, then try again
    # A service not running for this long (crash-looping, or silent) ends the whole run with
    # exit 1, so that systemd (Restart=on-failure) restarts the agent. 0 = never.
    down_limit_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    stop_timeout_s: PositiveFloat = 6.0  # SIGTERM -> SIGKILL grace on shutdown
    # Fork services from a process that imported them already (agent.apps.zygote): restarts in
    # ~0.2 s instead of seconds of imports. false: every child is a new interpreter.
    zygote: bool = True
    # Pin processes to CPU cores, e.g. { mic = [0], display = [1] }. Empty: no pinning.
    cpu_affinity: dict[str, list[Annotated[int, msgspec.Meta(ge=0)]]] = {}
    # Prometheus metrics endpoint of the supervisor (0 = off). Bound to metrics_host.
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    metrics_host: str = "127.0.0.1"  # address of the metrics endpoint (keep it on loopback)
    # Order in which services start (each also needs its section's `enabled = true`).
    services: tuple[Literal["tools", "speaker", "display", "mic", "camera", "session"], ...] = (
        "tools",
        "speaker",
        "display",
        "mic",
        "camera",
        "session",
    )


class LogSettings(_Section, frozen=True, kw_only=True):
    """Logging of every process."""

    # Level of every process's log: DEBUG, INFO, WARNING or ERROR.
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Directory for one log file per process ("" = stderr only).
    dir: str = ""
    # Per-logger levels, e.g. { "aioice" = "WARNING" }.
    levels: dict[str, Literal["DEBUG", "INFO", "WARNING", "ERROR"]] = msgspec.field(
        default_factory=lambda: {"aioice": "WARNING", "aiortc": "WARNING", "websockets": "WARNING"}
    )
    # Line format: "text" (dated lines) or "json" (one object per line, for log shippers).
    format: Literal["text", "json"] = "text"
    # A log file is rotated when it reaches this many bytes ...
    max_file_bytes: Annotated[int, msgspec.Meta(ge=10_000)] = 10_000_000
    # ... and this many rotated files are kept beside it.
    keep_files: Annotated[int, msgspec.Meta(ge=0, le=100)] = 5
    # The same warning/error again within this many seconds is counted, not repeated (0 = off).
    repeat_window_s: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    # "auto": to journald when systemd started us (JOURNAL_STREAM is our stderr); "off": never.
    journal: Literal["auto", "off"] = "auto"


class Settings(_Section, frozen=True, kw_only=True):
    bus: BusSettings = BusSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    log: LogSettings = LogSettings()
    navtalk: NavTalkSettings = NavTalkSettings()
    session: SessionSettings = SessionSettings()
    emulator: EmulatorSettings = EmulatorSettings()
    mic: MicSettings = MicSettings()
    speaker: SpeakerSettings = SpeakerSettings()
    display: DisplaySettings = DisplaySettings()
    camera: CameraSettings = CameraSettings()
    tools: ToolsSettings = ToolsSettings()
    remote: RemoteSettings = RemoteSettings()
    # The file these settings came from ("" = built-in defaults). Set by load(); not a TOML key.
    source: str = ""


def bus_toml(bus: BusSettings) -> str:
    """The ``[bus.*]`` sections of a profile for ``bus`` (tests, benchmarks, deployment tools
    that write a profile for processes on other boards)."""
    out = []
    for name, plane in (("control", bus.control), ("media", bus.media)):
        out.append(
            f'[bus.{name}]\npublish = "{plane.publish}"\nsubscribe = "{plane.subscribe}"\n'
            f"hwm = {plane.hwm}\n"
        )
    return "\n".join(out)


def default_settings() -> Settings:
    return Settings()


_PATH_RE = re.compile(r"`\$((?:\.[A-Za-z0-9_\-]+|\[\d+\]|\[\.\.\.\])*)`")
_STEP_RE = re.compile(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]|\[(\.\.\.)\]")


def _lookup(raw: Any, steps: list[tuple[str, str, str]], shown: str = "") -> tuple[str, bool, Any]:
    """Walk ``.a.b[2]`` in ``raw`` -> (dotted key, found, value).

    msgspec writes a dict key as ``[...]``; the first key whose rest resolves is named.
    """
    if not steps:
        return shown, True, raw
    (key, index, _anykey), rest = steps[0], steps[1:]
    try:
        if key:
            return _lookup(raw[key], rest, f"{shown}.{key}" if shown else key)
        if index:
            return _lookup(raw[int(index)], rest, f"{shown}[{index}]")
        for k in raw:
            found = _lookup(raw[k], rest, f"{shown}.{k}")
            if found[1]:
                return found
    except (KeyError, IndexError, TypeError):
        pass
    return shown, False, None


def _explain(exc: msgspec.ValidationError, raw: dict[str, Any], origin: str) -> ConfigError:
    text = str(exc)
    match = _PATH_RE.search(text)
    path = match.group(1) if match else ""
    reason = re.sub(r"\s*-\s*at\s*$", "", text[: match.start()]) if match else text
    key, found, value = _lookup(raw, _STEP_RE.findall(path))
    key = key or path.lstrip(".") or "(top level)"
    unknown = re.match(r"Object contains unknown field `([^`]+)`", reason)
    if unknown:
        key = f"{key}.{unknown.group(1)}" if path else unknown.group(1)
        return ConfigError(f"{origin}: unknown setting {key!r} (see config/default.toml)")
    shown = f" = {value!r}" if found and path else ""
    return ConfigError(f"{origin}: {key}{shown}: {reason}")


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> None:
    """Apply ``section.key=value`` overrides (the CLI's ``--set``) to a raw TOML dict.

    The value is read as a TOML value (``5``, ``true``, ``[0, 1]``, ``"x"``); anything
    that is not valid TOML is taken as a plain string (``display.backend=window``).
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*", key):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. display.backend=window")
        try:
            value: Any = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[leaf] = value


def loads(text: str, origin: str = "<config>", overrides: Sequence[str] = ()) -> Settings:
    """Parse TOML text into Settings, raising ConfigError with the key on any problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc
    apply_overrides(raw, overrides)
    if "source" in raw:
        raise ConfigError(f"{origin}: unknown setting 'source' (see config/default.toml)")
    for secret in ("license", "navtalk_license"):
        nav = raw.get("navtalk")
        if secret in raw or (isinstance(nav, dict) and secret in nav):
            raise ConfigError(
                f"{origin}: the license must not be stored in a file; "
                f"set the {LICENSE_ENV} environment variable instead"
            )
    try:
        settings = msgspec.convert(raw, Settings, strict=True)
    except msgspec.ValidationError as exc:
        raise _explain(exc, raw, origin) from None
    return msgspec.structs.replace(settings, source=origin)


def load(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> Settings:
    """Load a TOML profile (``None``: the built-in defaults), then apply ``--set`` overrides."""
    if path is None:
        return loads("", origin="", overrides=overrides)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "TOML files are UTF-8"
        ) from None
    return loads(text, origin=str(p), overrides=overrides)


def navtalk_license() -> str:
    """The NavTalk license from the environment ("" when unset)."""
    return os.environ.get(LICENSE_ENV, "").strip()
