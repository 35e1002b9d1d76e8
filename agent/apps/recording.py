"""Bus recordings in MCAP: ``navtalk-agent record`` writes them, ``replay`` plays them back.

The file opens in Foxglove Studio (and ``mcap`` CLI tools) as it is:

- one MCAP channel per topic, message encoding ``json``, schema encoding ``jsonschema``
  (schema ``navtalk_agent.<Kind>``, one per message class, generated from the class);
- each MCAP message is one bus message::

      {"sender": "mic", "seq": 12, "mono_ns": ..., "wall_ns": ...,
       "msg": {"kind": "AudioFrame", "sample_rate_hz": 24000, ...},   # every field, uncut
       "payload": ["<base64>", ...]}                                    # the raw frames

  ``log_time`` is when the recorder received it (wall clock, ns), ``publish_time`` the
  sender's ``wall_ns``, ``sequence`` its ``seq``;
- metadata ``navtalk_agent``: format ``navtalk-bus-json/1``, the agent version, prefixes.

Strings in ``msg`` pass through :func:`agent.logs.redact` (the license never reaches a
file); payload frames (audio, images) are kept byte for byte. Media topics are recorded
only when asked (``--media``).

:class:`McapBusWriter` and :func:`read_recording` are plain file code; the live loops
(:func:`record`, :func:`replay`) are the thin asyncio shells around them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

import msgspec
from mcap.reader import make_reader
from mcap.writer import Writer

from agent import __version__, topics
from agent.bus import Bus, Delivery
from agent.config import Settings, navtalk_license
from agent.errors import ConfigError
from agent.logs import redact
from agent.messages import AnyMessage, Message
from agent.navtalk.url import register_secret

__all__ = ["FORMAT", "McapBusWriter", "Recorded", "read_recording", "record", "replay"]

log = logging.getLogger(__name__)

FORMAT = "navtalk-bus-json/1"
SCHEMA_PREFIX = "navtalk_agent."
MAX_RECORD_BYTES = 64 * 1024 * 1024  # one message in a file we read back (bounds the decoder)


class _Out(msgspec.Struct, array_like=False):
    sender: str
    seq: int
    mono_ns: int
    wall_ns: int
    msg: Any  # the message as builtins, strings redacted
    payload: list[bytes]  # msgspec writes bytes as base64


class Recorded(msgspec.Struct, frozen=True):
    """One recorded bus message, as read back."""

    sender: str
    seq: int
    mono_ns: int
    wall_ns: int
    msg: AnyMessage
    payload: list[bytes]


@dataclass(frozen=True)
class Entry:
    topic: str
    log_time_ns: int
    record: Recorded


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """The JSON schema with every ``$ref`` replaced by its definition (viewers differ in
    how much of ``$ref`` they follow; our messages are not recursive)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref[len("#/$defs/") :]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def schema_for(kind: type[Message]) -> dict[str, Any]:
    raw = msgspec.json.schema(kind)
    msg_schema = _inline(raw, raw.get("$defs", {}))
    return {
        "title": f"{SCHEMA_PREFIX}{kind.__name__}",
        "type": "object",
        "properties": {
            "sender": {"type": "string"},
            "seq": {"type": "integer"},
            "mono_ns": {"type": "integer", "description": "CLOCK_MONOTONIC at publish"},
            "wall_ns": {"type": "integer", "description": "wall clock at publish"},
            "msg": msg_schema,
            "payload": {
                "type": "array",
                "items": {"type": "string", "contentEncoding": "base64"},
                "description": "raw payload frames (audio: PCM16 LE)",
            },
        },
        "required": ["sender", "seq", "mono_ns", "wall_ns", "msg", "payload"],
    }


class McapBusWriter:
    """Writes bus messages to an MCAP stream, one channel per topic."""

    def __init__(self, stream: IO[bytes], *, prefixes: Sequence[str], media: bool):
        register_secret(navtalk_license())
        self._writer = Writer(stream)
        self._writer.start(profile="", library=f"navtalk-agent {__version__}")
        self._writer.add_metadata(
            "navtalk_agent",
            {
                "format": FORMAT,
                "version": __version__,
                "prefixes": ",".join(prefixes),
                "media": str(media).lower(),
            },
        )
        self._schemas: dict[type[Message], int] = {}
        self._channels: dict[str, int] = {}
        self._encoder = msgspec.json.Encoder()
        self.count = 0

    def add(self, d: Delivery, log_time_ns: int) -> None:
        channel = self._channels.get(d.topic)
        if channel is None:
            kind = type(d.msg)
            schema = self._schemas.get(kind)
            if schema is None:
                schema = self._writer.register_schema(
                    f"{SCHEMA_PREFIX}{kind.__name__}",
                    "jsonschema",
                    json.dumps(schema_for(kind)).encode(),
                )
                self._schemas[kind] = schema
            channel = self._writer.register_channel(
                d.topic, "json", schema, {"plane": topics.spec_for(d.topic).plane.value}
            )
            self._channels[d.topic] = channel
        body = _Out(
            d.sender, d.seq, d.mono_ns, d.wall_ns,
            _redacted(msgspec.to_builtins(d.msg)), [bytes(p) for p in d.payload],
        )  # fmt: skip
        self._writer.add_message(
            channel,
            log_time=log_time_ns,
            data=self._encoder.encode(body),
            publish_time=d.wall_ns,
            sequence=d.seq & 0xFFFFFFFF,
        )
        self.count += 1

    def finish(self) -> None:
        self._writer.finish()  # type: ignore[no-untyped-call]  # mcap leaves it unannotated


def read_recording(path: str | Path, only: Sequence[str] = ()) -> Iterator[Entry]:
    """The messages of a recording in file order (= the order they were received);
    ``only``: topic prefixes to keep. Raises ConfigError on a file that is not ours."""
    decoder = msgspec.json.Decoder(Recorded)
    try:
        stream = open(path, "rb")  # noqa: SIM115  (closed below, the generator owns it)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    with stream:
        try:
            reader = make_reader(stream)
            for schema, channel, message in reader.iter_messages(log_time_order=False):
                if only and not any(channel.topic.startswith(p) for p in only):
                    continue
                if channel.message_encoding != "json" or schema is None:
                    raise ConfigError(f"{path}: channel {channel.topic} is not a navtalk recording")
                if len(message.data) > MAX_RECORD_BYTES:
                    raise ConfigError(f"{path}: a message of {len(message.data)} bytes")
                try:
                    rec = decoder.decode(message.data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise ConfigError(f"{path}: {channel.topic}: {exc}") from exc
                yield Entry(channel.topic, message.log_time, rec)
        except ConfigError:
            raise
        except Exception as exc:  # the mcap library's own errors: a truncated or foreign file
            raise ConfigError(f"{path}: not a readable MCAP file: {exc}") from exc


# -- live shells --------------------------------------------------------------------------------


def record_prefixes(prefixes: Sequence[str], media: bool) -> list[str]:
    """What to subscribe to: the given prefixes (default: everything), without the media
    plane unless ``media``."""
    wanted = list(prefixes) or [""]
    out: list[str] = []
    for spec in topics.TOPICS.values():
        if spec.plane is topics.Plane.MEDIA and not media:
            continue
        for p in wanted:
            if spec.prefix.startswith(p):
                out.append(spec.prefix)
            elif p.startswith(spec.prefix):
                out.append(p)
    return sorted(set(out))


async def record(
    link: Any,
    path: str | Path,
    prefixes: Sequence[str],
    *,
    media: bool,
    count: int = 0,
    duration_s: float = 0.0,
    started: asyncio.Event | None = None,
    out: TextIO | None = None,
) -> int:
    """Record what ``link`` (an open :class:`agent.apps.console.Link`) receives into ``path``
    until ``count`` messages, ``duration_s``, or cancellation; the file is finished in
    every case."""
    # The recorder's only job is this file: writing from the loop is fine (1 MB chunks).
    with open(path, "wb") as stream:  # noqa: ASYNC230
        writer = McapBusWriter(stream, prefixes=prefixes, media=media)
        deadline = time.monotonic() + duration_s if duration_s > 0 else None
        if started is not None:
            started.set()
        try:
            while not (count and writer.count >= count):
                left = 3600.0 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    break
                d = await link.recv(left)
                if d is not None:
                    writer.add(d, time.time_ns())
        finally:
            writer.finish()
            if out is not None:
                lost = link.lost()
                note = f", {lost} lost (dropped or sequence gaps)" if lost else ""
                out.write(f"-- {writer.count} message(s) recorded to {path}{note}\n")
    return 0


async def replay(
    settings: Settings,
    path: str | Path,
    *,
    speed: float = 1.0,
    only: Sequence[str] = (),
    sender: str = "replay",
    out: TextIO | None = None,
) -> int:
    """Publish a recording onto the local bus with its original timing (÷ ``speed``)."""
    if speed <= 0:
        raise ConfigError(f"replay --speed {speed}: must be > 0")
    entries = list(read_recording(path, only))
    if not entries:
        if out is not None:
            out.write(f"-- nothing to replay in {path}\n")
        return 1
    published = dropped = 0
    async with Bus(settings.bus, sender) as bus:
        loop = asyncio.get_running_loop()
        t0_log = entries[0].log_time_ns
        t0 = loop.time()
        for e in entries:
            due = t0 + (e.log_time_ns - t0_log) / 1e9 / speed
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if bus.publish(e.topic, e.record.msg, *e.record.payload):
                published += 1
            else:
                dropped += 1
        # the media PUB socket has no linger: give its last frames time to reach the proxy
        await asyncio.sleep(0.2)
    if out is not None:
        out.write(f"-- {published} message(s) replayed from {path}, {dropped} dropped\n")
    return 0 if dropped == 0 else 1
