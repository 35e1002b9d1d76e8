"""When the display (re)negotiates WebRTC: a sans-I/O policy, ``now`` passed in.

::

    NO_SESSION --live--> WAITING_REMOTE --server offer--> ANSWERING --answered--> NEGOTIATED
                              |  timeout                    (no deadline:          |  ok
                              v                              never offer here)     v
                          OFFER ourselves --> OFFERED --server answer--> NEGOTIATED  CONNECTED
    any step but ANSWERING: timeout, or connection failed/closed --> OFFER (a fresh one)
    CONNECTED, but a track that delivered stops for stall_s (or none delivers) --> OFFER
    session not live --> NO_SESSION (close the peer connection)

:class:`RemoteSignals` keeps the bookkeeping of the signaling itself: which server offers
were answered (each ``(connection_id, sdp)`` at most once: a latched offer is re-sent to a
display that starts, and may arrive twice), which connections are over (their offers and
candidates are never used), and the candidates that arrive before their offer.

- The server offers at the start of a session, so a display that sees the
  session *become* live waits for that offer (``timeout_s``).
- A display that starts while the session is already live (it was restarted,
  e.g. after a crash) missed the server's offer: it offers itself after a short
  grace, in case the server's offer is on its way.
- A failed or closed connection, or a step that takes longer than ``timeout_s``,
  ends in a fresh offer of ours, while the session is live.
"""

from __future__ import annotations

import collections
import enum
import logging

from agent.messages import IceCandidate

__all__ = [
    "Action",
    "CandidateVerdict",
    "NegotiationPolicy",
    "OfferVerdict",
    "RemoteSignals",
    "Step",
]

log = logging.getLogger(__name__)

# Wait this long for a server offer before offering ourselves. A latched offer comes with the
# bus's latch replies right after start, within a few ms: this is margin for a loaded host.
MID_SESSION_GRACE_S = 0.3


class Step(enum.StrEnum):
    NO_SESSION = "no_session"
    WAITING_REMOTE = "waiting_remote"  # expecting the server's offer
    ANSWERING = "answering"  # a server offer arrived and is being answered
    OFFERED = "offered"  # our offer is out, no answer yet
    NEGOTIATED = "negotiated"  # descriptions exchanged, ICE/DTLS under way
    CONNECTED = "connected"


class Action(enum.StrEnum):
    NONE = "none"
    OFFER = "offer"  # make a fresh offer and send it through the session
    CLOSE = "close"  # the session ended: drop the peer connection


class NegotiationPolicy:
    def __init__(self, timeout_s: float = 10.0, stall_s: float = 0.0) -> None:
        """``stall_s``: a connected track with no frame for this long is renegotiated (0: off)."""
        self.timeout_s = timeout_s
        self.stall_s = stall_s
        self._step = Step.NO_SESSION
        self._deadline: float | None = None
        self._connected_at = 0.0
        self._last_frame: dict[str, float] = {}  # kind -> last frame (this connection)
        self.stalls = 0
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

    def on_remote_offer_received(self) -> None:
        """A server offer to answer arrived (it wins over a pending offer of ours): no offer
        of ours until it is answered."""
        self._go(Step.ANSWERING, None)

    def on_remote_offer(self, now: float) -> None:
        """We answered the server's offer."""
        self._go(Step.NEGOTIATED, now + self.timeout_s)

    def on_answer_failed(self, now: float) -> None:
        """The server's offer could not be answered (an SDP we cannot take): wait for another
        one, then offer ourselves, the only way left to get the avatar."""
        self._go(Step.WAITING_REMOTE, now + self.timeout_s)

    @property
    def may_offer(self) -> bool:
        """False while a server offer is being answered."""
        return self._step is not Step.ANSWERING

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
            self._connected_at = now
            self._last_frame = {}
        elif state in ("failed", "closed") and self._step is not Step.ANSWERING:
            return Action.OFFER
        return Action.NONE

    def on_frame(self, kind: str, now: float) -> None:
        """A frame of the current connection's ``kind`` track ("audio"/"video") arrived."""
        self._last_frame[kind] = now

    def stalled(self, now: float) -> str:
        """What stalled on the connected link ("" = nothing): a track that delivered and then
        stopped for ``stall_s``, or every track when none delivered for ``stall_s``."""
        if self._step is not Step.CONNECTED or not self.stall_s:
            return ""
        if not self._last_frame:
            return "audio+video" if now - self._connected_at >= self.stall_s else ""
        quiet = [k for k, t in sorted(self._last_frame.items()) if now - t >= self.stall_s]
        return "+".join(quiet)

    def tick(self, now: float) -> Action:
        if self._deadline is not None and now >= self._deadline and self.may_offer:
            log.info("= negotiation step %s timed out", self._step)
            return Action.OFFER
        stalled = self.stalled(now)
        if stalled:
            self.stalls += 1
            log.info("= avatar %s stalled for %.1f s: renegotiating", stalled, self.stall_s)
            self._go(Step.WAITING_REMOTE, None)  # _offer() moves on to OFFERED
            return Action.OFFER
        return Action.NONE


class OfferVerdict(enum.StrEnum):
    ANSWER = "answer"
    DUPLICATE = "duplicate"  # this (connection_id, sdp) was answered already
    STALE = "stale"  # from a connection that is over


class CandidateVerdict(enum.StrEnum):
    ADD = "add"  # belongs to the peer connection we have
    HOLD = "hold"  # its offer has not come yet: kept until it does
    DROP = "drop"  # a connection that is over, or a duplicate


class RemoteSignals:
    """Server offers and candidates, sorted by the connection they belong to.

    ``connection_id`` "" (a sender that does not stamp them) matches whatever is current.
    """

    def __init__(self, *, remember: int = 16, max_held: int = 64) -> None:
        self.current = ""  # the session's connection, as session.state and offers say
        self.peer_connection = ""  # the connection our peer connection was negotiated for
        self._answered: collections.deque[tuple[str, int]] = collections.deque(maxlen=remember)
        self._retired: collections.deque[str] = collections.deque(maxlen=remember)
        self._held: collections.deque[IceCandidate] = collections.deque(maxlen=max_held)
        self._added: set[str] = set()  # candidates added to the current peer connection
        self.duplicates = 0
        self.stale = 0

    def _switch(self, connection_id: str) -> None:
        if connection_id and connection_id != self.current:
            if self.current:
                self._retired.append(self.current)
                log.info("= connection %s is over; now %s", self.current, connection_id)
                self._held = collections.deque(
                    (c for c in self._held if c.connection_id != self.current),
                    maxlen=self._held.maxlen,
                )
            self.current = connection_id

    def on_session(self, connection_id: str) -> None:
        """session.state named the session's current connection ("" = none known)."""
        if connection_id not in self._retired:
            self._switch(connection_id)

    def offer(self, connection_id: str, sdp: str) -> OfferVerdict:
        """Whether to answer a server offer; ANSWER records it as answered."""
        if connection_id and connection_id in self._retired:
            self.stale += 1
            return OfferVerdict.STALE
        key = (connection_id, hash(sdp))
        if key in self._answered:
            self.duplicates += 1
            return OfferVerdict.DUPLICATE
        self._answered.append(key)
        self._switch(connection_id)
        return OfferVerdict.ANSWER

    def negotiating(self, connection_id: str) -> list[IceCandidate]:
        """Our peer connection is now (being) negotiated for ``connection_id`` (an answered
        offer, or our own): the candidates held for it, to add once the remote description is
        set."""
        self.peer_connection = connection_id
        self._added = set()
        mine = [c for c in self._held if c.connection_id == connection_id]
        self._held = collections.deque(
            (c for c in self._held if c.connection_id != connection_id),
            maxlen=self._held.maxlen,
        )
        out = []
        for c in mine:
            if c.candidate not in self._added:
                self._added.add(c.candidate)
                out.append(c)
        return out

    def candidate(self, c: IceCandidate) -> CandidateVerdict:
        if c.connection_id and c.connection_id in self._retired:
            self.stale += 1
            return CandidateVerdict.DROP
        if not c.connection_id or c.connection_id == self.peer_connection:
            if c.candidate in self._added:
                self.duplicates += 1
                return CandidateVerdict.DROP
            self._added.add(c.candidate)
            return CandidateVerdict.ADD
        self._held.append(c)
        return CandidateVerdict.HOLD

    def answer_matches(self, connection_id: str) -> bool:
        """A server answer belongs to our own offer's connection."""
        return _matches(connection_id, self.peer_connection)


def _matches(connection_id: str, peer_connection: str) -> bool:
    return not connection_id or not peer_connection or connection_id == peer_connection
