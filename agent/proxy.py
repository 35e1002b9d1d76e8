"""The bus proxies: one XSUB/XPUB pair per plane (pyzmq's ``zmq.proxy``), each on a thread.

::

    service PUB ──▶ XSUB ┐                    ┌ XPUB ──▶ SUB service
                         ├─ zmq.proxy (thread)┤
    (one pair per plane: control never waits behind media)

Every publisher sends everything to the proxy (its XSUB subscribes to all), and the XPUB
filters: a subscription is in force for every publisher as soon as the XPUB has it, which
:meth:`agent.bus.Bus.start` proves with a probe. Frames over the plane's size limit
(:data:`MAX_FRAME_BYTES`) are refused by ZeroMQ before it allocates them: the sending
peer is disconnected (and reconnects by itself).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from typing import Any, Self

import zmq

from agent import topics
from agent.config import BusSettings, PlaneEndpoints
from agent.errors import BusError

__all__ = ["MAX_FRAME_BYTES", "MAX_SUBSCRIPTION_BYTES", "Proxy"]

log = logging.getLogger(__name__)

# Largest frame (topic, body or one payload frame) a plane carries. Control: an image for the
# model (input.image) or 10 s of pre-roll; media: audio blocks of a few kB.
MAX_FRAME_BYTES: dict[topics.Plane, int] = {
    topics.Plane.CONTROL: 8 * 1024 * 1024,
    topics.Plane.MEDIA: 1024 * 1024,
}
MAX_SUBSCRIPTION_BYTES = 4096  # what a subscriber may send the XPUB: (un)subscribe prefixes


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
            (topics.Plane.CONTROL, self._settings.control),
            (topics.Plane.MEDIA, self._settings.media),
        ):
            t = threading.Thread(
                target=self._run,
                args=(self._ctx, plane_name, plane, ready),
                name=f"bus-proxy-{plane_name.value}",
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
        name: topics.Plane,
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
            xsub.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES[name])
            xpub.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
            _prepare_ipc(plane.publish)
            _prepare_ipc(plane.subscribe)
            xsub.bind(plane.publish)
            self._bound.append(plane.publish)
            xpub.bind(plane.subscribe)
            self._bound.append(plane.subscribe)
        except zmq.ZMQError as exc:
            self._errors.append(
                BusError(
                    f"{name.value} plane: cannot bind {plane.publish} / {plane.subscribe}: {exc}"
                )
            )
            xsub.close(linger=0)
            xpub.close(linger=0)
            ready.abort()
            return
        # Subscribe the XSUB to everything, so every publisher sends every message to the
        # proxy and the filtering happens in the XPUB only. Otherwise a new subscription
        # would have to reach each publisher (asynchronously, after the proxy) before its
        # messages flow, and Bus.start() could not know when it has: now, its probe coming
        # back through the XPUB proves its subscriptions are in place for every publisher.
        # (The XSUB replays this to each publisher that connects later.)
        xsub.send(b"\x01")
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
