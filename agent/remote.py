"""The remote gateway: the bus, read and commanded from afar over tcp:// with CurveZMQ.

::

    local bus (ipc://)                      gateway                         operators (tcp://)
    control XPUB ──SUB(read_prefixes)──▶ ┐
    media   XPUB ──SUB(media allow-list)─┴▶ XPUB  (CURVE, ZAP domain "read")  ──▶ tap / record
    Bus.publish ◀── checked command ◀──────── ROUTER (CURVE, ZAP domain "write") ◀── say / session

The local bus stays as it is (ipc://, no encryption, no extra hop): only what the
gateway forwards pays for CURVE. Access is by client public key, checked by pyzmq's
ZAP authenticator (:mod:`zmq.auth`) against ``keys_dir/readers`` for the read socket and
``keys_dir/writers`` for the command socket (see :mod:`agent.keys`). A client whose key is
not listed fails the handshake: it receives nothing and can send nothing; the refusal is
logged once per key, then counted.

Media topics (mic audio) are forwarded only when listed in ``[remote] media``. A command
is ``[topic, body, *payload]`` (the bus's own framing), accepted only on a topic of
``[remote] write_topics`` and only when the body is a valid message of the type the topic
carries; it is published on the local bus by this gateway (sender ``gateway``) and
answered ``[b"ok", b""]`` or ``[b"error", reason]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from agent import topics
from agent.bus import INTERNAL_PREFIX, Bus
from agent.bus_stats import BurstLog
from agent.config import Settings
from agent.errors import BusError, ConfigError, MessageDecodeError
from agent.keys import READERS, WRITERS, ClientKeys, KeyRing, key_dir, load_server_secret
from agent.messages import Message, Metrics, decode_envelope
from agent.proxy import MAX_FRAME_BYTES, MAX_SUBSCRIPTION_BYTES

__all__ = [
    "CommandRefused",
    "Gateway",
    "RemoteCommander",
    "check_command",
    "remote_sub_socket",
    "sync_view",
]

log = logging.getLogger(__name__)

GATEWAY_SENDER = "gateway"
READ_DOMAIN = b"read"
WRITE_DOMAIN = b"write"
MAX_COMMAND_FRAMES = 8  # topic + body + payload frames
METRICS_INTERVAL_S = 5.0


class CommandRefused(Exception):
    """A command the gateway will not publish; the message is the answer to the client."""


def check_command(
    frames: Sequence[bytes], allowed: Sequence[str]
) -> tuple[str, Message, list[bytes]]:
    """Validate one command ``[topic, body, *payload]``: (topic, message, payload), or
    CommandRefused with the reason. No I/O."""
    if len(frames) < 2:
        raise CommandRefused("need [topic, body, *payload]")
    if len(frames) > MAX_COMMAND_FRAMES:
        raise CommandRefused(f"{len(frames)} frames, at most {MAX_COMMAND_FRAMES}")
    topic = frames[0].decode("ascii", "replace")
    if topic not in allowed:
        raise CommandRefused(f"topic {topic[:60]!r} is not writable here")
    try:
        spec = topics.spec_for(topic)
    except KeyError as exc:
        raise CommandRefused(str(exc)) from None
    try:
        env = decode_envelope(frames[1])
    except MessageDecodeError as exc:
        raise CommandRefused(str(exc)) from None
    if type(env.msg) is not spec.type:
        raise CommandRefused(f"{topic} carries {spec.type.__name__}, not {type(env.msg).__name__}")
    return topic, env.msg, list(frames[2:])


@dataclass
class GatewayStats:
    forwarded: int = 0
    commands: int = 0
    refused_commands: int = 0


class Gateway:
    """Serves ``[remote]``. ``await run()`` until cancelled; ``ready`` is set once bound."""

    def __init__(self, settings: Settings, *, metrics_interval_s: float = METRICS_INTERVAL_S):
        self.settings = settings
        self.metrics_interval_s = metrics_interval_s
        self.remote = settings.remote
        directory = key_dir(self.remote.keys_dir)
        self._server_public, self._server_secret = load_server_secret(directory)
        self.readers = KeyRing("reader", directory / READERS)
        self.writers = KeyRing("writer", directory / WRITERS)
        self.read_endpoint = f"tcp://{self.remote.host}:{self.remote.read_port}"
        self.command_endpoint = f"tcp://{self.remote.host}:{self.remote.command_port}"
        try:  # what writers may publish: declared, so the bus refuses anything else too
            writes = (*self.remote.write_topics, f"metrics.{GATEWAY_SENDER}")
            self._declared = topics.ServiceTopics(writes=writes)
        except ValueError as exc:
            raise ConfigError(f"remote.write_topics: {exc}") from exc
        self.ready = asyncio.Event()
        self.stats = GatewayStats()
        self._refusals = BurstLog(window_s=10.0)

    async def run(self) -> None:
        ctx = zmq.asyncio.Context()  # our own: ZAP is per context, the local bus stays NULL
        auth = AsyncioAuthenticator(ctx, log=logging.getLogger("agent.remote.zap"))
        auth.start()
        self.readers.reload()
        self.writers.reload()
        auth.configure_curve_callback(READ_DOMAIN.decode(), self.readers)
        auth.configure_curve_callback(WRITE_DOMAIN.decode(), self.writers)
        socks: list[zmq.asyncio.Socket] = []
        bus = Bus(self.settings.bus, GATEWAY_SENDER)
        bus.declare(self._declared)
        try:
            xpub = self._server_socket(ctx, zmq.XPUB, READ_DOMAIN, MAX_SUBSCRIPTION_BYTES)
            socks.append(xpub)
            xpub.setsockopt(zmq.SNDHWM, self.remote.read_hwm)
            router = self._server_socket(
                ctx, zmq.ROUTER, WRITE_DOMAIN, MAX_FRAME_BYTES[topics.Plane.CONTROL]
            )
            socks.append(router)
            router.setsockopt(zmq.ROUTER_MANDATORY, 0)
            self._bind(xpub, self.read_endpoint)
            self._bind(router, self.command_endpoint)
            sources = self._local_sources(ctx)
            socks += sources
            await bus.start()
            log.info(
                "= remote gateway up: read %s (control %s, media %s), commands %s (%s)",
                self.read_endpoint,
                ", ".join(repr(p) for p in self.remote.read_prefixes) or "none",
                ", ".join(self.remote.media) or "none",
                self.command_endpoint,
                ", ".join(self.remote.write_topics) or "none",
            )
            self.ready.set()
            reporter = asyncio.create_task(self._report(bus), name="gateway-metrics")
            try:
                await self._loop(xpub, router, sources, bus)
            finally:
                reporter.cancel()
        finally:
            auth.stop()
            await bus.close()
            for sock in socks:
                sock.close(linger=0)
            ctx.term()

    async def _report(self, bus: Bus) -> None:
        """Counters as ``metrics.gateway`` (the supervisor exports them)."""
        while True:
            await asyncio.sleep(self.metrics_interval_s)  # a reporting period
            values = {
                "forwarded": float(self.stats.forwarded),
                "commands": float(self.stats.commands),
                "refused_commands": float(self.stats.refused_commands),
                "refused_readers": float(self.readers.refused),
                "refused_writers": float(self.writers.refused),
            }
            bus.publish("metrics.gateway", Metrics(service=GATEWAY_SENDER, values=values))

    def _server_socket(
        self, ctx: zmq.asyncio.Context, kind: int, domain: bytes, max_msg: int
    ) -> zmq.asyncio.Socket:
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._server_secret)
        sock.setsockopt(zmq.ZAP_DOMAIN, domain)
        sock.setsockopt(zmq.MAXMSGSIZE, max_msg)
        return sock

    @staticmethod
    def _bind(sock: zmq.asyncio.Socket, endpoint: str) -> None:
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise BusError(f"remote gateway: cannot bind {endpoint}: {exc}") from exc

    def _local_sources(self, ctx: zmq.asyncio.Context) -> list[zmq.asyncio.Socket]:
        out = []
        for plane, prefixes in (
            (self.settings.bus.control, self.remote.read_prefixes),
            (self.settings.bus.media, self.remote.media),
        ):
            if not prefixes:
                continue
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, plane.hwm)
            for prefix in prefixes:
                sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
            sub.connect(plane.subscribe)
            out.append(sub)
        return out

    async def _loop(
        self,
        xpub: zmq.asyncio.Socket,
        router: zmq.asyncio.Socket,
        sources: list[zmq.asyncio.Socket],
        bus: Bus,
    ) -> None:
        poller = zmq.asyncio.Poller()
        for sock in (xpub, router, *sources):
            poller.register(sock, zmq.POLLIN)
        # the same sockets, for non-blocking batches without an await per message
        sync_xpub, sync_router = sync_view(xpub), sync_view(router)
        sync_sources = {src: sync_view(src) for src in sources}
        while True:
            events = dict(await poller.poll())
            for src in sources:
                if src in events:
                    self._forward(sync_sources[src], sync_xpub)
            if router in events:
                self._commands(sync_router, bus)
            if xpub in events:
                # readers' (un)subscriptions: nothing to do, the XPUB filters per reader
                with contextlib.suppress(zmq.Again):
                    for _ in range(1000):
                        sync_xpub.recv(zmq.NOBLOCK)

    def _forward(self, src: zmq.Socket[bytes], xpub: zmq.Socket[bytes]) -> None:
        for _ in range(1000):  # a batch, then let the other sockets have a turn
            try:
                frames: list[Any] = src.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if bytes(frames[0].buffer[: len(INTERNAL_PREFIX)]) == INTERNAL_PREFIX.encode():
                continue  # probes and latch traffic of the local bus
            xpub.send_multipart(frames, zmq.NOBLOCK, copy=False)
            self.stats.forwarded += 1

    def _commands(self, router: zmq.Socket[bytes], bus: Bus) -> None:
        for _ in range(100):
            try:
                frames: list[Any] = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            ident, rest = frames[0], [f.bytes for f in frames[1:]]
            key = _user_id(frames[1]) if len(frames) > 1 else ""
            who = self.writers.name_of(key.encode()) or key[:12]
            try:
                topic, msg, payload = check_command(rest, self.remote.write_topics)
                if not bus.publish(topic, msg, *payload):
                    raise CommandRefused("the local bus is full, try again")
            except (CommandRefused, BusError) as exc:
                self.stats.refused_commands += 1
                if self._refusals.record(who, time.monotonic()):
                    log.warning("remote command from %s refused: %s", who, exc)
                summary = self._refusals.summary(time.monotonic())
                if summary:
                    log.warning("remote commands refused: %s", summary)
                reply = [b"error", str(exc).encode()]
            else:
                self.stats.commands += 1
                log.info("< remote %s: %s %s", who, topic, type(msg).__name__)
                reply = [b"ok", b""]
            with contextlib.suppress(zmq.ZMQError):
                router.send_multipart([ident.bytes, *reply], zmq.NOBLOCK)


def _user_id(frame: Any) -> str:
    """The client's z85 public key, as the ZAP handler named it (User-Id)."""
    try:
        return str(frame.get("User-Id") or "")
    except zmq.ZMQError:
        return ""


def sync_view(sock: zmq.asyncio.Socket) -> zmq.Socket[bytes]:
    """A blocking-API view of an asyncio socket (the same ZeroMQ socket), for NOBLOCK
    batches; closing the asyncio socket closes it."""
    return zmq.Socket.shadow(sock.underlying)


def remote_sub_socket(
    ctx: zmq.asyncio.Context, endpoint: str, keys: ClientKeys | None
) -> zmq.asyncio.Socket:
    """A SUB socket connected to a gateway's read endpoint (CURVE when ``keys``)."""
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(sock)
    sock.connect(endpoint)
    return sock


class RemoteCommander:
    """Sends commands to a gateway's command endpoint and waits for each answer."""

    def __init__(self, endpoint: str, keys: ClientKeys, *, sender: str = topics.EXTERNAL):
        self._ctx = zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        keys.apply(self._sock)
        self._sock.connect(endpoint)
        self._sender = sender
        self._seq = 0

    async def send(self, topic: str, msg: Message, *payload: bytes, timeout: float = 5.0) -> None:
        """Publish through the gateway; raise BusError with the gateway's reason if refused,
        or when no answer comes (unknown key: the handshake never completes)."""
        from agent.messages import Envelope, encode_envelope

        self._seq += 1
        env = Envelope(self._sender, self._seq, time.monotonic_ns(), time.time_ns(), msg)  # type: ignore[arg-type]
        await self._sock.send_multipart([topic.encode(), encode_envelope(env), *payload])
        try:
            async with asyncio.timeout(timeout):
                status, detail = (await self._sock.recv_multipart())[:2]
        except TimeoutError:
            raise BusError(
                f"no answer from the gateway within {timeout:.0f} s (is the key allowed?)"
            ) from None
        if status != b"ok":
            raise BusError(f"gateway refused {topic}: {detail.decode(errors='replace')}")

    def close(self) -> None:
        self._sock.close(linger=0)


async def serve_gateway(settings: Settings) -> int:
    """``navtalk-agent gateway``: run until SIGINT/SIGTERM."""
    import signal

    gateway = Gateway(settings)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(gateway.run(), name="gateway")
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return 0
