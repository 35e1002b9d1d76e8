"""The ``navtalk-agent`` command.

::

    navtalk-agent run      [--config FILE]            the whole agent under the supervisor
    navtalk-agent service  NAME [--config FILE]       one service alone (systemd, other boards)
    navtalk-agent proxy    [--config FILE]            only the bus proxy
    navtalk-agent tap      [PREFIX...] [--endpoint URI] [--json]   watch the bus
    navtalk-agent emulator [--host H] [--port P] [--tls]           local NavTalk server
    navtalk-agent devices                              list audio devices
    navtalk-agent history clear [--config FILE]        forget the stored conversation
    navtalk-agent history export [--config FILE]       the stored conversation, JSON lines
    navtalk-agent config check FILE | show [--config FILE]
    navtalk-agent install systemd [--user] [--profile kiosk|robot] [--dry-run] [--prefix DIR]
    navtalk-agent gateway | keys | record | replay | topics | say | session | tools | status
                                                       operating from afar: see agent.apps.ops_cli

Exit codes: 0 ok, 1 failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from agent import __version__, topics
from agent.apps import ops_cli
from agent.config import Settings, load
from agent.errors import ConfigError, NavtalkAgentError
from agent.lifeline import die_with_parent
from agent.logs import setup_logging

log = logging.getLogger("agent.apps.cli")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="TOML profile (default: built-in defaults; see config/default.toml)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set display.backend=window (repeatable)",
    )
    p.add_argument(
        "--profile",
        metavar="NAME",
        help="a profile shipped with the package: emulator, kiosk, robot, default",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="navtalk-agent",
        description="Edge agent for a NavTalk realtime digital human on a robot or kiosk.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines as dated text or JSON objects (sets log.format for every process)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the whole agent under the supervisor")
    _add_config(p)
    p.add_argument(
        "--only", nargs="+", metavar="NAME", choices=topics.SERVICES, help="start only these"
    )

    p = sub.add_parser("service", help="run one service alone")
    p.add_argument("name", choices=topics.SERVICES)
    _add_config(p)

    p = sub.add_parser("proxy", help="run only the bus proxy")
    _add_config(p)

    p = sub.add_parser("tap", help="print live bus traffic (payloads as sizes)")
    p.add_argument("prefixes", nargs="*", metavar="TOPIC_PREFIX", help="e.g. navtalk. tool.")
    p.add_argument(
        "--endpoint",
        action="append",
        metavar="URI",
        help="proxy subscribe endpoint(s) to read (default: both planes from the config)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=int, default=0, metavar="N", help="stop after N messages")
    p.add_argument("--duration", type=float, default=0.0, metavar="S", help="stop after S s")
    ops_cli.add_key_args(p)
    _add_config(p)

    ops_cli.add_parsers(sub, _add_config)

    p = sub.add_parser("emulator", help="run the local NavTalk emulator")
    _add_config(p)
    try:
        from agent.emulator import cli as emulator_cli

        emulator_cli.add_cli_arguments(p)
    except ImportError as exc:  # pragma: no cover - only while the emulator is missing
        p.set_defaults(_emulator_missing=str(exc))

    p = sub.add_parser("devices", help="list audio input and output devices")

    p = sub.add_parser("history", help="manage the stored conversation history")
    p.add_argument("action", choices=["clear", "export"])  # export: JSON lines on stdout
    _add_config(p)

    p = sub.add_parser("install", help="install the systemd unit, profile and license file")
    from agent.apps.install import add_cli_arguments as add_install_arguments

    add_install_arguments(p)

    p = sub.add_parser("config", help="check or show a configuration")
    p.add_argument("action", choices=["check", "show"])
    p.add_argument("file", nargs="?", help="the profile to check")
    _add_config(p)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    from agent.resources import apply_profile

    apply_profile(args)  # --profile NAME -> --config <the shipped file>
    path = getattr(args, "file", None) or getattr(args, "config", None)
    return load(path, getattr(args, "overrides", []))


def main(argv: Sequence[str] | None = None) -> int:
    die_with_parent()  # first: a child of the supervisor dies with it (agent.lifeline)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_format and hasattr(args, "overrides"):
        args.overrides.append(f"log.format={args.log_format}")
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # here, so a closed pipe is caught below and not at exit
        return code
    except NavtalkAgentError as exc:
        print(f"navtalk-agent: error: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except BrokenPipeError:
        # `navtalk-agent config show | head`: the reader left; say nothing more (the Python
        # documentation's recipe: point stdout at /dev/null so the exit flush is quiet too).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "install":
        from agent.apps.install import main as install_main

        return install_main(args)
    if cmd == "devices":
        from hardware.audio import list_devices

        print(list_devices())
        return 0
    settings = _settings(args)
    if cmd == "config":
        if args.action == "show":
            print(msgspec.json.format(msgspec.json.encode(settings)).decode())
        else:
            from agent.apps import preflight

            preflight.check(settings, [*preflight.services_to_run(settings), "supervisor"])
            print(f"{settings.source or 'defaults'}: ok")
        return 0
    if cmd == "tap":
        from agent.apps.tap import run_tap

        for endpoint in args.endpoint or ():
            if not _ENDPOINT.fullmatch(endpoint):
                raise ConfigError(
                    f"tap --endpoint {endpoint!r}: expected ipc://PATH or tcp://HOST:PORT "
                    "(a bus proxy's subscribe endpoint)"
                )
        endpoints = args.endpoint or [settings.bus.control.subscribe, settings.bus.media.subscribe]
        return run_tap(
            endpoints,
            args.prefixes,
            sys.stdout,
            as_json=args.json,
            count=args.count,
            duration_s=args.duration,
            keys=ops_cli.client_keys(args),
        )
    if cmd in ops_cli.COMMANDS and cmd not in ops_cli.LOGGED:
        return ops_cli.dispatch(args, settings)
    process = {"service": getattr(args, "name", ""), "run": "supervisor"}.get(cmd, cmd)
    setup_logging(settings.log, process, verbose=args.verbose)
    if cmd == "run":
        from agent.apps import preflight
        from agent.apps.supervisor import Supervisor

        sup = Supervisor(
            settings, config_path=args.config, overrides=args.overrides, only=args.only
        )
        preflight.check(sup.settings, [*sup.children, "supervisor"])
        return asyncio.run(sup.run())
    if cmd == "service":
        from agent.apps import preflight
        from agent.runtime import serve

        preflight.check(settings, [args.name])
        code = asyncio.run(serve(args.name, settings))
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopped: a late SIGTERM is moot
        return code
    if cmd == "proxy":
        from agent.apps.supervisor import run_proxy_forever

        run_proxy_forever(settings)
        return 0
    if cmd == "emulator":
        missing = getattr(args, "_emulator_missing", None)
        if missing:
            print(f"navtalk-agent: the emulator is not available: {missing}", file=sys.stderr)
            return 1
        return _emulator(args, settings)
    if cmd in ops_cli.COMMANDS:
        return ops_cli.dispatch(args, settings)
    if cmd == "history" and args.action == "export":
        from agent.navtalk.history import export_lines

        for line in export_lines(settings.session.history_db_path):
            print(line)
        return 0
    if cmd == "history":
        from services.session import clear_history

        n = clear_history(settings)
        print(f"history cleared: {n} message(s) removed")
        return 0
    raise AssertionError(f"unhandled command {cmd}")


_ENDPOINT = re.compile(r"(ipc://.+|tcp://[^:/]+:\d{1,5}|inproc://.+)")


def _emulator(args: argparse.Namespace, settings: Settings) -> int:
    """``navtalk-agent emulator``: its flags are checked like the config (one line, exit 2)."""
    from agent.apps import preflight
    from agent.emulator import cli as emulator_cli_mod

    if args.port is not None:
        emulator_cli_mod.check_port(args.port, f"emulator --port {args.port}:")
    try:
        emu = emulator_cli_mod.settings_from_args(args, settings.emulator)
    except msgspec.ValidationError as exc:
        flag = {"port": "--port", "host": "--host", "pace": "--pace"}
        flag["drop_after_s"] = "--drop-after"
        match = re.search(r"\$\.(\w+)", str(exc))
        key = match.group(1) if match else ""
        shown = flag.get(key, f"emulator.{key}" if key else "emulator")
        value = getattr(args, key.removesuffix("_s"), None) if key else None
        reason = str(exc).split(" - at ")[0]
        raise ConfigError(
            f"emulator {shown}" + (f" {value}" if value is not None else "") + f": {reason}"
        ) from None
    if args.script and not Path(args.script).expanduser().is_file():
        raise ConfigError(f"emulator --script {args.script}: no such file")
    settings = msgspec.structs.replace(settings, emulator=emu)
    preflight.check(settings, ["emulator"])
    code: int = emulator_cli_mod.main(args, settings)
    return code
