"""The ZeroMQ bus: two XSUB/XPUB proxies (control and media planes) and the client every
service uses.

::

    service PUB ──▶ XSUB ┐                    ┌ XPUB ──▶ SUB service
                         ├─ zmq.proxy (thread)┤
    (one pair per plane: control never waits behind media)

A message is ``[topic, body, *payload]`` (see :mod:`agent.messages`).
Publishing is synchronous and never blocks: a PUB socket drops at its
high-water mark, which is small on the media plane and large on the control
plane. Received messages go into two bounded queues; :meth:`Bus.recv` returns
control messages before queued media, and the media queue drops its oldest
frame when full (counted in :attr:`Bus.stats`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Self

import zmq
import zmq.asyncio

from agent import topics
from agent.config import BusSettings, PlaneEndpoints
from agent.errors import BusError, MessageDecodeError
from agent.messages import AnyMessage, Envelope, Message, decode_envelope, encode_envelope

__all__ = ["Bus", "BusSettings", "Delivery", "PlaneEndpoints", "Proxy"]

log = logging.getLogger(__name__)

PROBE_PREFIX = "_probe."  # bus-internal topic used by Bus.start() to know it is connected


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message as received: the typed message plus its envelope and raw payload frames."""

    topic: str
    sender: str
    seq: int
    mono_ns: int
    wall_ns: int
    msg: Message
    payload: list[bytes]


@dataclass
class BusStats:
    published: int = 0
    publish_dropped: int = 0  # refused by a full PUB queue (media plane only, by design)
    received: int = 0
    media_dropped: int = 0  # oldest media dropped from a full receive queue
    decode_errors: int = 0
    gaps: int = 0  # sequence gaps seen (messages lost upstream)
    per_topic: dict[str, int] = field(default_factory=dict)


def _prepare_ipc(endpoint: str) -> None:
    """Create the directory of an ipc:// endpoint, and refuse to steal a live one.

    ZeroMQ silently replaces an ipc socket file that another process is bound
    to, which would split the bus in two; a stale file (no listener) is removed.
    """
    if not endpoint.startswith("ipc://"):
        return
    path = endpoint[len("ipc://") :]
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise zmq.ZMQError(zmq.EADDRINUSE, f"{endpoint} is in use by another bus proxy")
        finally:
            probe.close()


class Proxy:
    """Both planes' XSUB/XPUB proxies (pyzmq's ``zmq.proxy``), each on its own thread.

    The proxy owns its ZeroMQ context; ``stop()`` terminates it, which ends
    both proxy loops, and removes the ipc socket files.
    """

    def __init__(self, settings: BusSettings):
        self._settings = settings
        self._ctx: zmq.Context[Any] | None = None
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._bound: list[str] = []  # endpoints this proxy bound (its ipc files to remove)

    def start(self) -> None:
        self._ctx = zmq.Context()
        ready = threading.Barrier(3)
        for plane_name, plane in (
            ("control", self._settings.control),
            ("media", self._settings.media),
        ):
            t = threading.Thread(
                target=self._run,
                args=(self._ctx, plane_name, plane, ready),
                name=f"bus-proxy-{plane_name}",
                daemon=True,
            )
            t.start()
            self._threads.append(t)
        try:
            ready.wait(timeout=10)
        except threading.BrokenBarrierError as exc:
            self.stop()
            detail = "; ".join(str(e) for e in self._errors) or "timed out"
            raise BusError(f"bus proxy failed to start: {detail}") from exc
        log.info(
            "= bus proxy up: control %s -> %s, media %s -> %s",
            self._settings.control.publish,
            self._settings.control.subscribe,
            self._settings.media.publish,
            self._settings.media.subscribe,
        )

    def _run(
        self,
        ctx: zmq.Context[Any],
        name: str,
        plane: PlaneEndpoints,
        ready: threading.Barrier,
    ) -> None:
        xsub = ctx.socket(zmq.XSUB)
        xpub = ctx.socket(zmq.XPUB)
        try:
            for sock in (xsub, xpub):
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVHWM, plane.hwm)
                sock.setsockopt(zmq.SNDHWM, plane.hwm)
            _prepare_ipc(plane.publish)
            _prepare_ipc(plane.subscribe)
            xsub.bind(plane.publish)
            self._bound.append(plane.publish)
            xpub.bind(plane.subscribe)
            self._bound.append(plane.subscribe)
        except zmq.ZMQError as exc:
            self._errors.append(
                BusError(f"{name} plane: cannot bind {plane.publish} / {plane.subscribe}: {exc}")
            )
            xsub.close(linger=0)
            xpub.close(linger=0)
            ready.abort()
            return
        try:
            ready.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
        try:
            zmq.proxy(xsub, xpub)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:
            log.error("bus proxy %s stopped: %s", name, exc)
        finally:
            xsub.close(linger=0)
            xpub.close(linger=0)

    def stop(self) -> None:
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        # Only what we bound: a start refused because another proxy holds the endpoints
        # must not remove that proxy's files.
        bound, self._bound = self._bound, []
        for ep in bound:
            if ep.startswith("ipc://"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(ep[len("ipc://") :])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Bus:
    """One process's connection to the bus.

    Call :meth:`subscribe` before :meth:`start`. :meth:`publish` is sync and
    must be called from the thread that runs the event loop.
    """

    def __init__(
        self,
        settings: BusSettings,
        sender: str,
        *,
        media_queue: int = 200,
        control_queue: int = 10_000,
        context: zmq.asyncio.Context | None = None,
    ):
        self._settings = settings
        self.sender = sender
        self._ctx = context or zmq.asyncio.Context.instance()
        self._prefixes: dict[topics.Plane, set[str]] = {p: set() for p in topics.Plane}
        self._pub: dict[topics.Plane, zmq.asyncio.Socket] = {}
        self._sub: dict[topics.Plane, zmq.asyncio.Socket] = {}
        self._seq: dict[str, int] = collections.defaultdict(int)
        self._last_seen: dict[tuple[str, str], int] = {}
        self._control: collections.deque[Delivery] = collections.deque(maxlen=control_queue)
        self._media: collections.deque[Delivery] = collections.deque(maxlen=media_queue)
        self._wakeup = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        self._probe_topic = f"{PROBE_PREFIX}{sender}.{uuid.uuid4().hex[:8]}"
        self._probe_seen: set[topics.Plane] = set()
        self._probe_event = asyncio.Event()
        self._started = False
        self._closed = False
        self.stats = BusStats()

    # -- setup -----------------------------------------------------------------------------

    def subscribe(self, *names: str) -> None:
        """Subscribe to topics or topic prefixes (``"navtalk."`` gets every NavTalk event).

        A prefix that matches no declared topic is refused, so typos fail loudly.
        """
        for name in names:
            for plane in self._planes_for(name):
                self._prefixes[plane].add(name)
                sock = self._sub.get(plane)
                if sock is not None:
                    sock.setsockopt(zmq.SUBSCRIBE, name.encode())

    @staticmethod
    def _planes_for(prefix: str) -> set[topics.Plane]:
        planes = {
            spec.plane
            for spec in topics.TOPICS.values()
            if spec.prefix.startswith(prefix) or prefix.startswith(spec.prefix)
        }
        if not planes:
            raise BusError(f"subscription {prefix!r} matches no topic in agent.topics")
        return planes

    async def start(self, timeout: float = 10.0) -> None:
        """Connect, and return once a probe published on each plane came back through the
        proxy (so the proxy is up and our subscriptions are in place)."""
        if self._started:
            return
        self._started = True
        planes = {topics.Plane.CONTROL, topics.Plane.MEDIA}
        for plane in planes:
            ep = self._endpoints(plane)
            pub = self._ctx.socket(zmq.PUB)
            pub.setsockopt(zmq.LINGER, 200 if plane is topics.Plane.CONTROL else 0)
            pub.setsockopt(zmq.SNDHWM, ep.hwm)
            pub.connect(ep.publish)
            self._pub[plane] = pub
            sub = self._ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, ep.hwm)
            sub.connect(ep.subscribe)
            for prefix in self._prefixes[plane]:
                sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
            sub.setsockopt(zmq.SUBSCRIBE, self._probe_topic.encode())
            self._sub[plane] = sub
            self._readers.append(
                asyncio.create_task(self._reader(plane, sub), name=f"bus-reader-{plane}")
            )
        deadline = time.monotonic() + timeout
        while self._probe_seen != planes:
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(p.value for p in planes - self._probe_seen))
                await self.close()
                raise BusError(
                    f"bus not reachable within {timeout:.0f} s ({missing} plane): is the proxy "
                    f"running at {self._settings.control.publish}?"
                )
            for plane in planes - self._probe_seen:
                self._pub[plane].send(self._probe_topic.encode(), zmq.NOBLOCK)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the awaited thing completes.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.02):
                    await self._probe_event.wait()
            self._probe_event.clear()
        log.debug("= bus connected as %s", self.sender)

    def _endpoints(self, plane: topics.Plane) -> PlaneEndpoints:
        return self._settings.control if plane is topics.Plane.CONTROL else self._settings.media

    # -- publish ---------------------------------------------------------------------------

    def publish(self, topic: str, msg: Message, *payload: bytes | memoryview) -> bool:
        """Publish ``msg`` on ``topic`` with raw ``payload`` frames. Never blocks.

        Returns False when the message was dropped at the high-water mark.
        Raises BusError when ``msg`` is not the type the topic carries.
        """
        try:
            spec = topics.spec_for(topic)
        except KeyError as exc:
            raise BusError(str(exc)) from exc
        if type(msg) is not spec.type:
            raise BusError(
                f"topic {topic!r} carries {spec.type.__name__}, not {type(msg).__name__}"
            )
        pub = self._pub.get(spec.plane)
        if pub is None:
            raise BusError("Bus.publish() before Bus.start()")
        self._seq[topic] += 1
        typed: AnyMessage = msg  # type: ignore[assignment]  # checked against the table above
        body = encode_envelope(
            Envelope(self.sender, self._seq[topic], time.monotonic_ns(), time.time_ns(), typed)
        )
        try:
            pub.send_multipart([topic.encode(), body, *payload], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.stats.publish_dropped += 1
            return False
        self.stats.published += 1
        return True

    # -- receive ---------------------------------------------------------------------------

    async def _reader(self, plane: topics.Plane, sock: zmq.asyncio.Socket) -> None:
        queue = self._control if plane is topics.Plane.CONTROL else self._media
        while True:
            try:
                frames = await sock.recv_multipart(copy=True)
            except (asyncio.CancelledError, zmq.ContextTerminated):
                return
            except zmq.ZMQError as exc:
                if self._closed:
                    return
                log.error("bus reader %s: %s", plane, exc)
                continue
            topic = frames[0].decode("ascii", "replace")
            if topic.startswith(PROBE_PREFIX):
                if topic == self._probe_topic:
                    self._probe_seen.add(plane)
                    self._probe_event.set()
                continue
            delivery = self._decode(topic, frames)
            if delivery is None:
                continue
            if queue.maxlen is not None and len(queue) == queue.maxlen:
                if plane is topics.Plane.MEDIA:
                    self.stats.media_dropped += 1
                else:
                    log.error("control queue full (%d): dropping oldest", queue.maxlen)
            queue.append(delivery)
            self._wakeup.set()

    def _decode(self, topic: str, frames: list[bytes]) -> Delivery | None:
        if len(frames) < 2:
            self.stats.decode_errors += 1
            log.warning("< %s: dropped, %d frame(s), need topic + body", topic, len(frames))
            return None
        try:
            env = decode_envelope(frames[1])
            spec = topics.spec_for(topic)
        except (MessageDecodeError, KeyError) as exc:
            self.stats.decode_errors += 1
            log.warning("< %s: dropped undecodable message: %s", topic, exc)
            return None
        if type(env.msg) is not spec.type:
            self.stats.decode_errors += 1
            log.warning(
                "< %s: dropped %s from %s (topic carries %s)",
                topic,
                type(env.msg).__name__,
                env.sender,
                spec.type.__name__,
            )
            return None
        key = (env.sender, topic)
        last = self._last_seen.get(key)
        if last is not None and env.seq > last + 1:
            self.stats.gaps += env.seq - last - 1
        self._last_seen[key] = env.seq
        self.stats.received += 1
        self.stats.per_topic[topic] = self.stats.per_topic.get(topic, 0) + 1
        return Delivery(topic, env.sender, env.seq, env.mono_ns, env.wall_ns, env.msg, frames[2:])

    async def recv(self) -> Delivery:
        """The next message: control-plane messages first, then media."""
        while True:
            if self._control:
                return self._control.popleft()
            if self._media:
                return self._media.popleft()
            if self._closed:
                raise BusError("bus closed")
            self._wakeup.clear()
            await self._wakeup.wait()

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery]:
        while not self._closed:
            try:
                yield await self.recv()
            except BusError:
                return

    # -- teardown --------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        for task in self._readers:
            task.cancel()
        for task in self._readers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._readers.clear()
        for sock in (*self._pub.values(), *self._sub.values()):
            sock.close()
        self._pub.clear()
        self._sub.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
