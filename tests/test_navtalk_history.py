"""The SQLite conversation store."""

from __future__ import annotations

from pathlib import Path

from agent.navtalk.history import ConversationStore, Role


def test_last_user_messages_in_order(tmp_path: Path) -> None:
    with ConversationStore(tmp_path / "sub" / "h.db") as s:
        for i in range(5):
            s.add(Role.USER, f"u{i}", wall_s=float(i))
            s.add(Role.ASSISTANT, f"a{i}", wall_s=float(i) + 0.5)
        s.add(Role.USER, "   ", wall_s=9.0)  # ignored
        assert s.last_user_messages(3) == ["u2", "u3", "u4"]
        assert s.last_user_messages(0) == []
        assert s.count() == 10
    with ConversationStore(tmp_path / "sub" / "h.db") as s:  # persisted
        assert s.last_user_messages(1) == ["u4"]
        assert s.turns()[1].role is Role.ASSISTANT


def test_retention_by_age_and_rows(tmp_path: Path) -> None:
    with ConversationStore(tmp_path / "h.db", max_age_s=100, max_rows=3) as s:
        for i in range(6):
            s.add(Role.USER, f"u{i}", wall_s=i * 50.0)  # 0, 50, ..., 250
        removed = s.prune(wall_s=260.0)  # older than 160 -> u0..u3 go
        assert removed == 4
        assert s.last_user_messages(10) == ["u4", "u5"]
        for i in range(6, 10):
            s.add(Role.USER, f"u{i}", wall_s=260.0)
        s.prune(wall_s=260.0)
        assert s.last_user_messages(10) == ["u7", "u8", "u9"]


def test_clear(tmp_path: Path) -> None:
    with ConversationStore(tmp_path / "h.db") as s:
        s.add(Role.USER, "x", wall_s=1.0)
        s.add(Role.ASSISTANT, "y", wall_s=1.0)
        assert s.clear() == 2
        assert s.count() == 0


async def test_history_thread_writes_off_the_loop_in_order(tmp_path: Path) -> None:
    import threading

    from agent.navtalk.history import HistoryThread

    h = HistoryThread(tmp_path / "h.sqlite3")
    await h.open(wall_s=0.0)
    for i in range(20):
        h.add(Role.USER, f"turn {i}", wall_s=float(i))
    assert await h.replay(2, wall_s=30.0) == ["turn 18", "turn 19"]
    await h.close()
    assert not any(t.name.startswith("history") and t.is_alive() for t in threading.enumerate())
    with ConversationStore(tmp_path / "h.sqlite3") as store:
        assert [t.text for t in store.turns()] == [f"turn {i}" for i in range(20)]
