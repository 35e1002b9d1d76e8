"""The conversation store: user and assistant transcripts in SQLite on the device.

Only user turns are replayed to NavTalk on connect (the server keeps the
assistant's) [seed]; both are stored for the device's own record. Retention
keeps the table bounded by age and by row count. Times are wall-clock seconds
passed in by the caller (no clock reads here).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

__all__ = ["ConversationStore", "HistoryThread", "Role", "Turn", "export_lines"]

_T = TypeVar("_T")

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    wall_s REAL NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    session_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS turns_role_id ON turns (role, id);
CREATE INDEX IF NOT EXISTS turns_wall ON turns (wall_s);
"""


class Role(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class Turn:
    wall_s: float
    role: Role
    text: str
    session_id: str = ""


class ConversationStore:
    """A SQLite file (or ``":memory:"``). Not thread-safe: use it from one thread."""

    def __init__(self, path: str | Path, *, max_age_s: float = 0.0, max_rows: int = 0) -> None:
        if str(path) != ":memory:":
            path = Path(path).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.max_age_s = max_age_s
        self.max_rows = max_rows
        self._db = sqlite3.connect(self.path, isolation_level=None)  # autocommit
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ConversationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, role: Role, text: str, *, wall_s: float, session_id: str = "") -> None:
        """Store one turn (empty text is ignored)."""
        text = text.strip()
        if not text:
            return
        self._db.execute(
            "INSERT INTO turns (wall_s, role, text, session_id) VALUES (?, ?, ?, ?)",
            (wall_s, role.value, text, session_id),
        )

    def last_user_messages(self, n: int) -> list[str]:
        """The last ``n`` user turns, oldest first (the replay order)."""
        if n <= 0:
            return []
        rows = self._db.execute(
            "SELECT text FROM turns WHERE role = 'user' ORDER BY id DESC LIMIT ?", (n,)
        ).fetchall()
        return [str(r[0]) for r in reversed(rows)]

    def turns(self) -> list[Turn]:
        rows = self._db.execute(
            "SELECT wall_s, role, text, session_id FROM turns ORDER BY id"
        ).fetchall()
        return [Turn(float(r[0]), Role(r[1]), str(r[2]), str(r[3])) for r in rows]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM turns").fetchone()[0])

    def prune(self, *, wall_s: float) -> int:
        """Apply retention: drop turns older than ``max_age_s`` and beyond ``max_rows``."""
        removed = 0
        if self.max_age_s > 0:
            cur = self._db.execute("DELETE FROM turns WHERE wall_s < ?", (wall_s - self.max_age_s,))
            removed += cur.rowcount
        if self.max_rows > 0:
            cur = self._db.execute(
                "DELETE FROM turns WHERE id NOT IN (SELECT id FROM turns ORDER BY id DESC LIMIT ?)",
                (self.max_rows,),
            )
            removed += cur.rowcount
        if removed:
            logger.info("= history: retention removed %d turns", removed)
        return removed

    def clear(self) -> int:
        """Delete every turn; returns how many there were."""
        cur = self._db.execute("DELETE FROM turns")
        self._db.execute("VACUUM")
        logger.info("= history cleared (%d turns)", cur.rowcount)
        return int(cur.rowcount)


def export_lines(path: str | Path) -> Iterator[str]:
    """``navtalk-agent history export``: every stored turn as one JSON line, oldest first
    (nothing when the file does not exist: nothing was stored)."""
    if str(path) != ":memory:" and not Path(path).expanduser().exists():
        return
    with ConversationStore(path) as store:
        for t in store.turns():
            row = {"wall_s": t.wall_s, "role": t.role.value, "text": t.text}
            yield json.dumps(row | {"session_id": t.session_id}, ensure_ascii=False)


class HistoryThread:
    """A :class:`ConversationStore` used from one worker thread of its own, so SQLite (disk
    writes, fsync, retention) never blocks the event loop. Writes are queued in order and
    never raise into the caller (a failing disk must not end the conversation)."""

    def __init__(self, path: str | Path, *, max_age_s: float = 0.0, max_rows: int = 0) -> None:
        self._path, self._max_age_s, self._max_rows = path, max_age_s, max_rows
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="history")
        self._store: ConversationStore | None = None

    def _run(self, fn: Callable[[ConversationStore], _T], what: str) -> _T | None:
        if self._store is None:
            return None
        try:
            return fn(self._store)
        except Exception:
            logger.exception("history: %s failed", what)
            return None

    async def open(self, *, wall_s: float) -> None:
        def work() -> None:
            self._store = ConversationStore(
                self._path, max_age_s=self._max_age_s, max_rows=self._max_rows
            )
            self._store.prune(wall_s=wall_s)

        await asyncio.get_running_loop().run_in_executor(self._pool, work)

    def add(self, role: Role, text: str, *, wall_s: float, session_id: str = "") -> None:
        """Queue one turn (returns at once)."""

        def work(store: ConversationStore) -> None:
            store.add(role, text, wall_s=wall_s, session_id=session_id)

        self._pool.submit(self._run, work, f"storing a {role.value} turn")

    async def replay(self, n: int, *, wall_s: float) -> list[str]:
        """Apply retention, then the last ``n`` user turns, oldest first."""

        def work(store: ConversationStore) -> list[str]:
            store.prune(wall_s=wall_s)
            return store.last_user_messages(n)

        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self._pool, self._run, work, "reading the history")
        return out or []

    async def close(self) -> None:
        """Finish the queued writes and close the file."""

        def work() -> None:
            if self._store is not None:
                self._store.close()
                self._store = None

        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, work)
        finally:
            self._pool.shutdown(wait=True)  # the worker is idle by now: this joins at once
