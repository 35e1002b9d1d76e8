"""Settings of the remote gateway (``[remote]``): CurveZMQ read and command access from afar."""

from __future__ import annotations

from typing import Annotated

import msgspec

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class RemoteSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Remote gateway (CurveZMQ over tcp://): bus traffic to readers, commands from writers.

    Keys live in keys_dir: server.key + server.key_secret (the gateway's own pair,
    `navtalk-agent keys generate server`), readers/*.key and writers/*.key (the public keys
    of clients allowed to read and to send commands)."""

    enabled: bool = False  # the supervisor runs the gateway (else: `navtalk-agent gateway`)
    host: str = "127.0.0.1"  # address both sockets bind (an interface the operators reach)
    read_port: Port = 7780  # XPUB: bus traffic for readers (tap, record, status)
    command_port: Port = 7781  # ROUTER: commands from writers (say, session start|end)
    keys_dir: str = "~/.config/navtalk-agent/keys"  # server.key_secret, readers/, writers/
    # Control-plane topic prefixes forwarded to readers ("" = every control topic).
    read_prefixes: list[str] = msgspec.field(default_factory=lambda: [""])
    # Media topics (prefixes) forwarded to readers, e.g. ["audio.mic"]. Empty: no media.
    media: list[str] = []
    # Topics writers may publish onto the local bus; anything else is refused and answered.
    write_topics: list[str] = msgspec.field(
        default_factory=lambda: ["control.session", "input.text", "tool.describe"]
    )
    # Messages queued per reader before the gateway drops for that reader.
    read_hwm: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 20_000
