"""``navtalk-agent emulator``: flags, their validation, and the run until a signal.

Exit status: 0 after a clean stop; 1 when ``strict_fail`` is on and a client broke the
protocol (the conformance log is not empty); 2 for a configuration error (a bad port, a
missing or invalid ``--script``: :class:`agent.emulator.script.ScriptError`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agent.emulator.script import Script
from agent.errors import ConfigError
from agent.navtalk.settings import EmulatorSettings

if TYPE_CHECKING:
    from agent.config import Settings

__all__ = ["add_cli_arguments", "check_port", "main", "parse_port", "settings_from_args"]

EXIT_CONFORMANCE = 1


def check_port(value: int, what: str = "port") -> int:
    """``value`` if it is a TCP port number (0..65535, 0 = any free port); else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{what} must be an integer from 0 to 65535, not {value!r}")
    return value


def parse_port(text: str) -> int:
    """argparse type for ``--port``: one clear line for anything but 0..65535."""
    try:
        return check_port(int(text, 10))
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(
            f"invalid port {text!r}: an integer from 0 to 65535 (0 = any free port)"
        ) from None


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``navtalk-agent emulator``; each overrides the [emulator] setting of the config."""
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 8765; 0 = any)")
    parser.add_argument("--tls", action="store_true", default=None, help="wss:// (self-signed)")
    parser.add_argument("--script", metavar="FILE", help="conversation rules (TOML)")
    parser.add_argument("--no-webrtc", action="store_true", help="do not offer WebRTC")
    parser.add_argument("--pace", type=float, help="audio pacing factor (1.0 = real time)")
    parser.add_argument(
        "--recognizer",
        choices=["speech", "order"],
        help="speech: recognize the script's lines (default); order: the "
        "n-th utterance is the n-th line",
    )
    strict = parser.add_mutually_exclusive_group()
    strict.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="a protocol violation closes the socket and fails the run (exit 1; the default)",
    )
    strict.add_argument(
        "--lenient", action="store_true", default=None, help="log protocol violations only"
    )
    parser.add_argument(
        "--conformance-log", metavar="FILE", help="append each protocol violation as a JSON line"
    )
    faults = parser.add_argument_group("fault injection (also by license tokens: see faults.py)")
    faults.add_argument("--reject-license", action="store_true", help="fail every connection")
    faults.add_argument("--insufficient-balance", action="store_true", help="no balance")
    faults.add_argument("--duplicate-name", action="store_true", help="duplicate-name warning")
    faults.add_argument("--drop-after", type=float, metavar="S", help="drop each session after S s")
    faults.add_argument("--malformed", action="store_true", help="send malformed frames")


def settings_from_args(args: argparse.Namespace, base: EmulatorSettings) -> EmulatorSettings:
    changes: dict[str, Any] = {}
    for attr, key in (
        ("host", "host"),
        ("port", "port"),
        ("script", "script_path"),
        ("pace", "pace"),
        ("drop_after", "drop_after_s"),
        ("recognizer", "recognizer"),
        ("conformance_log", "conformance_log_path"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            changes[key] = value
    for attr, key in (
        ("tls", "tls"),
        ("reject_license", "reject_license"),
        ("insufficient_balance", "insufficient_balance"),
        ("duplicate_name", "duplicate_name_warning"),
        ("malformed", "malformed_frames"),
        ("strict", "strict_fail"),
    ):
        if getattr(args, attr, None):
            changes[key] = True
    if getattr(args, "lenient", None):
        changes["strict_fail"] = False
    if getattr(args, "no_webrtc", False):
        changes["webrtc"] = False
    return replace_struct(base, changes)


def replace_struct(base: EmulatorSettings, changes: Mapping[str, Any]) -> EmulatorSettings:
    import msgspec

    # Through msgspec.convert so the Meta constraints (port range, ...) are checked.
    merged = msgspec.structs.asdict(base) | dict(changes)
    try:
        return msgspec.convert(merged, EmulatorSettings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"emulator: {exc}") from None


def main(args: argparse.Namespace, settings: Settings) -> int:
    """``navtalk-agent emulator``: serve until SIGTERM/SIGINT. Returns the exit code."""
    from agent.emulator.server import PATH, Emulator

    emu_settings = settings_from_args(args, settings.emulator)
    check_port(emu_settings.port, "emulator port")
    script = Script.load(emu_settings.script_path or None)  # ScriptError: one line, exit 2

    async def until_signal() -> int:
        # SIGTERM (the supervisor, systemd) and SIGINT stop the server cleanly.
        loop = asyncio.get_running_loop()
        emulator = Emulator(emu_settings, script=script)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await emulator.start()
        try:
            scheme = "wss" if emu_settings.tls else "ws"
            print(
                f"NavTalk emulator on {scheme}://{emu_settings.host}:{emulator.port}{PATH}"
                "?license=ANY&name=navtalk.Leo",
                flush=True,
            )
            await stop.wait()
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await emulator.close()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping: a second SIGTERM is moot
        if emulator.failed:
            print(
                f"navtalk-agent emulator: {len(emulator.violations)} conformance "
                "violation(s); see the log",
                flush=True,
            )
            return EXIT_CONFORMANCE
        return 0

    return asyncio.run(until_signal())
