"""When the display (re)negotiates WebRTC: a sans-I/O policy, ``now`` passed in.

::

    NO_SESSION --live--> WAITING_REMOTE --server offer answered--> NEGOTIATED --ok--> CONNECTED
                              |  timeout                               ^
                              v                                        | server answer
                          OFFER ourselves --> OFFERED -----------------+
    any step: timeout, or connection failed/closed --> OFFER (a fresh one)
    session not live --> NO_SESSION (close the peer connection)

- The server offers at the start of a session, so a display that sees the
  session *become* live waits for that offer (``timeout_s``).
- A display that starts while the session is already live (it was restarted,
  e.g. after a crash) missed the server's offer: it offers itself after a short
  grace, in case the server's offer is on its way.
- A failed or closed connection, or a step that takes longer than ``timeout_s``,
  ends in a fresh offer of ours, while the session is live.
"""

from __future__ import annotations

import enum
import logging

__all__ = ["Action", "NegotiationPolicy", "Step"]

log = logging.getLogger(__name__)

MID_SESSION_GRACE_S = 0.5  # wait this long for a server offer before offering ourselves


class Step(enum.StrEnum):
    NO_SESSION = "no_session"
    WAITING_REMOTE = "waiting_remote"  # expecting the server's offer
    OFFERED = "offered"  # our offer is out, no answer yet
    NEGOTIATED = "negotiated"  # descriptions exchanged, ICE/DTLS under way
    CONNECTED = "connected"


class Action(enum.StrEnum):
    NONE = "none"
    OFFER = "offer"  # make a fresh offer and send it through the session
    CLOSE = "close"  # the session ended: drop the peer connection


class NegotiationPolicy:
    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._step = Step.NO_SESSION
        self._deadline: float | None = None
        self._seen_session = False
        self.offers_made = 0

    @property
    def step(self) -> Step:
        return self._step

    def _go(self, step: Step, deadline: float | None) -> None:
        if step != self._step:
            log.info("= negotiation %s -> %s", self._step, step)
        self._step = step
        self._deadline = deadline

    def on_session(self, live: bool, now: float) -> Action:
        first = not self._seen_session
        self._seen_session = True
        if not live:
            was = self._step
            self._go(Step.NO_SESSION, None)
            return Action.NONE if was is Step.NO_SESSION else Action.CLOSE
        if self._step is not Step.NO_SESSION:
            return Action.NONE
        grace = MID_SESSION_GRACE_S if first else self.timeout_s
        self._go(Step.WAITING_REMOTE, now + grace)
        return Action.NONE

    def on_remote_offer(self, now: float) -> None:
        """We answered the server's offer (it wins over a pending offer of ours)."""
        self._go(Step.NEGOTIATED, now + self.timeout_s)

    def on_offer_sent(self, now: float) -> None:
        self.offers_made += 1
        self._go(Step.OFFERED, now + self.timeout_s)

    def on_answer(self, now: float) -> None:
        if self._step is Step.OFFERED:
            self._go(Step.NEGOTIATED, now + self.timeout_s)

    def on_connection_state(self, state: str, now: float) -> Action:
        if self._step is Step.NO_SESSION:
            return Action.NONE
        if state == "connected":
            self._go(Step.CONNECTED, None)
        elif state in ("failed", "closed"):
            return Action.OFFER
        return Action.NONE

    def tick(self, now: float) -> Action:
        if self._deadline is not None and now >= self._deadline:
            log.info("= negotiation step %s timed out", self._step)
            return Action.OFFER
        return Action.NONE
