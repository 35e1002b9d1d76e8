"""The session's tool relay: a thin shell over :class:`agent.navtalk.calls.ToolCalls`.

Function calls from NavTalk become ``tool.call`` on the bus; ``tool.result`` (or the
session's safety-net deadline, or the tools process's death) becomes exactly one
``function_call_output`` per call_id. Outputs for calls that came before
``realtime.session.created`` are held and sent when it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from websockets.exceptions import ConnectionClosed

from agent import topics
from agent.bus import Bus
from agent.messages import ToolCatalog, ToolResult
from agent.navtalk import events as ev
from agent.navtalk.calls import Dispatch, ToolCalls
from agent.navtalk.pending import Completion
from agent.navtalk.protocol import SessionStatus
from agent.navtalk.url import RedactFilter
from services.session_parts.conn import Connection

__all__ = ["ToolRelay"]

log = logging.getLogger("services.session")
log.addFilter(RedactFilter())


class ToolRelay:
    def __init__(
        self, bus: Bus, tools: ToolCalls, current: Callable[[], Connection | None]
    ) -> None:
        self.bus = bus
        self.tools = tools
        self._current = current
        self.catalog_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._tools_pid = 0  # the tools process's pid, from its heartbeats

    async def declare(self, conn: Connection) -> None:
        """Declare the catalog on ``conn`` unless it has this catalog already."""
        decls = self.tools.to_declare(conn.connection_id)
        if decls is None:
            return
        log.info("> declaring %d tool(s): %s", len(decls), ", ".join(d.name for d in decls))
        await conn.send(conn.proto.declare_tools(decls))

    async def on_catalog(self, msg: ToolCatalog, sender: str, *, declare: bool) -> bool:
        """False when the catalog was ignored (not from the tools service)."""
        if not self.tools.set_catalog(msg, sender):
            return False
        self.catalog_event.set()
        log.info("< tool catalog: %s", ", ".join(t.name for t in msg.tools) or "(empty)")
        conn = self._current()
        if conn is not None and declare and conn.proto.state is not SessionStatus.CLOSED:
            await self.declare(conn)
        return True

    async def on_call(self, event: ev.FunctionCallDone) -> None:
        action = self.tools.on_call(event, time.monotonic())
        if isinstance(action, Dispatch):
            self._wake.set()
            log.info("> tool.call %s %s", event.call_id, event.name)
            self.bus.publish(topics.TOOL_CALL, action.call)
        elif action is not None:
            await self.complete(action, publish=True)

    async def on_result(self, msg: ToolResult) -> None:
        done = self.tools.pending.resolve(msg)
        if done is None:
            log.info("< tool.result for %s ignored (late or unknown)", msg.call_id)
        else:
            await self.complete(done, publish=False)

    async def complete(self, done: Completion, *, publish: bool) -> None:
        if publish:
            self.bus.publish(topics.TOOL_RESULT, done.result)
        conn = self._current()
        if conn is None or conn.proto.state is SessionStatus.CLOSED:
            log.warning("= tool result for %s has no session to go to", done.call.call_id)
            return
        if not conn.proto.can_send_items:  # before realtime.session.created: hold it
            if not self.tools.pending.hold(done):
                log.warning("= output for %s dropped: too many held", done.call.call_id)
            return
        await self.send_output(conn, done)

    async def send_output(self, conn: Connection, done: Completion) -> None:
        ok = "ok" if done.result.ok else "error"
        log.info("> function_call_output %s (%s)", done.call.call_id, ok)
        await conn.send(*conn.proto.function_call_output(done.call.call_id, done.output))

    async def send_held(self, conn: Connection) -> None:
        """After realtime.session.created: the outputs of calls that came before it."""
        for done in self.tools.pending.take_held():
            await self.send_output(conn, done)

    async def deadline_loop(self) -> None:
        while True:
            due = self.tools.pending.next_deadline()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            for done in self.tools.pending.expire(time.monotonic()):
                log.warning("= tool call %s (%s) timed out", done.call.call_id, done.call.name)
                with contextlib.suppress(ConnectionClosed):
                    await self.complete(done, publish=True)

    async def on_tools_heartbeat(self, pid: int) -> None:
        """A tools process that died took its running calls with it, and the restarted one
        never saw them: answer them now (with an error) rather than at their timeouts."""
        old, self._tools_pid = self._tools_pid, pid
        pending = self.tools.pending
        if not old or pid == old or not len(pending):
            return
        log.warning(
            "= the tools process was replaced (pid %d -> %d): answering %d pending call(s)",
            old, pid, len(pending),
        )  # fmt: skip
        for done in pending.fail_all(f"the tools process died (pid {old})"):
            with contextlib.suppress(ConnectionClosed):
                await self.complete(done, publish=True)

    def new_connection(self) -> None:
        for done in self.tools.new_connection():
            log.warning("= output for %s dropped: its connection is gone", done.call.call_id)

    def fail_pending(self, reason: str) -> None:
        for done in self.tools.pending.fail_all(reason):
            self.bus.publish(topics.TOOL_RESULT, done.result)
