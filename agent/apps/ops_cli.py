"""The operator's subcommands of ``navtalk-agent`` (registered by :mod:`agent.apps.cli`)::

    navtalk-agent gateway                                   the CurveZMQ remote gateway alone
    navtalk-agent keys generate NAME [--dir D] | list [--dir D]
    navtalk-agent record FILE [PREFIX...] [--media] [--duration S] [--count N]
    navtalk-agent replay FILE [--speed X] [--topics PREFIX...]
    navtalk-agent topics [--window S] [--json]              rates and sizes per topic
    navtalk-agent say "TEXT" [--wait S]                     typed guest input
    navtalk-agent session start|end [--wait S]
    navtalk-agent tools list [--json]
    navtalk-agent status [--json]
    navtalk-agent console                                   type as the guest, read the avatar

Every command that reads or writes the bus takes ``--remote HOST --key MY.key_secret
--server-key server.key`` to go through a board's gateway instead of the local bus.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from agent.config import Settings
from agent.errors import ConfigError

__all__ = ["COMMANDS", "add_key_args", "add_parsers", "client_keys", "dispatch"]

COMMANDS = (
    "gateway", "keys", "record", "replay", "topics", "say", "session", "tools", "status",
    "console",
)  # fmt: skip
LOGGED = ("gateway", "replay")  # commands that log like a process (the rest print)


def add_key_args(p: argparse.ArgumentParser) -> None:
    """``--key`` / ``--server-key``: CURVE keys for reading a gateway over tcp://."""
    p.add_argument("--key", metavar="FILE", help="your NAME.key_secret (CURVE, for a gateway)")
    p.add_argument("--server-key", metavar="FILE", help="the gateway's server.key")


def _add_remote(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--remote",
        metavar="HOST",
        help="go through the gateway on HOST (ports from [remote]) instead of the local bus",
    )
    add_key_args(p)


def add_parsers(sub: Any, add_config: Any) -> None:
    p = sub.add_parser("gateway", help="run the CurveZMQ remote gateway ([remote] settings)")
    add_config(p)

    p = sub.add_parser("keys", help="make and list CurveZMQ keys for the remote gateway")
    p.add_argument("action", choices=["generate", "list"])
    p.add_argument("name", nargs="?", help="generate: the key pair's name (e.g. server, alice)")
    p.add_argument("--dir", metavar="DIR", help="keys directory (default: [remote] keys_dir)")
    add_config(p)

    p = sub.add_parser("record", help="record bus traffic to an MCAP file (Foxglove Studio)")
    p.add_argument("path", metavar="FILE", help="output .mcap")
    p.add_argument("prefixes", nargs="*", metavar="PREFIX", help="topic prefixes (default: all)")
    p.add_argument("--media", action="store_true", help="also record media (mic audio, ...)")
    p.add_argument("--count", type=int, default=0, metavar="N", help="stop after N messages")
    p.add_argument("--duration", type=float, default=0.0, metavar="S", help="stop after S s")
    _add_remote(p)
    add_config(p)

    p = sub.add_parser("replay", help="publish a recording onto the local bus, timed")
    p.add_argument("path", metavar="FILE", help="an .mcap made by record")
    p.add_argument("--speed", type=float, default=1.0, metavar="X", help="2 = twice as fast")
    p.add_argument("--topics", nargs="+", default=[], metavar="PREFIX", help="only these")
    add_config(p)

    p = sub.add_parser("topics", help="topics with rates and sizes (like ros2 topic hz/bw)")
    p.add_argument("--window", type=float, default=5.0, metavar="S", help="listen S seconds")
    p.add_argument("--json", action="store_true")
    p.add_argument("--endpoint", action="append", metavar="URI", help="subscribe endpoint(s)")
    _add_remote(p)
    add_config(p)

    p = sub.add_parser("say", help="type TEXT as the guest (input.text)")
    p.add_argument("text")
    p.add_argument("--no-reply", action="store_true", help="add to the conversation only")
    p.add_argument("--wait", type=float, default=0.0, metavar="S", help="print the reply")
    _add_remote(p)
    add_config(p)

    p = sub.add_parser("session", help="start or end the NavTalk session (control.session)")
    p.add_argument("action", choices=["start", "end"])
    p.add_argument("--wait", type=float, default=0.0, metavar="S", help="wait for the phase")
    _add_remote(p)
    add_config(p)

    p = sub.add_parser("tools", help="the tool catalog of the running agent")
    p.add_argument("action", choices=["list"])
    p.add_argument("--json", action="store_true", help="with the parameter schemas")
    p.add_argument("--wait", type=float, default=5.0, metavar="S")
    _add_remote(p)
    add_config(p)

    p = sub.add_parser("console", help="a text conversation: type as the guest, see replies")
    _add_remote(p)
    add_config(p)

    p = sub.add_parser("status", help="processes, pids, restarts, CPU, memory, session state")
    p.add_argument("--json", action="store_true")
    p.add_argument("--wait", type=float, default=6.0, metavar="S", help="listen at most S s")
    _add_remote(p)
    add_config(p)


def client_keys(args: argparse.Namespace) -> Any:
    """The CURVE client keys given on the command line, or None."""
    key, server = getattr(args, "key", None), getattr(args, "server_key", None)
    if not key and not server:
        return None
    if not (key and server):
        raise ConfigError("give both --key (your NAME.key_secret) and --server-key (server.key)")
    from agent.keys import load_client_keys

    return load_client_keys(key, server)


def _remote_target(args: argparse.Namespace, settings: Settings) -> Any:
    if not getattr(args, "remote", None):
        return None
    from agent.apps.console import RemoteTarget

    keys = client_keys(args)
    if keys is None:
        raise ConfigError("--remote needs --key and --server-key")
    host = args.remote
    return RemoteTarget(
        f"tcp://{host}:{settings.remote.read_port}",
        f"tcp://{host}:{settings.remote.command_port}",
        keys,
    )


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    cmd = args.command
    out = sys.stdout
    if cmd == "gateway":
        from agent.remote import serve_gateway

        return asyncio.run(serve_gateway(settings))
    if cmd == "keys":
        return _keys(args, settings)
    if cmd == "replay":
        from agent.apps.recording import replay

        return asyncio.run(replay(settings, args.path, speed=args.speed, only=args.topics, out=out))
    if cmd == "topics":
        from agent.apps.topic_stats import topics_command

        keys = client_keys(args)
        if args.remote:
            endpoints = [f"tcp://{args.remote}:{settings.remote.read_port}"]
        else:
            planes = [settings.bus.control.subscribe, settings.bus.media.subscribe]
            endpoints = args.endpoint or planes
        return asyncio.run(
            topics_command(endpoints, out, window_s=args.window, as_json=args.json, keys=keys)
        )
    remote = _remote_target(args, settings)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_console(cmd, args, settings, remote))
    return 130


async def _console(cmd: str, args: argparse.Namespace, settings: Settings, remote: Any) -> int:
    from agent.apps import console

    out = sys.stdout
    if cmd == "record":
        from agent.apps.recording import record, record_prefixes

        prefixes = record_prefixes(args.prefixes, args.media)
        # a deep media queue: the recorder writes between reads, and must not drop audio
        async with console.Link(settings, prefixes, remote, media_queue=5000) as link:
            return await record(
                link, args.path, prefixes, media=args.media, count=args.count,
                duration_s=args.duration, out=sys.stderr,
            )  # fmt: skip
    if cmd == "say":
        return await console.say(
            settings, args.text, out, reply=not args.no_reply, wait_s=args.wait, remote=remote
        )
    if cmd == "session":
        return await console.session(settings, args.action, out, wait_s=args.wait, remote=remote)
    if cmd == "tools":
        return await console.tools_list(
            settings, out, as_json=args.json, wait_s=args.wait, remote=remote
        )
    if cmd == "console":
        return await console.interactive(settings, out, remote=remote)
    if cmd == "status":
        return await console.status(
            settings, out, as_json=args.json, wait_s=args.wait, remote=remote
        )
    raise AssertionError(f"unhandled command {cmd}")


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from agent import keys

    directory = keys.key_dir(args.dir or settings.remote.keys_dir)
    if args.action == "generate":
        if not args.name:
            raise ConfigError("keys generate NAME: give the pair a name (server, alice, ...)")
        public, secret = keys.generate(directory, args.name)
        print(f"public key: {public}\nsecret key: {secret} (keep it on this machine only)")
        if args.name != keys.SERVER_KEY:
            print(
                f"to let {args.name} read a board: copy {public.name} into its "
                f"{keys.READERS}/ directory (and {keys.WRITERS}/ to send commands)"
            )
        return 0
    entries = keys.list_keys(directory)
    if not entries:
        print(f"no keys in {directory}")
        return 0
    for e in entries:
        mark = " (+secret)" if e.has_secret else ""
        print(f"{e.role:<7} {e.name:<16} {e.public_z85}  {e.path}{mark}")
    return 0
