"""Logging setup shared by every process: where lines go, what they look like, and floods.

::

    setup_logging(settings.log, "session")
      ├── started by systemd (JOURNAL_STREAM is our stderr) -> JournalHandler
      │     native protocol on /run/systemd/journal/socket: MESSAGE, PRIORITY,
      │     SYSLOG_IDENTIFIER=navtalk-agent, NAVTALK_SERVICE, NAVTALK_LOGGER, MESSAGE_ID
      ├── otherwise -> stderr, dated lines (or JSON lines with ``format = "json"``)
      └── [log] dir set -> <dir>/<process>.log as well, rotated by size
    every handler: RepeatFilter (a burst of one message = its first line, then
    "… repeated N times" once per window) and redaction of secrets.

Lines look like ``2026-11-30 12:00:01.234 session  INFO  services.session: = ready``;
the process name is in every line so the supervisor's merged stderr reads well.
The NavTalk license (from the environment) and any ``license=`` URL parameter are
replaced by ``***`` in the final text of every record, whoever logged it.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import hashlib
import json
import logging
import logging.handlers
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.config import LogSettings, navtalk_license
from agent.navtalk.url import redact, register_secret

__all__ = [
    "JOURNAL_SOCKET",
    "JournalHandler",
    "JsonFormatter",
    "RedactingFormatter",
    "RepeatFilter",
    "journal_entry",
    "message_id",
    "redact",
    "setup_logging",
    "under_journald",
]

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "navtalk-agent"
TEXT_FORMAT = "%(asctime)s.%(msecs)03d {process:<10} %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_MESSAGE_BYTES = 48 * 1024  # one journal datagram stays far below the socket's send buffer
_FLOOD_KEYS = (
    256  # distinct messages tracked by a RepeatFilter; the oldest is reported, then forgotten
)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def message_id(record: logging.LogRecord) -> str:
    """A stable 128-bit id (32 hex digits, journald's MESSAGE_ID) for one kind of event:
    the logger and the unformatted message, so every "bad frame from %s" shares one id."""
    template = getattr(record, "_navtalk_template", record.msg)  # before RepeatFilter's note
    return hashlib.md5(f"{record.name}\0{template}".encode(), usedforsecurity=False).hexdigest()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, service, logger, msg, message_id
    and exc when there is a traceback. Redacted like the text lines."""

    def __init__(self, process: str):
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self._process,
            "logger": record.name,
            "msg": record.getMessage(),
            "message_id": message_id(record),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return redact(json.dumps(out, ensure_ascii=False))


# -- journald ----------------------------------------------------------------------------------

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


def _priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    for level in (logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def journal_entry(fields: Mapping[str, str]) -> bytes:
    """One datagram of journald's native protocol: ``KEY=value\\n`` per field, or for a value
    with a newline ``KEY\\n`` + its length (64-bit little endian) + the value + ``\\n``."""
    out = bytearray()
    for key, value in fields.items():
        data = str(value).encode("utf-8", "replace")  # a hand-made record may hold None
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def under_journald(env: Mapping[str, str], fd: int = 2) -> bool:
    """True when ``fd`` is the journal stream systemd gave us (``JOURNAL_STREAM=dev:inode``).
    A child that inherited the variable but not the stream does not count (systemd.exec(5))."""
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


class JournalHandler(logging.Handler):
    """Sends each record to journald over its native datagram socket (no python-systemd)."""

    def __init__(self, process: str, path: str = JOURNAL_SOCKET):
        super().__init__()
        self.process = process
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.failures = 0  # datagrams journald did not take (the line went to stderr instead)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            data = message.encode("utf-8", "replace")
            if len(data) > MAX_MESSAGE_BYTES:
                message = data[:MAX_MESSAGE_BYTES].decode("utf-8", "ignore") + " [truncated]"
            fields = {
                "MESSAGE": message,
                "PRIORITY": str(_priority(record.levelno)),
                "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
                "NAVTALK_SERVICE": self.process,
                "NAVTALK_LOGGER": record.name,
                "MESSAGE_ID": message_id(record),
                "CODE_FILE": str(record.pathname),
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": str(record.funcName),
            }
            entry = journal_entry(fields)
        except Exception:
            self.handleError(record)
            return
        try:
            self._sock.sendto(entry, self.path)
        except OSError:
            self.failures += 1  # journald away or full: stderr is the journal stream anyway
            sys.stderr.write(message + "\n")

    def close(self) -> None:
        self._sock.close()
        super().close()


# -- floods ------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Burst:
    start: float  # when its window opened (the record's own time)
    passed: int = 1  # lines let through in this window
    dropped: int = 0  # lines counted instead
    last: logging.LogRecord | None = None  # the last one dropped, for the summary


_Key = tuple[str, int, str]


class RepeatFilter(logging.Filter):
    """A burst of one warning or error is counted, not repeated.

    Records below ``min_level`` (WARNING) all pass: state changes such as ``= speaker
    playing`` recur legitimately and are what a reader follows. Per window of ``window_s``
    (the records' own ``created``, no clock read):

    - the same message (logger, level, text) passes once; its repeats are counted, and
      the first one after the window passes with ``(… repeated N times in the last S s)``;
    - one kind of message (logger, level, unformatted template: ``"bad frame from %s"``)
      passes ``per_kind`` times with different texts, then is counted too, and said as
      ``… N more like this in S s: <the last one>``.

    Counts still pending are written by :meth:`flush` (at exit), or when their entry is
    pushed out of the bounded table. One instance serves every handler of the process:
    the decision is kept on the record, and summaries go to each of :attr:`handlers`.
    """

    def __init__(
        self,
        window_s: float,
        handlers: list[logging.Handler] | None = None,
        per_kind: int = 20,
        min_level: int = logging.WARNING,
    ):
        super().__init__()
        self.window_s = window_s
        self.min_level = min_level
        self.per_kind = per_kind
        self.handlers: list[logging.Handler] = handlers if handlers is not None else []
        self._same: collections.OrderedDict[_Key, _Burst] = collections.OrderedDict()
        self._kind: collections.OrderedDict[_Key, _Burst] = collections.OrderedDict()
        self.suppressed = 0  # records dropped in total

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, "_navtalk_pass", None)
        if decided is None:
            decided = self._decide(record)
            record._navtalk_pass = decided
        return bool(decided)

    def _decide(self, record: logging.LogRecord) -> bool:
        if self.window_s <= 0 or record.levelno < self.min_level:
            return True
        template = str(record.msg)
        record._navtalk_template = template
        now = record.created
        same_key = (record.name, record.levelno, record.getMessage())
        kind_key = (record.name, record.levelno, template)
        same = self._same.get(same_key)
        if same is not None and now - same.start < self.window_s:
            return self._drop(same, record)
        kind = self._kind.get(kind_key)
        if kind is not None and now - kind.start < self.window_s:
            if kind.passed >= self.per_kind:
                return self._drop(kind, record)
            kind.passed += 1
        else:
            if kind is not None:
                self._report_kind(kind_key, kind)
            self._put(self._kind, kind_key, _Burst(now), self._report_kind)
        if same is not None and same.dropped:
            span = now - same.start
            record.msg = f"{template} (… repeated {same.dropped} times in the last {span:.0f} s)"
        self._put(self._same, same_key, _Burst(now), self._report_same)
        return True

    def _drop(self, burst: _Burst, record: logging.LogRecord) -> bool:
        burst.dropped += 1
        burst.last = record
        self.suppressed += 1
        return False

    def _put(
        self,
        table: collections.OrderedDict[_Key, _Burst],
        key: _Key,
        burst: _Burst,
        report: Callable[[_Key, _Burst], None],
    ) -> None:
        table[key] = burst
        table.move_to_end(key)
        while len(table) > _FLOOD_KEYS:
            report(*table.popitem(last=False))

    def flush(self) -> None:
        """Write the counts not reported yet (the tail of each burst)."""
        for key, burst in list(self._same.items()):
            self._report_same(key, burst)
        for key, burst in list(self._kind.items()):
            self._report_kind(key, burst)

    def _report_same(self, key: _Key, burst: _Burst) -> None:
        if burst.dropped and burst.last is not None:
            span = burst.last.created - burst.start
            self._emit(burst.last, f"… repeated {burst.dropped} times in {span:.0f} s: %s", key)
        burst.dropped, burst.last = 0, None

    def _report_kind(self, key: _Key, burst: _Burst) -> None:
        if burst.dropped and burst.last is not None:
            span = burst.last.created - burst.start
            self._emit(burst.last, f"… {burst.dropped} more like this in {span:.0f} s: %s", key)
        burst.dropped, burst.last = 0, None

    def _emit(self, last: logging.LogRecord, msg: str, key: _Key) -> None:
        summary = logging.makeLogRecord(dict(last.__dict__))
        summary.msg = msg
        summary.args = (last.getMessage(),)
        summary.exc_info = None
        summary.exc_text = None
        summary._navtalk_pass = True
        summary._navtalk_template = getattr(last, "_navtalk_template", key[2])
        for handler in self.handlers:
            handler.handle(summary)


# -- setup -------------------------------------------------------------------------------------

_filters: list[RepeatFilter] = []
_installed: list[logging.Handler] = []  # closed by the next setup_logging (others' are left be)


def _flush_repeats() -> None:
    for f in _filters:
        f.flush()


atexit.register(_flush_repeats)  # after logging's own atexit: runs first, handlers still open


def setup_logging(
    settings: LogSettings,
    process: str,
    *,
    verbose: bool = False,
    env: Mapping[str, str] | None = None,
    journal_socket: str = JOURNAL_SOCKET,
) -> list[logging.Handler]:
    """Configure the root logger for this process; returns the handlers installed."""
    env = os.environ if env is None else env
    register_secret(navtalk_license())  # set after this module was imported, too
    root = logging.getLogger()
    _flush_repeats()
    _filters.clear()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in _installed:
        handler.close()
    _installed.clear()
    text = RedactingFormatter(TEXT_FORMAT.format(process=process), datefmt=DATE_FORMAT)
    lines: logging.Formatter = JsonFormatter(process) if settings.format == "json" else text
    handlers: list[logging.Handler] = []
    if settings.journal == "auto" and under_journald(env):
        journal = JournalHandler(process, journal_socket)
        journal.setFormatter(RedactingFormatter("%(message)s"))  # journald keeps time and level
        handlers.append(journal)
    else:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(lines)
        handlers.append(stream)
    if settings.dir:
        Path(settings.dir).mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            Path(settings.dir) / f"{process}.log",
            maxBytes=settings.max_file_bytes,
            backupCount=settings.keep_files,
            encoding="utf-8",
        )
        rotating.setFormatter(lines)
        handlers.append(rotating)
    repeat = RepeatFilter(settings.repeat_window_s, handlers)
    _filters.append(repeat)
    for handler in handlers:
        handler.addFilter(repeat)
        root.addHandler(handler)
    _installed.extend(handlers)
    root.setLevel(logging.DEBUG if verbose else settings.level)
    for name, level in settings.levels.items():
        logging.getLogger(name).setLevel(level)
    return handlers
