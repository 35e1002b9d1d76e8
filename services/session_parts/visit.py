"""The session's visit relay: a thin shell over :class:`agent.navtalk.policy.SessionPolicy`.

It feeds the policy (bus messages, server events, the connection's ends, a clock tick
every :data:`TICK_S`) and carries out its actions: a Connect sets the session's *wanted*
flag (the connection loop opens the socket, the link retries), a Close ends the session
on purpose, a SayWrapUp is a text turn asking the model for the wrap-up line.

It counts the seconds a socket is open against the day's (and month's) budget
(:class:`agent.navtalk.budget.Budget`, saved to a small JSON file so a restart keeps the
day) and tells the policy when it is spent. It also keeps the current visit's user
turns, in memory only: they are what is replayed
after a dropped connection, and a new visit starts with none (guest B never hears guest
A's words; the SQLite history is a record, never replayed).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.errors import ProtocolError
from agent.navtalk import events as ev
from agent.navtalk import policy as pol
from agent.navtalk.budget import MAX_FILE_BYTES, Budget, News
from agent.navtalk.settings import SessionSettings
from agent.navtalk.url import RedactFilter
from services.session_parts.audio import MicRelay
from services.session_parts.conn import Connection

__all__ = ["TICK_S", "VisitRelay", "policy_config"]

log = logging.getLogger("services.session")
log.addFilter(RedactFilter())

TICK_S = 0.1  # the policy's clock: timeouts are decided within this
SPEECH_GRACE_S = 0.3  # audio still on its way to the speaker after audio.done
SAVE_EVERY_S = 10.0  # the budget file is written after this much session time (and at ends)
_ACTIVITY = (ev.SpeechStarted, ev.SpeechStopped, ev.InputTranscriptionCompleted)
_RESPONDING = (ev.TranscriptDelta, ev.AudioDelta)


def policy_config(c: SessionSettings) -> pol.PolicyConfig:
    triggers = {pol.Trigger(t) for t in c.start_triggers}
    if not c.autostart:
        triggers.discard(pol.Trigger.ALWAYS)
    return pol.PolicyConfig(
        triggers=frozenset(triggers),
        idle_timeout_s=c.idle_timeout_s,
        max_session_s=c.max_session_s,
        wrapup_text=c.wrapup_text,
        wrapup_max_s=c.wrapup_max_s,
        speech_grace_s=SPEECH_GRACE_S,
        voice_cooldown_s=c.voice_cooldown_s,
        face_gone_s=c.face_gone_s,
        preroll_ms=c.preroll_ms,
    )


class VisitRelay:
    def __init__(
        self,
        cfg: SessionSettings,
        *,
        wanted: asyncio.Event,
        mic: MicRelay,
        current: Callable[[], Connection | None],
        end: Callable[[str], Awaitable[None]],
        publish: Callable[[], None],
    ) -> None:
        self.policy = pol.SessionPolicy(policy_config(cfg))
        self.replay_count = cfg.history_replay_count
        self.turns: collections.deque[str] = collections.deque(maxlen=max(1, self.replay_count))
        self._wanted, self._mic, self._current = wanted, mic, current
        self._end, self._publish = end, publish
        self.wrapups = 0
        self.detail = ""
        self.budget = Budget(
            cfg.budget_daily_minutes * 60,
            cfg.budget_warn_fraction,
            monthly_s=cfg.budget_monthly_minutes * 60,
        )
        self._budget_path = Path(cfg.budget_path).expanduser()
        self._unsaved_s = 0.0

    @property
    def phase(self) -> pol.VisitPhase:
        return self.policy.phase

    def replay(self) -> list[str]:
        """This visit's last user turns, oldest first (resent after a dropped connection)."""
        return list(self.turns) if self.replay_count > 0 else []

    def remember(self, text: str) -> None:
        if text.strip():
            self.turns.append(text)

    async def feed(self, event: pol.Event) -> None:
        for action in self.policy.feed(event):
            await self._do(action)

    async def on_server_event(self, event: ev.Event) -> None:
        now = time.monotonic()
        if isinstance(event, ev.SessionUpdated):
            await self.feed(pol.Server(pol.ServerKind.UPDATED, now))
        elif isinstance(event, ev.AudioDone):
            await self.feed(pol.Server(pol.ServerKind.AUDIO_DONE, now))
        elif isinstance(event, _RESPONDING):
            await self.feed(pol.Server(pol.ServerKind.RESPONDING, now))
        elif isinstance(event, _ACTIVITY):
            await self.feed(pol.Server(pol.ServerKind.ACTIVITY, now))

    async def tick_loop(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            await self._count(now - last, now)
            last = now
            await self.feed(pol.Tick(now))

    # --- the budget ---------------------------------------------------------------------------

    async def open_budget(self) -> None:
        """Read today's and this month's use back (a restart resets neither)."""
        if not self.budget.active:
            return
        data = await asyncio.to_thread(_read_small, self._budget_path)
        if data is None:
            self.budget.roll(_today())
        else:
            self.budget.load(data, _today())
        b = self.budget
        log.info("= budget: %.1f of %.1f min used today, %.1f of %.1f min this month",
                 b.used_s / 60, b.daily_s / 60, b.month_used_s / 60, b.monthly_s / 60)  # fmt: skip
        if self.budget.spent:
            log.warning("= the session budget is spent: no session until %s", b.until)
            await self.feed(pol.Spent(True, time.monotonic()))

    async def save_budget(self) -> None:
        if not self.budget.active or self._unsaved_s <= 0:
            return
        self._unsaved_s = 0.0
        try:
            await asyncio.to_thread(_write_atomic, self._budget_path, self.budget.dump())
        except OSError as exc:
            log.warning("= budget not saved: %s", exc)

    async def _count(self, dt: float, now: float) -> None:
        b = self.budget
        if not b.active:
            return
        was_spent = b.spent
        if b.roll(_today()) and was_spent and not b.spent:
            log.info("= a new day or month: the session budget is available again")
            await self.feed(pol.Spent(False, now))
        if self._current() is None:  # no socket, no cost: save what the last one used
            await self.save_budget()
            return
        news = b.add(dt, _today())
        self._unsaved_s += dt
        if news is News.WARNING:
            log.warning("= %.0f %% of the session budget is used (day or month)", b.fraction * 100)
        elif news is News.SPENT:
            log.warning("= the session budget is spent: no session until %s", b.until)
            await self.save_budget()
            await self.feed(pol.Spent(True, now))
        if self._unsaved_s >= SAVE_EVERY_S:
            await self.save_budget()

    async def _do(self, action: pol.Action) -> None:
        match action:
            case pol.Connect(visit=visit, trigger=trigger):
                log.info("= visit %d starts (%s)", visit, trigger.value)
                self.turns.clear()  # a new guest: none of the last one's words
                self._mic.backlog.clear()
                self._wanted.set()
            case pol.RequestPreroll(duration_ms=ms):
                self._mic.request_preroll(ms)
            case pol.SayWrapUp(text=text):
                await self._say(text)
            case pol.Close(reason=reason):
                await self._end(reason)
            case pol.PublishVisit(detail=detail):
                self.detail = detail
                self._publish()

    async def _say(self, text: str) -> None:
        conn = self._current()
        try:
            if conn is None:
                raise ProtocolError("no NavTalk connection")
            await conn.send(*conn.proto.text_turn(text))
            self.wrapups += 1
            log.info("> asked the model for the wrap-up line")
        except Exception as exc:  # nobody to say it to: close now
            log.info("= no wrap-up line (%s): closing", exc)
            await self.feed(pol.Command("end", "wrap-up impossible", time.monotonic()))


def _today() -> str:
    return time.strftime("%Y-%m-%d")  # the kiosk's local day


def _read_small(path: Path) -> bytes | None:
    try:
        with path.open("rb") as f:
            return f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("= budget file unreadable: %s", exc)
        return None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
