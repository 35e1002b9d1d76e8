"""agent/logs.py: journald's native protocol on a real datagram socket, rotation, JSON lines,
floods counted, and the ``--log-format`` switch through the real command."""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import LogSettings
from agent.logs import (
    JournalHandler,
    RepeatFilter,
    journal_entry,
    message_id,
    setup_logging,
    under_journald,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def parse_entry(data: bytes) -> dict[str, str]:
    """journald's side of the native protocol (systemd's journald-native.c, in short)."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            i = nl + 1
        else:
            (n,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            fields[line.decode()] = data[nl + 9 : nl + 9 + n].decode()
            assert data[nl + 9 + n : nl + 10 + n] == b"\n"
            i = nl + 10 + n
    return fields


@pytest.fixture
def journal(short_tmp: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(short_tmp / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_journal_entry_encodes_multiline_values_with_their_length() -> None:
    data = journal_entry({"MESSAGE": "one\ntwo", "PRIORITY": "3"})
    assert data == b"MESSAGE\n" + struct.pack("<Q", 7) + b"one\ntwo\nPRIORITY=3\n"
    assert parse_entry(data) == {"MESSAGE": "one\ntwo", "PRIORITY": "3"}


def test_under_journald_only_when_stderr_is_the_stream_systemd_named() -> None:
    st = os.fstat(2)
    assert under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not under_journald({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    assert not under_journald({"JOURNAL_STREAM": "junk"})
    assert not under_journald({})


def test_setup_logging_under_systemd_sends_native_entries_to_the_journal_socket(
    journal: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sock = journal
    monkeypatch.setenv("NAVTALK_LICENSE", "lic-SECRET-123456")
    st = os.fstat(2)
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    handlers = setup_logging(LogSettings(), "session", env=env, journal_socket=path)
    assert [type(h) for h in handlers] == [JournalHandler]
    log = logging.getLogger("services.session")
    log.warning("bad frame from %s with lic-SECRET-123456", "peer")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed\non two lines")
    first = parse_entry(sock.recv(65536))
    assert first["MESSAGE"] == "bad frame from peer with ***"
    assert first["PRIORITY"] == "4"
    assert first["SYSLOG_IDENTIFIER"] == "navtalk-agent"
    assert first["NAVTALK_SERVICE"] == "session"
    assert first["NAVTALK_LOGGER"] == "services.session"
    assert len(first["MESSAGE_ID"]) == 32 and int(first["MESSAGE_ID"], 16) >= 0
    second = parse_entry(sock.recv(65536))
    assert second["PRIORITY"] == "3"
    assert second["MESSAGE"].startswith("failed\non two lines\nTraceback")
    assert "ValueError: boom" in second["MESSAGE"]
    assert second["MESSAGE_ID"] != first["MESSAGE_ID"]


def test_journal_away_falls_back_to_stderr(
    short_tmp: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    handler = JournalHandler("mic", str(short_tmp / "nobody-listens"))
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.handle(logging.makeLogRecord({"msg": "still said", "levelno": logging.ERROR}))
    handler.close()
    assert handler.failures == 1
    assert "still said" in capfd.readouterr().err


def test_message_id_is_the_same_for_one_kind_of_event() -> None:
    a = logging.makeLogRecord({"name": "x", "msg": "bad %s", "args": ("a",)})
    b = logging.makeLogRecord({"name": "x", "msg": "bad %s", "args": ("b",)})
    c = logging.makeLogRecord({"name": "y", "msg": "bad %s", "args": ("a",)})
    assert message_id(a) == message_id(b) != message_id(c)


def test_files_rotate_by_size_and_lines_are_dated(tmp_path: Path) -> None:
    settings = LogSettings(
        dir=str(tmp_path), max_file_bytes=10_000, keep_files=2, repeat_window_s=0
    )
    setup_logging(settings, "mic", env={})
    log = logging.getLogger("services.mic")
    for i in range(2_000):
        log.info("frame %d of a long enough line to fill the files quickly", i)
    logging.getLogger().handlers[-1].flush()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["mic.log", "mic.log.1", "mic.log.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 10_000
    last = (tmp_path / "mic.log").read_text().splitlines()[-1]
    assert last.endswith("frame 1999 of a long enough line to fill the files quickly")
    date, clock, process, level = last.split()[:4]
    assert len(date) == 10 and date[4] == date[7] == "-"
    assert len(clock) == 12 and (process, level) == ("mic", "INFO")


def test_json_lines_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAVTALK_LICENSE", "lic-SECRET-987654")
    setup_logging(LogSettings(dir=str(tmp_path), format="json"), "tools", env={})
    log = logging.getLogger("agent.tools")
    log.info("called %s", "time_now")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("handler failed for lic-SECRET-987654")
    logging.getLogger().handlers[-1].flush()
    lines = [json.loads(line) for line in (tmp_path / "tools.log").read_text().splitlines()]
    assert [x["msg"] for x in lines] == ["called time_now", "handler failed for ***"]
    assert lines[0]["service"] == "tools" and lines[0]["logger"] == "agent.tools"
    assert lines[0]["level"] == "INFO" and lines[0]["ts"].endswith("Z")
    assert "ZeroDivisionError" in lines[1]["exc"]


def _record(
    msg: str, created: float, *args: object, level: int = logging.ERROR
) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"name": "t", "msg": msg, "args": args, "levelno": level,
         "levelname": logging.getLevelName(level), "created": created}
    )  # fmt: skip


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_repeat_filter_one_line_per_window_then_the_count() -> None:
    sink = ListHandler()
    repeat = RepeatFilter(10.0, [sink])
    sink.addFilter(repeat)
    for i in range(100):  # 0.0 .. 24.75 s
        sink.handle(_record("bad frame: %s", i * 0.25, "too long"))
    sink.handle(_record("other", 1.0))
    repeat.flush()
    assert sink.lines == [
        "bad frame: too long",
        "bad frame: too long (… repeated 39 times in the last 10 s)",
        "bad frame: too long (… repeated 39 times in the last 10 s)",
        "other",  # another message is not held back by the burst
        "… repeated 19 times in 5 s: bad frame: too long",  # the tail, at flush
    ]
    assert repeat.suppressed == 97


def test_repeat_filter_lets_different_texts_of_one_kind_through_up_to_a_bound() -> None:
    sink = ListHandler()
    repeat = RepeatFilter(10.0, [sink], per_kind=3)
    sink.addFilter(repeat)
    sink.handle(_record("= %s: starting -> running", 0.0, "tools"))
    sink.handle(_record("= %s: starting -> running", 0.1, "speaker"))  # not a repeat
    for _ in range(3):  # INFO: state changes recur and all pass
        sink.handle(_record("= speaker playing", 0.2, level=logging.INFO))
    for i in range(50):
        sink.handle(_record("bad frame from %s", 1 + i * 0.1, f"peer{i}"))
    repeat.flush()
    assert sink.lines == [
        "= tools: starting -> running",
        "= speaker: starting -> running",
        *["= speaker playing"] * 3,
        "bad frame from peer0",
        "bad frame from peer1",
        "bad frame from peer2",
        "… 47 more like this in 5 s: bad frame from peer49",
    ]


@pytest.mark.parametrize("varying", [False, True], ids=["identical", "varying-args"])
def test_a_flood_of_10000_errors_gives_a_bounded_number_of_lines(
    tmp_path: Path, varying: bool
) -> None:
    setup_logging(LogSettings(dir=str(tmp_path)), "session", env={})
    log = logging.getLogger("agent.navtalk")
    for i in range(10_000):
        log.error("bad ICE frame: %s", f"{i} bytes" if varying else "too long")
    from agent import logs

    logs._flush_repeats()  # what atexit does
    logging.getLogger().handlers[-1].flush()
    lines = (tmp_path / "session.log").read_text().splitlines()
    passed = 20 if varying else 1  # per_kind different texts, or the one text, per window
    assert passed + 1 <= len(lines) <= 3 * (passed + 1), lines  # 10 s windows: one is enough
    assert lines[0].endswith("bad ICE frame: 0 bytes" if varying else "bad ICE frame: too long")
    counted = [x for x in lines if "… " in x]
    total = sum(int(x.split("… ")[1].split()[1 if "repeated" in x else 0]) for x in counted)
    assert total + len(lines) - len(counted) == 10_000


def test_log_format_json_through_the_command(short_tmp: Path) -> None:
    """`navtalk-agent --log-format json proxy` logs JSON lines (the option becomes the
    log.format override, which the supervisor passes on to every child as well)."""
    from tests.conftest import ipc_bus_settings

    bus = ipc_bus_settings(str(short_tmp))
    sets = [f'bus.{plane}.{end}="{getattr(getattr(bus, plane), end)}"'
            for plane in ("control", "media") for end in ("publish", "subscribe")]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--log-format", "json", "proxy",
         *[x for s in sets for x in ("--set", s)]],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        entry = json.loads(line)
        assert entry["service"] == "proxy" and entry["level"] == "INFO", entry
    finally:
        proc.terminate()  # may land before its signal handlers: the exit code is not the point
        proc.wait(timeout=30)
