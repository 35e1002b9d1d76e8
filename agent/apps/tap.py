"""``navtalk-agent tap``: watch live bus traffic, readably.

A tap is read-only: plain SUB sockets on the proxies' subscribe endpoints
(local ``ipc://`` or a remote board's ``tcp://``). Payload frames are shown as
sizes, never as content; long strings (SDP, JSON) are cut (not with ``--json``); the license is
redacted; a sequence gap per (sender, topic) is flagged with ``GAP``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any, TextIO

import msgspec
import zmq
import zmq.asyncio

from agent.bus import INTERNAL_PREFIX
from agent.errors import MessageDecodeError
from agent.keys import ClientKeys
from agent.logs import redact
from agent.messages import decode_envelope
from agent.proxy import MAX_FRAME_BYTES

_MAX_STR = 80


def _shorten(value: Any) -> Any:
    if isinstance(value, str):
        value = redact(value)
        return value if len(value) <= _MAX_STR else f"{value[:_MAX_STR]}…({len(value)} chars)"
    if isinstance(value, dict):
        return {k: _shorten(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v) for v in value[:8]] + (["…"] if len(value) > 8 else [])
    return value


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


class TapPrinter:
    """Turns raw multipart messages into lines; tracks sequence gaps. No I/O of its own."""

    def __init__(self, *, as_json: bool = False):
        self.as_json = as_json
        self._last: dict[tuple[str, str], int] = {}
        self.gaps = 0

    def line(self, frames: Sequence[bytes], now_mono_ns: int) -> str:
        topic = frames[0].decode("ascii", "replace")
        if topic.startswith(INTERNAL_PREFIX):  # probes, latch requests and replies
            return ""
        try:
            if len(frames) < 2:
                raise MessageDecodeError("no body frame")
            env = decode_envelope(frames[1])
        except MessageDecodeError as exc:
            if self.as_json:
                return json.dumps({"topic": topic, "error": str(exc)})
            return f"{topic}  !! undecodable: {exc}"
        key = (env.sender, topic)
        last = self._last.get(key)
        gap = env.seq - last - 1 if last is not None and env.seq > last + 1 else 0
        self.gaps += gap
        self._last[key] = env.seq
        builtins = msgspec.to_builtins(env.msg)
        body = _redacted(builtins) if self.as_json else _shorten(builtins)  # --json: uncut
        kind = body.pop("kind", type(env.msg).__name__)
        sizes = [len(f) for f in frames[2:]]
        age_ms = (now_mono_ns - env.mono_ns) / 1e6
        if self.as_json:
            return json.dumps(
                {
                    "topic": topic,
                    "sender": env.sender,
                    "seq": env.seq,
                    "wall_ns": env.wall_ns,
                    "age_ms": round(age_ms, 3),
                    "kind": kind,
                    "msg": body,
                    "payload_bytes": sizes,
                    "gap": gap,
                }
            )
        stamp = time.strftime("%H:%M:%S", time.localtime(env.wall_ns / 1e9))
        stamp += f".{env.wall_ns // 1_000_000 % 1000:03d}"
        fields = " ".join(f"{k}={v!r}" for k, v in body.items())
        extra = f" payload={'+'.join(str(s) for s in sizes)} B" if sizes else ""
        flag = f"  GAP({gap} lost)" if gap else ""
        return f"{stamp} {env.sender:<9} {topic:<30} #{env.seq:<6} {kind} {fields}{extra}{flag}"


async def tap(
    endpoints: Sequence[str],
    prefixes: Sequence[str],
    out: TextIO,
    *,
    as_json: bool = False,
    count: int = 0,
    duration_s: float = 0.0,
    keys: ClientKeys | None = None,
) -> int:
    """Print messages until ``count`` were printed, ``duration_s`` passed, or cancelled."""
    ctx = zmq.asyncio.Context.instance()
    printer = TapPrinter(as_json=as_json)
    socks = []
    for ep in endpoints:
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max(MAX_FRAME_BYTES.values()))  # refused, not allocated
        if keys is not None and ep.startswith("tcp://"):
            keys.apply(sock)  # a remote gateway (agent.remote): CurveZMQ
        sock.connect(ep)
        for p in prefixes or [""]:
            sock.setsockopt(zmq.SUBSCRIBE, p.encode())
        socks.append(sock)
    poller = zmq.asyncio.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    deadline = time.monotonic() + duration_s if duration_s > 0 else None
    printed = 0
    try:
        while not (count and printed >= count):
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if timeout == 0.0:
                break
            events = await poller.poll(None if timeout is None else int(timeout * 1000) + 1)
            for sock, _ in events:
                if count and printed >= count:
                    break
                frames = await sock.recv_multipart()
                text = printer.line(frames, time.monotonic_ns())
                if text:
                    out.write(text + "\n")
                    out.flush()
                    printed += 1
    finally:
        for sock in socks:
            with contextlib.suppress(Exception):
                sock.close()
    if printer.gaps and not as_json:
        out.write(f"-- {printer.gaps} message(s) lost (sequence gaps)\n")
    return 0


def run_tap(
    endpoints: Sequence[str],
    prefixes: Sequence[str],
    out: TextIO,
    *,
    as_json: bool,
    count: int,
    duration_s: float,
    keys: ClientKeys | None = None,
) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(
            tap(
                endpoints,
                prefixes,
                out,
                as_json=as_json,
                count=count,
                duration_s=duration_s,
                keys=keys,
            )  # fmt: skip
        )
    return 0
