"""Start-up checks: what can be known wrong before a process starts is found here, once.

``navtalk-agent config check`` and ``navtalk-agent run`` (and ``service NAME``) call
:func:`check`; a problem stops them with exit status 2 and **one line** naming the key,
the value and what is wrong, instead of a service that crash-loops with tracebacks::

    navtalk-agent: error: mic.wav_path = 'out/guest.wav': no such file (mic.backend = "file")

Checked, for the services that will run:

- session: the license is in the environment unless the embedded emulator is the server;
  the URL is ``ws://``/``wss://`` with a host and a valid port; the embedded emulator's port
  is known (``port = 0`` is resolved by the supervisor, not by a session alone).
- emulator (embedded): its port is free, its script file exists.
- mic / speaker: the WAV of the ``file`` mic exists and is 16-bit PCM; a named (or the
  default) ``sounddevice`` device exists; the ``software_aec`` factory's module exists.
- display: a ``window`` needs ``$DISPLAY``; the idle image exists.
- tools: every ``tools.modules`` entry is a file or an importable module name (found, not
  run: a plugin's code runs only in the tools process); the camera's image/video file.
- supervisor: the metrics port is free; ``tcp://`` bus endpoints have a valid port.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
import urllib.parse
import wave
from collections.abc import Iterable, Mapping
from pathlib import Path

from agent.config import PlaneEndpoints, Settings
from agent.errors import ConfigError, DeviceError
from agent.navtalk.settings import LICENSE_ENV

__all__ = ["check", "problems", "services_to_run"]


def services_to_run(settings: Settings, only: Iterable[str] | None = None) -> list[str]:
    """The processes ``run`` starts: the embedded emulator, then the enabled services."""
    wanted = None if only is None else set(only)
    names = ["emulator"] if settings.emulator.embedded else []
    for name in settings.supervisor.services:
        if (wanted is None or name in wanted) and getattr(settings, name).enabled:
            names.append(name)
    return names


def check(
    settings: Settings,
    services: Iterable[str],
    *,
    environ: Mapping[str, str] | None = None,
    devices: bool = True,
) -> None:
    """Raise one :class:`ConfigError` listing every problem (``; ``-separated, one line)."""
    found = problems(settings, services, environ=environ, devices=devices)
    if found:
        where = f"{settings.source}: " if settings.source else ""
        raise ConfigError(where + "; ".join(found))


def problems(
    settings: Settings,
    services: Iterable[str],
    *,
    environ: Mapping[str, str] | None = None,
    devices: bool = True,
) -> list[str]:
    """Every problem found for ``services`` (names as in ``supervisor.services``, plus
    ``"emulator"`` and ``"supervisor"``). ``devices=False`` skips the audio device lookup."""
    env = os.environ if environ is None else environ
    names = set(services)
    out: list[str] = []
    if "session" in names:
        out += _session(settings, env, emulator_here="emulator" in names)
        if "face" in settings.session.start_triggers and not settings.camera.enabled:
            out.append('session.start_triggers has "face" but camera.enabled = false')
    if "camera" in names and settings.camera.backend == "null":
        out.append('camera.enabled = true needs camera.backend = "opencv" or "image"')
    if "emulator" in names:
        out += _emulator(settings)
    if "mic" in names:
        out += _mic(settings, devices)
    if "speaker" in names:
        out += _speaker(settings, devices)
    if "display" in names:
        out += _display(settings, env)
    if "tools" in names:
        out += _tools(settings)
    if "supervisor" in names:
        out += _supervisor(settings)
    return out


# --- per service ---------------------------------------------------------------------------


def _session(settings: Settings, env: Mapping[str, str], *, emulator_here: bool) -> list[str]:
    emu = settings.emulator
    if emu.embedded:
        if emu.port == 0 and not emulator_here:
            return [
                "emulator.port = 0 with emulator.embedded = true: a session started alone "
                "cannot know the port; set a fixed port (the supervisor resolves 0 itself)"
            ]
        return []  # the session talks to the embedded emulator, which needs no license
    out = []
    url = settings.navtalk.url
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        out.append(f"navtalk.url = {url!r}: expected ws://HOST/... or wss://HOST/...")
    elif port is not None and not 0 < port <= 65535:
        out.append(f"navtalk.url = {url!r}: the port must be 1..65535")
    if not env.get(LICENSE_ENV, "").strip():
        out.append(
            f"{LICENSE_ENV} is not set: the session needs the NavTalk license for "
            f"{parts.hostname or url} (only the embedded emulator runs without one)"
        )
    return out


def _emulator(settings: Settings) -> list[str]:
    emu = settings.emulator
    out = []
    if emu.script_path and not Path(emu.script_path).expanduser().is_file():
        out.append(f"emulator.script_path = {emu.script_path!r}: no such file")
    if emu.port:
        taken = _port_taken(emu.host, emu.port)
        if taken:
            out.append(f"emulator.port = {emu.port}: cannot listen on {emu.host}:{emu.port} "
                       f"({taken}); pick a free port, or 0 for any")  # fmt: skip
    return out


def _mic(settings: Settings, devices: bool) -> list[str]:
    mic = settings.mic
    out = []
    if mic.backend == "file":
        if not mic.wav_path:
            out.append('mic.wav_path is empty (mic.backend = "file" plays a WAV)')
        else:
            problem = _wav_problem(Path(mic.wav_path).expanduser())
            if problem:
                out.append(f'mic.wav_path = {mic.wav_path!r}: {problem} (mic.backend = "file")')
    elif mic.backend == "sounddevice" and devices:
        out += _device("mic", mic.device, "input")
    if mic.echo_mode == "software_aec":
        module, _, attr = mic.aec_factory.partition(":")
        if not module or not attr:
            out.append(f"mic.aec_factory = {mic.aec_factory!r}: expected 'package.module:callable'")
        else:
            problem = _module_problem(module)
            if problem:
                out.append(f"mic.aec_factory = {mic.aec_factory!r}: {problem}")
    return out


def _speaker(settings: Settings, devices: bool) -> list[str]:
    spk = settings.speaker
    if spk.backend == "sounddevice" and devices:
        return _device("speaker", spk.device, "output")
    return []


def _display(settings: Settings, env: Mapping[str, str]) -> list[str]:
    d = settings.display
    out = []
    if d.backend == "window" and not env.get("DISPLAY"):
        out.append(
            'display.backend = "window" but DISPLAY is not set (no X screen): '
            'use "file" or "null" on a headless machine'
        )
    if d.idle_image and not Path(d.idle_image).expanduser().is_file():
        out.append(f"display.idle_image = {d.idle_image!r}: no such file")
    return out


def _tools(settings: Settings) -> list[str]:
    out = []
    for spec in settings.tools.modules:
        target = spec.partition(":")[0]
        if target.endswith(".py") or "/" in target:
            if not Path(target).expanduser().is_file():
                out.append(f"tools.modules: {spec!r}: no such file")
        elif target:
            problem = _module_problem(target)
            if problem:
                out.append(f"tools.modules: {spec!r}: {problem}")
    cam = settings.camera
    if "take_photo" not in settings.tools.disabled_builtins:
        is_file = cam.backend == "image" or (cam.backend == "opencv" and "://" not in cam.path)
        if cam.backend == "image" and not cam.path:
            out.append('camera.path is empty (camera.backend = "image" shows a file)')
        elif is_file and cam.path and not Path(cam.path).expanduser().is_file():
            out.append(f"camera.path = {cam.path!r}: no such file")
    return out


def _supervisor(settings: Settings) -> list[str]:
    sup = settings.supervisor
    out = []
    if sup.metrics_port:
        taken = _port_taken(sup.metrics_host, sup.metrics_port)
        if taken:
            out.append(f"supervisor.metrics_port = {sup.metrics_port}: cannot serve metrics on "
                       f"{sup.metrics_host}:{sup.metrics_port} ({taken}); "
                       "set a free port, or 0 for none")  # fmt: skip
    for plane_name, plane in (("control", settings.bus.control), ("media", settings.bus.media)):
        out += _endpoint_ports(plane_name, plane)
    return out


# --- helpers -------------------------------------------------------------------------------


def _port_taken(host: str, port: int) -> str:
    """Why ``host:port`` cannot be listened on ("" when it can)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "in use"
            return exc.strerror or str(exc)
    return ""


def _endpoint_ports(plane_name: str, plane: PlaneEndpoints) -> list[str]:
    out = []
    for key in ("publish", "subscribe"):
        endpoint: str = getattr(plane, key)
        if not endpoint.startswith("tcp://"):
            continue
        port_text = endpoint.rsplit(":", 1)[-1]
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            out.append(f"bus.{plane_name}.{key} = {endpoint!r}: the port must be 1..65535")
    return out


def _wav_problem(path: Path) -> str:
    if not path.is_file():
        return "no such file"
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                return f"{8 * w.getsampwidth()}-bit samples; need 16-bit PCM"
            if w.getnframes() == 0:
                return "holds no audio"
    except (OSError, EOFError, wave.Error) as exc:
        return f"not a WAV file ({exc})"
    return ""


def _module_problem(name: str) -> str:
    """Why module ``name`` cannot be imported ("" when it is found). Not executed: only
    its parent packages are imported, as ``importlib.util.find_spec`` does."""
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        return f"cannot import {name!r} ({exc})"
    return "" if found is not None else f"no module named {name!r}"


def _device(section: str, spec: str, kind: str) -> list[str]:
    from hardware.audio import resolve_device  # late: PortAudio scans the devices at import

    try:
        resolve_device(spec or None, "input" if kind == "input" else "output")
    except DeviceError as exc:
        return [f"{section}.device = {spec!r}: {exc}"]
    return []
