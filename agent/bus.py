"""The ZeroMQ bus: the client every service uses (the proxies: :mod:`agent.proxy`).

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
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Self

import zmq
import zmq.asyncio

from agent import topics
from agent.bus_stats import BurstLog, BusStats, peek_sender
from agent.config import BusSettings, PlaneEndpoints
from agent.errors import BusError, MessageDecodeError
from agent.latch import (
    LATCH_REPLY_PREFIX,
    LATCH_REQUEST,
    MAX_LATCH,
    LatchStore,
    parse_request,
)
from agent.messages import (
    MAX_BODY_BYTES,
    AnyMessage,
    Envelope,
    Message,
    decode_envelope,
    encode_envelope,
)
from agent.proxy import MAX_FRAME_BYTES, Proxy

__all__ = ["Bus", "BusSettings", "BusStats", "Delivery", "PlaneEndpoints", "Proxy"]

log = logging.getLogger(__name__)

INTERNAL_PREFIX = "_"  # bus-internal topics (probes, latch requests and replies); no service's
PROBE_PREFIX = "_probe."  # bus-internal topic used by Bus.start() to know it is connected
MAX_SEQ_KEYS = 4096  # (sender, topic) pairs whose sequence numbers are followed
MAX_RECENT = 1024  # control messages remembered to drop a latched re-send of one we have


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
    replayed: bool = False  # re-sent from a publisher's latch (may duplicate a live one)


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
        self._recent: dict[tuple[str, str, int, int], None] = {}  # see MAX_RECENT
        self._control: collections.deque[Delivery] = collections.deque(maxlen=control_queue)
        self._media: collections.deque[Delivery] = collections.deque(maxlen=media_queue)
        self._wakeup = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        self._id = f"{sender}.{uuid.uuid4().hex[:12]}"  # this connection, for directed replies
        self._probe_topic = f"{PROBE_PREFIX}{self._id}"
        self._reply_topic = f"{LATCH_REPLY_PREFIX}{self._id}"
        self._latch = LatchStore()
        self._probe_seen: set[topics.Plane] = set()
        self._probe_nonce = b""
        self._probe_event = asyncio.Event()
        self._declared: topics.ServiceTopics | None = None  # see declare()
        self._failure: BusError | None = None  # set when a reader died: recv() raises it
        self._drops = BurstLog()
        self._drops_timer: asyncio.TimerHandle | None = None
        self._started = False
        self._connected = False  # start() has seen its probes come back
        self._closed = False
        self.stats = BusStats()

    # -- setup -----------------------------------------------------------------------------

    def subscribe(self, *names: str) -> None:
        """Subscribe to topics or topic prefixes (``"navtalk."`` gets every NavTalk event).

        A prefix that matches no declared topic is refused, so typos fail loudly.
        """
        new_control: list[str] = []
        for name in names:
            for plane in self._planes_for(name):
                if plane is topics.Plane.CONTROL and name not in self._prefixes[plane]:
                    new_control.append(name)
                self._prefixes[plane].add(name)
                sock = self._sub.get(plane)
                if sock is not None:
                    sock.setsockopt(zmq.SUBSCRIBE, name.encode())
        if self._connected and new_control:  # started: ask the holders of latched topics now
            self._request_latched(new_control)

    def declare(self, declared: topics.ServiceTopics, *, without: Iterable[str] = ()) -> None:
        """Subscribe to the declared reads (less ``without``: reads this configuration does
        not need) and from now on refuse (BusError) to publish outside the declared writes:
        what a service does cannot drift from what it declares."""
        self._declared = declared
        self.subscribe(*declared.subscriptions(without=without))

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
            sub.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES[plane])  # refused before allocated
            sub.connect(ep.subscribe)
            for prefix in self._prefixes[plane]:
                sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
            sub.setsockopt(zmq.SUBSCRIBE, self._probe_topic.encode())
            if plane is topics.Plane.CONTROL:
                sub.setsockopt(zmq.SUBSCRIBE, LATCH_REQUEST.encode())
                sub.setsockopt(zmq.SUBSCRIBE, self._reply_topic.encode())
            self._sub[plane] = sub
            self._readers.append(
                asyncio.create_task(self._reader(plane, sub), name=f"bus-reader-{plane}")
            )
        missing = await self._probe(timeout)
        if missing:
            await self.close()
            raise BusError(
                f"bus not reachable within {timeout:.0f} s ({missing} plane): is the proxy "
                f"running at {self._settings.control.publish}?"
            )
        log.debug("= bus connected as %s", self._id)
        self._connected = True
        if self._prefixes[topics.Plane.CONTROL]:
            self._request_latched(sorted(self._prefixes[topics.Plane.CONTROL]))

    async def sync(self, timeout: float = 10.0) -> None:
        """Return once every subscription made so far (also by :meth:`subscribe` after
        :meth:`start`) is in force at the proxy: from then on, nothing published on those
        topics by anyone is lost on its way to this client."""
        if not self._connected:
            raise BusError("Bus.sync() before Bus.start()")
        missing = await self._probe(timeout)
        if missing:
            raise BusError(f"bus sync: no probe back within {timeout:.0f} s ({missing} plane)")

    async def _probe(self, timeout: float) -> str:
        """Publish a fresh probe on each plane until each came back through the proxy's XPUB:
        our SUB's subscriptions travel in order, so the ones made before it are in place
        too (and every publisher sends everything to the proxy: see agent.proxy). Returns
        the planes whose probe did not come back, or ""."""
        planes = {topics.Plane.CONTROL, topics.Plane.MEDIA}
        self._probe_nonce = uuid.uuid4().bytes  # a late copy of an older probe does not count
        self._probe_seen.clear()
        deadline = time.monotonic() + timeout
        while self._probe_seen != planes:
            if time.monotonic() > deadline:
                return ", ".join(sorted(p.value for p in planes - self._probe_seen))
            for plane in planes - self._probe_seen:
                self._pub[plane].send_multipart(
                    [self._probe_topic.encode(), self._probe_nonce], zmq.NOBLOCK
                )
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the awaited thing completes.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.02):
                    await self._probe_event.wait()
            self._probe_event.clear()
        return ""

    def _request_latched(self, prefixes: list[str]) -> None:
        """Ask every bus client for its latched messages under ``prefixes`` (answered on our
        reply topic, which our SUB reads since start())."""
        frames = [LATCH_REQUEST.encode(), self._id.encode(), *(p.encode() for p in prefixes)]
        self._pub[topics.Plane.CONTROL].send_multipart(frames, zmq.NOBLOCK)

    def _endpoints(self, plane: topics.Plane) -> PlaneEndpoints:
        return self._settings.control if plane is topics.Plane.CONTROL else self._settings.media

    # -- publish ---------------------------------------------------------------------------

    def publish(
        self, topic: str, msg: Message, *payload: bytes | memoryview, latch: int = 0
    ) -> bool:
        """Publish ``msg`` on ``topic`` with raw ``payload`` frames. Never blocks.

        ``latch=N`` (N > 0, control-plane topics only) also keeps this message as one of the
        last N published on ``topic`` by this client: a client subscribing to ``topic`` later
        (or restarting) receives them after its ``start()``/``subscribe()``, marked
        ``Delivery.replayed``. A publish without ``latch`` leaves the kept ones alone;
        :meth:`unlatch` forgets them.

        Returns False when the message was dropped at the high-water mark (a latched one is
        kept all the same). Raises BusError when ``msg`` is not the type the topic carries.
        """
        try:
            spec = topics.spec_for(topic)
        except KeyError as exc:
            raise BusError(str(exc)) from exc
        if type(msg) is not spec.type:
            raise BusError(
                f"topic {topic!r} carries {spec.type.__name__}, not {type(msg).__name__}"
            )
        if self._declared is not None and not self._declared.may_write(topic):
            raise BusError(f"{self.sender} publishes {topic!r}, which it does not declare")
        pub = self._pub.get(spec.plane)
        if pub is None:
            raise BusError("Bus.publish() before Bus.start()")
        limit = MAX_FRAME_BYTES[spec.plane]
        if any(len(frame) > limit for frame in payload):
            # the proxy would refuse it by disconnecting us: refuse it here, loudly
            raise BusError(f"{topic}: a payload frame is over the {limit}-byte limit")
        if latch and spec.plane is not topics.Plane.CONTROL:
            raise BusError(f"latch on {topic!r}: only control-plane topics can be latched")
        if not 0 <= latch <= MAX_LATCH:
            raise BusError(f"latch depth must be 0..{MAX_LATCH}, not {latch}")
        typed: AnyMessage = msg  # type: ignore[assignment]  # checked against the table above
        seq = self._seq[topic] + 1
        body = encode_envelope(
            Envelope(self.sender, seq, time.monotonic_ns(), time.time_ns(), typed)
        )
        if len(body) > MAX_BODY_BYTES:  # every receiver would drop it
            raise BusError(f"{topic}: body of {len(body)} bytes, limit {MAX_BODY_BYTES}")
        self._seq[topic] = seq
        if latch:
            self._latch.keep(topic, [topic.encode(), body, *map(bytes, payload)], latch)
        try:
            pub.send_multipart([topic.encode(), body, *payload], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.stats.publish_dropped += 1
            return False
        self.stats.published += 1
        return True

    def unlatch(self, topic: str) -> None:
        """Forget the latched messages of ``topic``: late subscribers no longer get them.
        (A copy already sent stays sent.)"""
        dropped = self._latch.forget(topic)
        if dropped:
            log.debug("= %s: unlatched %d message(s)", topic, dropped)

    # -- receive ---------------------------------------------------------------------------

    async def _reader(self, plane: topics.Plane, sock: zmq.asyncio.Socket) -> None:
        """Receive until closed. Bad input is counted and dropped; anything else that ends
        this loop fails :meth:`recv`, so the service (and its process) goes down with it."""
        try:
            await self._read(plane, sock)
        except asyncio.CancelledError:
            if not self._closed:  # not by close(): the loop is going away, most likely
                log.warning("bus reader (%s plane) cancelled before close()", plane.value)
                self._failure = BusError(f"bus reader ({plane.value} plane) was cancelled")
                self._wakeup.set()
            raise
        except BaseException as exc:
            if not self._closed:
                self._fail(plane, exc)
            if not isinstance(exc, Exception):
                raise

    def _fail(self, plane: topics.Plane, exc: BaseException) -> None:
        log.error("bus reader (%s plane) died", plane.value, exc_info=exc)
        if self._failure is None:
            self._failure = BusError(f"bus reader ({plane.value} plane) died: {exc!r}")
            self._failure.__cause__ = exc
        self._wakeup.set()

    async def _read(self, plane: topics.Plane, sock: zmq.asyncio.Socket) -> None:
        queue = self._control if plane is topics.Plane.CONTROL else self._media
        while True:
            try:
                frames = await sock.recv_multipart(copy=True)
            except zmq.ZMQError:
                if self._closed:
                    return
                raise  # the context was terminated or the socket closed under us
            topic = frames[0].decode("ascii", "replace")
            if topic.startswith(INTERNAL_PREFIX):
                delivery = self._internal(plane, topic, frames)
            else:
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

    def _internal(self, plane: topics.Plane, topic: str, frames: list[bytes]) -> Delivery | None:
        """A bus-internal message: our probe, somebody's latch request, or a latch reply."""
        if topic == self._probe_topic:
            if frames[1:] == [self._probe_nonce]:
                self._probe_seen.add(plane)
                self._probe_event.set()
        elif plane is not topics.Plane.CONTROL:
            pass
        elif topic == LATCH_REQUEST:
            self._answer_latch_request(frames)
        elif topic == self._reply_topic:
            inner = frames[1:]
            if not inner:
                self._dropped(topic, "?", "latch reply without a topic")
                return None
            name = inner[0].decode("ascii", "replace")
            if not name.startswith(tuple(self._prefixes[plane])):
                return None  # latched by someone for a prefix we did not ask for
            delivery = self._decode(name, inner, replayed=True)
            if delivery is not None and topics.spec_for(name).plane is plane:
                self.stats.replayed += 1
                return delivery
        return None

    def _answer_latch_request(self, frames: list[bytes]) -> None:
        request = parse_request(frames)
        if request is None:
            self._dropped(LATCH_REQUEST, "?", "malformed latch request")
            return
        requester, prefixes = request
        kept = self._latch.matching(prefixes)
        self.stats.latch_requests += 1
        if not kept:
            return
        pub = self._pub[topics.Plane.CONTROL]
        reply = f"{LATCH_REPLY_PREFIX}{requester}".encode()
        for latched in kept:
            try:
                pub.send_multipart([reply, *latched], zmq.NOBLOCK)
            except zmq.Again:
                log.warning("> latch reply to %s: control queue full, dropped", requester)
                return
            self.stats.latch_resent += 1
        log.debug("> %d latched message(s) re-sent to %s", len(kept), requester)

    def _dropped(self, topic: str, sender: str, why: str) -> None:
        """Count a dropped message by (declared topic, sender); log the first of a burst,
        and one summary per window while the burst goes on."""
        try:
            name = topics.spec_for(topic).name
        except KeyError:
            name = "?"
        self.stats.count_decode_error(name, sender)
        loop = asyncio.get_running_loop()
        if self._drops.record(f"{name} from {sender}", loop.time()):
            log.warning(
                "< %s from %s: dropped: %s (more drops: one summary per %.0f s)",
                topic[:80], sender, why, self._drops.window_s,
            )  # fmt: skip
        elif self._drops_timer is None:
            self._drops_timer = loop.call_at(self._drops.due_at(), self._log_drops)

    def _log_drops(self, *, force: bool = False) -> None:
        self._drops_timer = None
        line = self._drops.summary(asyncio.get_running_loop().time(), force=force)
        if line is not None:
            log.warning("< %s", line)

    def _decode(
        self, topic: str, frames: list[bytes], *, replayed: bool = False
    ) -> Delivery | None:
        if len(frames) < 2:
            self._dropped(topic, "?", f"{len(frames)} frame(s), need topic + body")
            return None
        try:
            spec = topics.spec_for(topic)
            env = decode_envelope(frames[1])
        except (MessageDecodeError, KeyError) as exc:
            self._dropped(topic, peek_sender(frames[1]), str(exc))
            return None
        if type(env.msg) is not spec.type:
            why = f"{type(env.msg).__name__} (topic carries {spec.type.__name__})"
            self._dropped(topic, env.sender[:40], why)
            return None
        copy = (env.sender, topic, env.seq, env.mono_ns)
        if replayed:
            if copy in self._recent:  # got it live already (it always comes first): once is enough
                self.stats.replay_duplicates += 1
                return None
        else:  # a re-sent latched message is an old one: no gap bookkeeping
            if spec.plane is topics.Plane.CONTROL:
                self._recent[copy] = None
                if len(self._recent) > MAX_RECENT:
                    del self._recent[next(iter(self._recent))]
            key = (env.sender, topic)
            last = self._last_seen.pop(key, None)  # re-inserted: the dict stays in LRU order
            if last is not None and env.seq > last + 1:
                self.stats.gaps += env.seq - last - 1
            self._last_seen[key] = env.seq
            if len(self._last_seen) > MAX_SEQ_KEYS:  # forged senders cannot grow it forever
                del self._last_seen[next(iter(self._last_seen))]
        self.stats.received += 1
        self.stats.per_topic[spec.name] = self.stats.per_topic.get(spec.name, 0) + 1
        return Delivery(
            topic, env.sender, env.seq, env.mono_ns, env.wall_ns, env.msg, frames[2:], replayed
        )

    async def recv(self) -> Delivery:
        """The next message: control-plane messages first, then media.

        Raises BusError when the bus is closed, or when a reader died (the cause chained):
        a service's loop then ends, and the supervisor restarts its process.
        """
        while True:
            if self._failure is not None:
                raise self._failure
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
        """Every message until the bus is closed; a dead reader raises (see recv)."""
        while not self._closed or self._failure is not None:
            try:
                yield await self.recv()
            except BusError:
                if self._failure is not None:
                    raise
                return

    # -- teardown --------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        if self._drops_timer is not None:
            self._drops_timer.cancel()
        self._log_drops(force=True)
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
