"""The kiosk's session policy, sans I/O: when a conversation opens and when it ends.

A *visit* is one guest's conversation. The policy decides when a visit starts (a start
trigger), when it ends (an end trigger) and what the shell must do about it; the shell
(:mod:`services.session_parts.visit`) feeds it events with ``now`` and carries out the
actions it returns. Retries of a dropped connection stay with :mod:`agent.navtalk.link`::

    IDLE ──trigger──▶ STARTING ──session.updated──▶ ENGAGED ──end trigger──▶ CLOSING ──┐
      ▲  (always, voice,   │ Connect               │ (idle, max length,     SayWrapUp,  │
      │   button, face)    │                       │  end_conversation,     then Close  │
      │                    └── failed / ended ─────┴── face gone, end) ─────────────────┤
      └──────────────────────── the connection ended (we closed it, or it failed) ◀─────┘

- Start triggers, any combination: ``always`` (at service start), ``voice`` (a local VAD
  onset; the shell asks the mic for its pre-roll so the guest's first words are sent once
  the session is ready), ``button`` (``control.session start``), ``face``.
- End triggers: ``control.session end`` (at once); ``end_after_speech`` (the tool
  ``end_conversation``: after the avatar's last words); no guest or avatar speech for
  ``idle_timeout_s``; ``max_session_s`` after the start; the face gone for ``face_gone_s``;
  a failed connection (insufficient balance, a refused license); the day's budget spent
  (:class:`Spent`: no visit starts while it is). Idle and maximum length
  first ask the model for a wrap-up line (:attr:`SayWrapUp`) and close once it was said.
- After an end the policy is IDLE at once; a voice onset is ignored for
  ``voice_cooldown_s`` (the avatar's goodbye in the room must not open the next visit).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

__all__ = [
    "Action",
    "Close",
    "Command",
    "Connect",
    "Ended",
    "EndKind",
    "Event",
    "Face",
    "PolicyConfig",
    "PublishVisit",
    "RequestPreroll",
    "SayWrapUp",
    "Server",
    "ServerKind",
    "SessionPolicy",
    "Speaker",
    "Spent",
    "Start",
    "Tick",
    "Trigger",
    "Vad",
    "VisitPhase",
]

logger = logging.getLogger(__name__)


class VisitPhase(enum.StrEnum):
    IDLE = "idle"  # no conversation: waiting for a guest
    STARTING = "starting"  # a trigger fired: connecting until realtime.session.updated
    ENGAGED = "engaged"  # the conversation is live
    CLOSING = "closing"  # ending: the wrap-up or last words, then the socket closes


class Trigger(enum.StrEnum):
    ALWAYS = "always"
    VOICE = "voice"
    BUTTON = "button"
    FACE = "face"


class ServerKind(enum.Enum):
    CONNECTED = "connected"  # conversation.connected.success
    CREATED = "created"  # realtime.session.created
    UPDATED = "updated"  # realtime.session.updated: audio flows
    ACTIVITY = "activity"  # the guest spoke (server VAD, transcript)
    RESPONDING = "responding"  # a piece of the avatar's response (audio or transcript delta)
    AUDIO_DONE = "audio_done"  # the avatar's response audio is complete


class EndKind(enum.Enum):
    BY_US = "by_us"  # we closed it (an end trigger): the visit is over
    RETRYING = "retrying"  # dropped; the link reconnects (the visit goes on)
    FAILED = "failed"  # permanent failure (refused, insufficient balance): the visit is over


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """The service started."""

    now: float


@dataclass(frozen=True, slots=True)
class Vad:
    speaking: bool
    now: float


@dataclass(frozen=True, slots=True)
class Face:
    seen: bool
    now: float


@dataclass(frozen=True, slots=True)
class Command:
    """``control.session`` (the button, the console, the tool ``end_conversation``)."""

    action: str  # "start" | "end" | "end_after_speech"
    reason: str
    now: float


@dataclass(frozen=True, slots=True)
class Server:
    kind: ServerKind
    now: float


@dataclass(frozen=True, slots=True)
class Speaker:
    playing: bool
    now: float


@dataclass(frozen=True, slots=True)
class Ended:
    """The connection ended and the link decided what follows."""

    kind: EndKind
    detail: str
    now: float


@dataclass(frozen=True, slots=True)
class Tick:
    now: float


@dataclass(frozen=True, slots=True)
class Spent:
    """The day's budget of session time is used up (or, at a new day, no longer)."""

    spent: bool
    now: float


Event = Start | Vad | Face | Command | Server | Speaker | Ended | Tick | Spent


# --- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a session for visit number ``visit`` (a new visit: no turns of another)."""

    visit: int
    trigger: Trigger


@dataclass(frozen=True, slots=True)
class RequestPreroll:
    """Ask the mic for its recent audio (the words that triggered the visit)."""

    duration_ms: int


@dataclass(frozen=True, slots=True)
class SayWrapUp:
    """Ask the model to say ``text`` (the wrap-up line) before the socket closes."""

    text: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close the session on purpose (no reconnect)."""

    reason: str


@dataclass(frozen=True, slots=True)
class PublishVisit:
    phase: VisitPhase
    detail: str


Action = Connect | RequestPreroll | SayWrapUp | Close | PublishVisit


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    triggers: frozenset[Trigger] = frozenset({Trigger.ALWAYS, Trigger.BUTTON})
    idle_timeout_s: float = 0.0  # no guest or avatar speech this long ends the visit (0 = off)
    max_session_s: float = 0.0  # a visit ends this long after its start (0 = off)
    face_gone_s: float = 0.0  # no face this long ends the visit (face trigger only; 0 = off)
    wrapup_text: str = ""  # asked of the model before an idle / max-length close ("" = none)
    wrapup_max_s: float = 15.0  # the wrap-up or last words may take this long, then close
    speech_grace_s: float = 0.3  # audio still on its way to the speaker after audio.done
    voice_cooldown_s: float = 0.5  # voice onsets ignored this long after a visit ended
    preroll_ms: int = 500  # pre-roll asked of the mic at a voice (or any) start (0 = none)


@dataclass(slots=True)
class _Visit:
    number: int
    started_at: float
    last_activity: float
    closing_since: float = 0.0
    wait_speech: bool = False  # closing after the avatar's next words
    audio_done_at: float | None = None
    skip_dones: int = 0  # audio.done of a response already running when the wrap-up was asked
    close_sent: bool = False


@dataclass
class SessionPolicy:
    """Feed events with :meth:`feed`; carry out the actions it returns, in order."""

    cfg: PolicyConfig = field(default_factory=PolicyConfig)
    phase: VisitPhase = VisitPhase.IDLE
    visits: int = 0  # visits started so far
    ignored: int = 0  # events that meant nothing in their phase
    _visit: _Visit | None = None
    _speaking: bool = False
    _playing: bool = False
    _responding: bool = False  # a response's deltas came and its audio.done did not yet
    _spent: bool = False  # the budget is used up: no new visit
    _face_lost_at: float | None = None
    _cooldown_until: float = 0.0
    _out: list[Action] = field(default_factory=list)

    @property
    def visit(self) -> int:
        """The current (or last) visit's number, 0 before the first."""
        return self.visits

    def feed(self, event: Event) -> list[Action]:
        self._out = []
        match event:
            case Start(now=now):
                if self._can_start(Trigger.ALWAYS):
                    self._start(Trigger.ALWAYS, now)
                elif not self._spent:
                    self._set(VisitPhase.IDLE, "ready")
            case Vad(speaking=speaking, now=now):
                self._speaking = speaking
                self._activity(now)
                if speaking and self._can_start(Trigger.VOICE):
                    if self._playing or now < self._cooldown_until:
                        self.ignored += 1
                    else:
                        self._start(Trigger.VOICE, now)
            case Face(seen=seen, now=now):
                self._face_lost_at = None if seen else now
                if seen and self._can_start(Trigger.FACE):
                    self._start(Trigger.FACE, now)
            case Command():
                self._command(event)
            case Server(kind=kind, now=now):
                self._server(kind, now)
            case Speaker(playing=playing, now=now):
                self._playing = playing
                self._activity(now)
            case Ended():
                self._ended(event)
            case Tick(now=now):
                self._tick(now)
            case Spent(spent=spent, now=now):
                self._spent = spent
                if spent and self.phase is VisitPhase.ENGAGED:
                    self._wrap_up("the budget is spent", now)
                elif spent and self.phase is VisitPhase.STARTING:
                    self._close("the budget is spent", now)
                elif self.phase is VisitPhase.IDLE:
                    self._set(VisitPhase.IDLE, "budget spent" if spent else "ready")
        return self._out

    # --- transitions ----------------------------------------------------------------------

    def _set(self, phase: VisitPhase, detail: str) -> None:
        if phase is not self.phase:
            logger.info("= visit %s -> %s (%s)", self.phase.value, phase.value, detail)
        self.phase = phase
        self._out.append(PublishVisit(phase, detail))

    def _can_start(self, trigger: Trigger) -> bool:
        if self.phase is not VisitPhase.IDLE or trigger not in self.cfg.triggers:
            return False
        if self._spent:
            self.ignored += 1
            self._set(VisitPhase.IDLE, "budget spent")
        return not self._spent

    def _start(self, trigger: Trigger, now: float) -> None:
        self.visits += 1
        self._visit = _Visit(self.visits, started_at=now, last_activity=now)
        self._set(VisitPhase.STARTING, f"visit {self.visits} ({trigger.value})")
        if self.cfg.preroll_ms > 0:
            self._out.append(RequestPreroll(self.cfg.preroll_ms))
        self._out.append(Connect(self.visits, trigger))

    def _activity(self, now: float) -> None:
        if self._visit is not None and self.phase is not VisitPhase.CLOSING:
            self._visit.last_activity = now

    def _close(self, reason: str, now: float) -> None:
        v = self._visit
        if v is None:
            return
        if self.phase is not VisitPhase.CLOSING:
            v.closing_since = now
            self._set(VisitPhase.CLOSING, reason)
        if not v.close_sent:
            v.close_sent = True
            self._out.append(Close(reason))

    def _wrap_up(self, reason: str, now: float) -> None:
        """End after a wrap-up line (or at once when there is none)."""
        v = self._visit
        if v is None or not self.cfg.wrapup_text:
            self._close(reason, now)
            return
        v.closing_since, v.wait_speech, v.audio_done_at = now, True, None
        v.skip_dones = 1 if self._responding else 0  # the wrap-up comes after that response
        self._set(VisitPhase.CLOSING, reason)
        self._out.append(SayWrapUp(self.cfg.wrapup_text))

    def _command(self, c: Command) -> None:
        if c.action == "start":
            if self._can_start(Trigger.BUTTON):
                self._start(Trigger.BUTTON, c.now)
            else:
                self.ignored += 1
                logger.info("= start ignored: visit %s, triggers %s", self.phase.value,
                            sorted(self.cfg.triggers))  # fmt: skip
        elif self._visit is None or self.phase is VisitPhase.IDLE:
            self.ignored += 1
            self._set(VisitPhase.IDLE, "ready")
        elif c.action == "end" or self.phase is VisitPhase.STARTING:
            self._close(c.reason or "ended", c.now)
        elif self.phase is VisitPhase.ENGAGED:  # end_after_speech: after the avatar's words
            v = self._visit
            v.closing_since, v.wait_speech, v.audio_done_at = c.now, True, None
            self._set(VisitPhase.CLOSING, c.reason or "end after speech")
        else:
            self.ignored += 1  # already closing

    def _server(self, kind: ServerKind, now: float) -> None:
        v = self._visit
        if kind is ServerKind.RESPONDING or kind is ServerKind.AUDIO_DONE:
            self._responding = kind is ServerKind.RESPONDING
        if v is None or self.phase is VisitPhase.IDLE:
            self.ignored += 1  # a late event of a closed connection
            return
        if kind is ServerKind.UPDATED:
            v.last_activity = now
            if self.phase is VisitPhase.STARTING:
                self._set(VisitPhase.ENGAGED, f"visit {v.number}")
        elif kind is ServerKind.ACTIVITY or kind is ServerKind.RESPONDING:
            self._activity(now)
        elif kind is ServerKind.AUDIO_DONE:
            self._activity(now)
            if self.phase is VisitPhase.CLOSING and v.wait_speech and v.skip_dones:
                v.skip_dones -= 1
            elif self.phase is VisitPhase.CLOSING and v.wait_speech:
                v.audio_done_at = now

    def _ended(self, e: Ended) -> None:
        if self.phase is VisitPhase.IDLE:
            self.ignored += 1
            return
        if e.kind is EndKind.RETRYING:
            if self.phase is VisitPhase.CLOSING:  # dropped while ending: the end is done
                self._close("ended while closing", e.now)
            return  # STARTING / ENGAGED: the link reconnects, the visit goes on
        self._visit, self._responding = None, False
        self._cooldown_until = e.now + self.cfg.voice_cooldown_s
        ready = "budget spent" if self._spent else "ready"
        self._set(VisitPhase.IDLE, e.detail if e.kind is EndKind.FAILED else ready)

    def _tick(self, now: float) -> None:
        v = self._visit
        if v is None:
            return
        c = self.cfg
        if self.phase is VisitPhase.ENGAGED:
            lost = self._face_lost_at
            face_gone = (
                Trigger.FACE in c.triggers
                and c.face_gone_s > 0
                and lost is not None
                and now - lost >= c.face_gone_s
            )
            if c.max_session_s > 0 and now - v.started_at >= c.max_session_s:
                self._wrap_up("maximum session length", now)
            elif face_gone:
                self._wrap_up("the guest left", now)
            elif self._speaking or self._playing:
                v.last_activity = now
            elif c.idle_timeout_s > 0 and now - v.last_activity >= c.idle_timeout_s:
                self._wrap_up("idle", now)
        elif self.phase is VisitPhase.CLOSING and not v.close_sent:
            said = v.audio_done_at is not None and now - v.audio_done_at >= c.speech_grace_s
            if said and not self._playing:
                self._close("the last words were said", now)
            elif now - v.closing_since >= c.wrapup_max_s:
                logger.warning("= the avatar still speaks %.0f s into closing", c.wrapup_max_s)
                self._close("closing took too long", now)
        elif self.phase is VisitPhase.STARTING and c.max_session_s > 0:
            if now - v.started_at >= c.max_session_s:
                self._close("maximum session length (never ready)", now)
