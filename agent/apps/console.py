"""Console commands against a running agent, over the bus: ``say``, ``session``, ``tools``,
``status``, and ``console`` (a text conversation: type as the guest, read the avatar).

Each command reads and writes through a :class:`Link`: the local bus (a :class:`~agent.bus.Bus`
named ``console``), or a remote board's gateway (:mod:`agent.remote`: its read endpoint for
what the agent says, its command endpoint for what we send, both with CURVE keys).
What to print is decided by plain functions of the messages seen (:class:`StatusBoard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Self, TextIO

import msgspec
import zmq
import zmq.asyncio

from agent import topics
from agent.bus import INTERNAL_PREFIX, Bus, Delivery
from agent.config import Settings
from agent.errors import BusError, MessageDecodeError
from agent.keys import ClientKeys
from agent.messages import (
    AssistantTranscript,
    Heartbeat,
    Message,
    Metrics,
    SessionControl,
    SessionState,
    TextInput,
    ToolCall,
    ToolCatalog,
    ToolDescribe,
    ToolResult,
    UserTranscript,
    decode_envelope,
)
from agent.remote import RemoteCommander, remote_sub_socket

__all__ = ["Link", "StatusBoard", "interactive", "say", "session", "status", "tools_list"]

CONSOLE_SENDER = "console"


@dataclass(frozen=True)
class RemoteTarget:
    read_endpoint: str
    command_endpoint: str
    keys: ClientKeys


class Link:
    """Read some topics and publish commands, locally or through a remote gateway."""

    def __init__(
        self,
        settings: Settings,
        prefixes: Sequence[str],
        remote: RemoteTarget | None,
        *,
        media_queue: int = 200,
    ):
        self._settings = settings
        self._media_queue = media_queue
        self._prefixes = list(prefixes)
        self._remote = remote
        self._bus: Bus | None = None
        self._sub: zmq.asyncio.Socket | None = None
        self._commander: RemoteCommander | None = None

    async def __aenter__(self) -> Self:
        if self._remote is None:
            self._bus = Bus(self._settings.bus, CONSOLE_SENDER, media_queue=self._media_queue)
            if self._prefixes:
                self._bus.subscribe(*self._prefixes)
            await self._bus.start()
        else:
            ctx = zmq.asyncio.Context.instance()
            self._sub = remote_sub_socket(ctx, self._remote.read_endpoint, self._remote.keys)
            for p in self._prefixes:
                self._sub.setsockopt(zmq.SUBSCRIBE, p.encode())
            self._commander = RemoteCommander(
                self._remote.command_endpoint, self._remote.keys, sender=CONSOLE_SENDER
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._bus is not None:
            await self._bus.close()
        if self._sub is not None:
            self._sub.close(linger=0)
        if self._commander is not None:
            self._commander.close()

    def lost(self) -> int:
        """Messages this link lost so far: dropped from a full queue, or sequence gaps."""
        if self._bus is not None:
            return self._bus.stats.media_dropped + self._bus.stats.gaps
        return 0

    async def publish(self, topic: str, msg: Message) -> None:
        if self._bus is not None:
            if not self._bus.publish(topic, msg):
                raise BusError(f"{topic}: the bus is full")
        elif self._commander is not None:
            await self._commander.send(topic, msg)

    async def recv(self, timeout: float) -> Delivery | None:
        """The next message, or None after ``timeout`` seconds of nothing."""
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                if self._bus is not None:
                    return await self._bus.recv()
                assert self._sub is not None
                while True:
                    frames = await self._sub.recv_multipart()
                    delivery = _decode(frames)
                    if delivery is not None:
                        return delivery
        except TimeoutError:
            return None


def _decode(frames: list[bytes]) -> Delivery | None:
    topic = frames[0].decode("ascii", "replace")
    if topic.startswith(INTERNAL_PREFIX) or len(frames) < 2:
        return None
    try:
        env = decode_envelope(frames[1])
        spec = topics.spec_for(topic)
    except (MessageDecodeError, KeyError):
        return None
    if type(env.msg) is not spec.type:
        return None
    return Delivery(topic, env.sender, env.seq, env.mono_ns, env.wall_ns, env.msg, frames[2:])


async def _until(link: Link, timeout: float, want: type[Message]) -> Delivery | None:
    deadline = time.monotonic() + timeout
    while True:
        d = await link.recv(deadline - time.monotonic())
        if d is None or isinstance(d.msg, want):
            return d


# -- say ----------------------------------------------------------------------------------------


async def say(
    settings: Settings,
    text: str,
    out: TextIO,
    *,
    reply: bool,
    wait_s: float,
    remote: RemoteTarget | None,
) -> int:
    """Typed guest input; with ``wait_s`` > 0, print the guest and avatar transcripts that
    follow until the avatar's whole reply (a final transcript) or the time is up."""
    prefixes = ["navtalk.transcript."] if wait_s > 0 else []
    async with Link(settings, prefixes, remote) as link:
        await link.publish(topics.INPUT_TEXT, TextInput(text=text, reply=reply))
        if wait_s <= 0:
            return 0
        deadline = time.monotonic() + wait_s
        while True:
            d = await link.recv(deadline - time.monotonic())
            if d is None:
                out.write(f"-- no reply within {wait_s:.0f} s\n")
                return 1
            if isinstance(d.msg, UserTranscript):
                out.write(f"guest: {d.msg.text}\n")
            elif isinstance(d.msg, AssistantTranscript) and d.msg.final:
                out.write(f"avatar: {d.msg.text}\n")
                return 0


# -- session ------------------------------------------------------------------------------------


async def session(
    settings: Settings, action: str, out: TextIO, *, wait_s: float, remote: RemoteTarget | None
) -> int:
    """Start or end the session; with ``wait_s`` > 0, wait for the phase that follows
    (ready after start; idle or closed after end) and print the phases seen."""
    from agent.messages import SessionPhase

    goal = {SessionPhase.READY} if action == "start" else {SessionPhase.IDLE, SessionPhase.CLOSED}
    async with Link(settings, [topics.SESSION_STATE] if wait_s > 0 else [], remote) as link:
        await link.publish(
            topics.CONTROL_SESSION,
            SessionControl(action=action, reason="console"),  # type: ignore[arg-type]
        )
        if wait_s <= 0:
            return 0
        deadline = time.monotonic() + wait_s
        while True:
            d = await _until(link, deadline - time.monotonic(), SessionState)
            if d is None:
                out.write(f"-- session not {'/'.join(sorted(goal))} within {wait_s:.0f} s\n")
                return 1
            assert isinstance(d.msg, SessionState)
            out.write(f"session: {d.msg.phase}{f' ({d.msg.detail})' if d.msg.detail else ''}\n")
            if d.msg.phase in goal:
                return 0
            if d.msg.phase is SessionPhase.FAILED:
                return 1


# -- tools --------------------------------------------------------------------------------------


async def tools_list(
    settings: Settings, out: TextIO, *, as_json: bool, wait_s: float, remote: RemoteTarget | None
) -> int:
    """Ask the tools process for its catalog (tool.describe) and print it."""
    async with Link(settings, [topics.TOOL_CATALOG], remote) as link:
        deadline = time.monotonic() + wait_s
        catalog: ToolCatalog | None = None
        while catalog is None and time.monotonic() < deadline:
            await link.publish(topics.TOOL_DESCRIBE, ToolDescribe())
            d = await _until(link, min(1.0, deadline - time.monotonic()), ToolCatalog)
            if d is not None:
                assert isinstance(d.msg, ToolCatalog)
                catalog = d.msg
    if catalog is None:
        out.write(f"-- no tool.catalog within {wait_s:.0f} s: is the tools service running?\n")
        return 1
    if as_json:
        tools = [
            {
                "name": t.name,
                "description": t.description,
                "parameters": json.loads(t.parameters_json),
                "timeout_ms": t.timeout_ms,
            }
            for t in catalog.tools
        ]
        out.write(json.dumps(tools, indent=2) + "\n")
    else:
        width = max((len(t.name) for t in catalog.tools), default=4)
        for t in catalog.tools:
            out.write(f"{t.name:<{width}}  {t.timeout_ms / 1000:>5.1f} s  {t.description}\n")
    return 0


# -- status -------------------------------------------------------------------------------------


@dataclass
class ProcessRow:
    name: str
    pid: int = 0
    status: str = "?"
    detail: str = ""
    uptime_s: float = 0.0
    restarts: int | None = None
    cpu_s: float | None = None
    rss_bytes: float | None = None
    up: bool | None = None  # the supervisor's view
    heartbeats: bool = True  # False: not on the bus (emulator, gateway), known by up only


@dataclass
class StatusBoard:
    """What ``status`` shows, built from health.*, metrics.supervisor and session.state."""

    rows: dict[str, ProcessRow] = field(default_factory=dict)
    session: SessionState | None = None
    supervised: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def feed(self, msg: Message) -> None:
        if isinstance(msg, Heartbeat):
            row = self.rows.setdefault(msg.service, ProcessRow(msg.service))
            row.pid, row.status, row.detail, row.uptime_s = (
                msg.pid, msg.status, msg.detail, msg.uptime_s,
            )  # fmt: skip
            if msg.detail and msg.status == "degraded":
                self.errors.append(f"{msg.service}: {msg.detail}")
        elif isinstance(msg, Metrics) and msg.service == topics.SUPERVISOR:
            for key, value in msg.values.items():
                name, _, what = key.rpartition(".")
                if not name.startswith("child."):
                    continue
                child = name[len("child.") :]
                self.supervised.add(child)
                row = self.rows.setdefault(child, ProcessRow(child))
                if what == "restarts":
                    row.restarts = int(value)
                elif what == "pid" and value and not row.pid:
                    row.pid = int(value)
                elif what == "cpu_seconds":
                    row.cpu_s = value
                elif what == "rss_bytes":
                    row.rss_bytes = value
                elif what == "up":
                    row.up = bool(value)
                elif what == "heartbeats":
                    row.heartbeats = bool(value)
        elif isinstance(msg, SessionState):
            self.session = msg

    def complete(self) -> bool:
        """Everything the supervisor runs has been heard from, and the session's state."""
        if not self.supervised:
            return False
        heard = all(
            self.rows[n].status != "?" or not self.rows[n].heartbeats for n in self.supervised
        )
        wants_session = topics.SESSION in self.supervised
        return heard and (self.session is not None or not wants_session)

    def to_json(self) -> dict[str, object]:
        return {
            "processes": [dataclasses.asdict(r) for r in self._sorted()],
            "session": None if self.session is None else msgspec.to_builtins(self.session),
            "errors": self.errors[-10:],
        }

    def _sorted(self) -> list[ProcessRow]:
        return sorted(self.rows.values(), key=lambda r: (r.name != topics.SUPERVISOR, r.name))

    def render(self) -> str:
        lines = [f"{'PROCESS':<11}{'PID':>8}  {'STATUS':<9}{'UPTIME':>9}{'RESTARTS':>9}"
                 f"{'CPU s':>8}{'RSS MB':>8}  DETAIL"]  # fmt: skip
        for r in self._sorted():
            state = r.status
            if r.up is False and r.status in ("?", "ok"):
                state = "down"
            elif r.up and not r.heartbeats:
                state = "alive"  # a process off the bus: its pid is all the supervisor knows
            lines.append(
                f"{r.name:<11}{r.pid or '-':>8}  {state:<9}{_num(r.uptime_s, '.0f', 's'):>9}"
                f"{_num(r.restarts, 'd'):>9}{_num(r.cpu_s, '.1f'):>8}"
                f"{_num(None if r.rss_bytes is None else r.rss_bytes / 1e6, '.0f'):>8}  {r.detail}"
            )
        s = self.session
        if s is None:
            lines.append("session: (no session.state heard)")
        else:
            lines.append(f"session: {s.phase}" + (f" ({s.detail})" if s.detail else ""))
        for e in self.errors[-5:]:
            lines.append(f"error: {e}")
        return "\n".join(lines)


def _num(value: float | int | None, fmt: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


async def status(
    settings: Settings, out: TextIO, *, as_json: bool, wait_s: float, remote: RemoteTarget | None
) -> int:
    """Listen to heartbeats, the supervisor's metrics and the session state until every
    supervised process was heard from (or ``wait_s``), then print one table."""
    board = StatusBoard()
    prefixes = ["health.", "metrics.", topics.SESSION_STATE]
    async with Link(settings, prefixes, remote) as link:
        deadline = time.monotonic() + wait_s
        while not board.complete():
            d = await link.recv(deadline - time.monotonic())
            if d is None:
                break
            board.feed(d.msg)
    if not board.rows:
        out.write(f"-- nothing heard within {wait_s:.0f} s: is the agent running?\n")
        return 1
    with contextlib.suppress(BrokenPipeError):
        out.write((json.dumps(board.to_json()) if as_json else board.render()) + "\n")
    return 0


# -- console: a text conversation ---------------------------------------------------------------

CONSOLE_TOPICS = (
    "navtalk.transcript.",
    topics.TOOL_CALL,
    topics.TOOL_RESULT,
    topics.SESSION_STATE,
)
CONSOLE_HELP = "type as the guest; /start and /end open and close the session; /quit leaves"


def console_line(msg: Message) -> str | None:
    """What the console prints for one message (None: nothing)."""
    if isinstance(msg, UserTranscript):
        return f"guest:  {msg.text}"
    if isinstance(msg, AssistantTranscript):
        return f"avatar: {msg.text}" if msg.final else None
    if isinstance(msg, ToolCall):
        return f"  tool call   {msg.name}({msg.arguments_json[:200]})"
    if isinstance(msg, ToolResult):
        outcome = msg.output_json[:200] if msg.ok else f"error: {msg.error or msg.output_json}"
        return f"  tool result {msg.name}: {outcome}"
    if isinstance(msg, SessionState):
        return f"  [session {msg.phase}{f': {msg.detail}' if msg.detail else ''}]"
    return None


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Read stdin on a daemon thread (a blocked read must not hold the process at exit)."""
    import sys
    import threading

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\n"))
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, name="console-stdin", daemon=True).start()


async def interactive(settings: Settings, out: TextIO, *, remote: RemoteTarget | None) -> int:
    """``navtalk-agent console``: type as the guest, read the avatar's transcript, see tool
    calls and session phases, until /quit or end of input."""
    lines: asyncio.Queue[str | None] = asyncio.Queue(maxsize=100)
    _stdin_lines(asyncio.get_running_loop(), lines)
    async with Link(settings, CONSOLE_TOPICS, remote) as link:
        out.write(f"-- {CONSOLE_HELP}\n")  # once connected: what is typed now gets through
        out.flush()

        async def show() -> None:
            while True:
                d = await link.recv(3600.0)
                text = None if d is None else console_line(d.msg)
                if text is not None:
                    out.write(text + "\n")
                    out.flush()

        printer = asyncio.create_task(show(), name="console-printer")
        try:
            while (line := await lines.get()) is not None:
                line = line.strip()
                if line == "/quit":
                    break
                if line in ("/start", "/end"):
                    action = line[1:]
                    await link.publish(
                        topics.CONTROL_SESSION,
                        SessionControl(action=action, reason="console"),  # type: ignore[arg-type]
                    )
                elif line:
                    await link.publish(topics.INPUT_TEXT, TextInput(text=line))
        finally:
            printer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await printer
    return 0
