"""The NavTalk connection's life and retries, sans I/O.

:class:`Link` tracks one connection attempt after another and decides what follows
each end: retry after a backoff delay, give up, or go idle. The shell opens and closes
sockets and sleeps; it tells the link what happened and passes ``now``::

    IDLE ──opening()──▶ OPENING ──opened()──▶ HANDSHAKE ──session.created──▶ LIVE
      ▲                    │                      │ (deadline: handshake_timeout_s)    │
      │                    └──────────── ended(failure) ◀─────────────────────────────┘
      │                                         │
      └── ended(None) (we ended it)   WAITING (retry in backoff s) or FAILED (gave up)

- A server that accepts the socket and never speaks cannot wedge the session: the
  handshake has a deadline (:meth:`Link.handshake_expired`).
- A session that reached LIVE (``realtime.session.created``) was healthy: the backoff
  and the failure count start over after it, so ``max_attempts`` counts consecutive
  failures, not sessions.
- Every attempt gets a new :attr:`Link.connection_id` (signaling of an older connection
  is recognised and dropped by it).
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

from agent.backoff import FailureKind, backoff
from agent.navtalk.settings import SessionSettings

__all__ = ["Link", "LinkState", "Outcome", "RetryPolicy"]

logger = logging.getLogger(__name__)


class LinkState(enum.Enum):
    IDLE = "idle"  # not connected, not trying
    OPENING = "opening"  # the socket is being opened (WebSocket handshake)
    HANDSHAKE = "handshake"  # open; waiting for realtime.session.created
    LIVE = "live"  # realtime.session.created received: a healthy session
    WAITING = "waiting"  # backing off before the next attempt
    FAILED = "failed"  # gave up; only a new start tries again


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    reconnect: bool = True
    max_attempts: int = 0  # consecutive failures before giving up (0 = never)
    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.25
    handshake_timeout_s: float = 10.0  # socket open -> realtime.session.created

    @classmethod
    def from_settings(cls, c: SessionSettings) -> RetryPolicy:
        return cls(
            reconnect=c.reconnect,
            max_attempts=c.reconnect_max_attempts,
            initial_s=c.reconnect_initial_s,
            max_s=c.reconnect_max_s,
            factor=c.reconnect_factor,
            jitter=c.reconnect_jitter,
            handshake_timeout_s=c.handshake_timeout_s,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What follows the end of a connection."""

    state: LinkState  # IDLE, WAITING or FAILED
    retry_in_s: float | None = None  # WAITING: sleep this long, then try again
    failures: int = 0  # consecutive failures so far
    healthy: bool = False  # the connection that ended had reached LIVE


class Link:
    def __init__(self, policy: RetryPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._rng = rng if rng is not None else random.Random()
        self._state = LinkState.IDLE
        self._delays = self._new_backoff()
        self.failures = 0
        self.attempts = 0  # every attempt ever (connection ids are numbered with it)
        self.connection_id = ""
        self._deadline: float | None = None

    @property
    def state(self) -> LinkState:
        return self._state

    def _set(self, new: LinkState, why: str) -> None:
        if new is not self._state:
            logger.debug("= link %s -> %s (%s)", self._state.value, new.value, why)
            self._state = new

    def _new_backoff(self) -> Iterator[float]:
        p = self.policy
        return backoff(
            initial_s=p.initial_s,
            max_s=max(p.max_s, p.initial_s),
            factor=p.factor,
            jitter=p.jitter,
            rng=self._rng,
        )

    # --- one attempt ----------------------------------------------------------------------

    def opening(self, connection_id: str) -> None:
        """A new attempt starts (the socket is being opened)."""
        self.attempts += 1
        self.connection_id = connection_id
        self._deadline = None
        self._set(LinkState.OPENING, "opening")

    def opened(self, now: float) -> None:
        """The WebSocket is open: the NavTalk handshake must complete by the deadline."""
        self._deadline = now + self.policy.handshake_timeout_s
        self._set(LinkState.HANDSHAKE, "socket open")

    def session_created(self) -> None:
        """A healthy session (the backoff resets when it ends); the same deadline now waits
        for realtime.session.updated, without which no audio may be sent."""
        if self._state is LinkState.HANDSHAKE:
            self._set(LinkState.LIVE, "session created")

    def session_updated(self) -> None:
        """The handshake is complete: no deadline any more."""
        self._deadline = None

    @property
    def deadline(self) -> float | None:
        """When the handshake (socket open to realtime.session.updated) must be done by."""
        live = self._state in (LinkState.HANDSHAKE, LinkState.LIVE)
        return self._deadline if live else None

    def handshake_expired(self, now: float) -> bool:
        d = self.deadline
        return d is not None and now >= d

    def ended(self, failure: FailureKind | None) -> Outcome:
        """The connection is over. ``failure`` None means we ended it on purpose."""
        healthy = self._state is LinkState.LIVE
        self._deadline = None
        if healthy:
            self._delays, self.failures = self._new_backoff(), 0
        if failure is None:
            self._set(LinkState.IDLE, "ended by us")
            return Outcome(LinkState.IDLE, healthy=healthy)
        self.failures += 1
        p = self.policy
        if (
            failure is FailureKind.PERMANENT
            or not p.reconnect
            or 0 < p.max_attempts <= self.failures
        ):
            failures, self.failures = self.failures, 0
            self._delays = self._new_backoff()
            self._set(LinkState.FAILED, "gave up")
            return Outcome(LinkState.FAILED, failures=failures, healthy=healthy)
        delay = next(self._delays)
        self._set(LinkState.WAITING, "retry")
        return Outcome(LinkState.WAITING, retry_in_s=delay, failures=self.failures, healthy=healthy)
