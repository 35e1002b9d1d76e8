"""The session's tool calls, sans I/O: the catalog, its declaration, and each call's fate.

:class:`ToolCalls` decides, for every ``function_call_arguments.done`` the server sends,
whether it becomes a ``tool.call`` on the bus (tracked in :class:`PendingCalls` with a
deadline), is answered at once with an error (unknown tool, arguments over the limit,
too many open calls), or is a duplicate that gets nothing. The caller publishes and
sends; nothing here awaits or reads a clock.

Rules:

- Only the tools service may set the catalog: a ``tool.catalog`` from any other sender
  is counted and ignored (a spoofed catalog must not wipe or replace the tools).
- Tools are declared once per connection, on open (as the vendor SDK does), and again
  only when the catalog changes (:meth:`ToolCalls.to_declare`).
- The session's deadline for a call is a safety net behind the tools process's own
  timeout: the tool's timeout + :data:`DEADLINE_MARGIN_S` (the tools process answers
  first, so a call gets exactly one result).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from agent import topics
from agent.errors import ErrorCategory
from agent.messages import ToolCall, ToolCatalog, ToolSpec
from agent.navtalk.events import FunctionCallDone
from agent.navtalk.pending import Completion, PendingCalls
from agent.navtalk.protocol import ToolDeclaration

__all__ = ["DEADLINE_MARGIN_S", "Dispatch", "ToolCalls"]

logger = logging.getLogger(__name__)

DEADLINE_MARGIN_S = 2.0  # the session's deadline = the tool's own timeout + this
MAX_PARAMETERS_CHARS = 64 * 1024  # a tool's JSON schema, as declared


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Publish ``call`` on ``tool.call`` and wait for its ``tool.result``."""

    call: ToolCall


class ToolCalls:
    def __init__(self, *, default_timeout_ms: int) -> None:
        self.default_timeout_ms = default_timeout_ms
        self.pending = PendingCalls()
        self.catalog: list[ToolSpec] | None = None
        self._declared: tuple[str, str] | None = None  # (connection_id, fingerprint)
        self.spoofed_catalogs = 0

    # --- the catalog ----------------------------------------------------------------------

    def set_catalog(self, msg: ToolCatalog, sender: str) -> bool:
        """Take the catalog when it comes from the tools service; False when ignored."""
        if sender != topics.TOOLS:
            self.spoofed_catalogs += 1
            return False
        self.catalog = list(msg.tools)
        return True

    def declarations(self) -> list[ToolDeclaration]:
        out = []
        for spec in self.catalog or []:
            try:
                if len(spec.parameters_json) > MAX_PARAMETERS_CHARS:
                    raise ValueError("too long")
                params = json.loads(spec.parameters_json or "{}")
                if not isinstance(params, dict):
                    raise ValueError("not an object")
            except (ValueError, RecursionError):
                logger.warning("= tool %s has invalid parameters JSON; not declared", spec.name)
                continue
            out.append(ToolDeclaration(spec.name, spec.description, params))
        return out

    def to_declare(self, connection_id: str) -> list[ToolDeclaration] | None:
        """What to declare on ``connection_id`` now: None when there is no catalog yet or
        this connection already has this catalog. Marks it declared."""
        if self.catalog is None:
            return None
        decls = self.declarations()
        fingerprint = json.dumps(
            [(d.name, d.description, d.parameters) for d in decls], sort_keys=True
        )
        if self._declared == (connection_id, fingerprint):
            return None
        self._declared = (connection_id, fingerprint)
        return decls

    # --- calls ----------------------------------------------------------------------------

    def new_connection(self) -> list[Completion]:
        """A new socket: call ids start over; returns outputs that were still held."""
        return self.pending.new_connection()

    def on_call(self, event: FunctionCallDone, now: float) -> Dispatch | Completion | None:
        """The server called a function. A :class:`Dispatch` to run it, a
        :class:`Completion` to answer it at once, or None for a duplicate call_id."""
        p = self.pending
        if p.seen(event.call_id):
            p.duplicates += 1
            logger.warning("< duplicate call_id %s (%s): ignored", event.call_id, event.name)
            return None
        if event.error:
            logger.warning(
                "< tool call %s (%s) refused: %s", event.call_id, event.name, event.error
            )
            return p.answer(
                event.call_id, event.name, ErrorCategory.INVALID_ARGUMENTS, event.error, now=now
            )
        spec = next((t for t in self.catalog or [] if t.name == event.name), None)
        if self.catalog is not None and spec is None:
            logger.warning("< the model called %s, which is not in the catalog", event.name)
            return p.answer(
                event.call_id,
                event.name,
                ErrorCategory.UNKNOWN_TOOL,
                f"no tool named {event.name!r}",
                now=now,
            )
        if p.full():
            logger.warning("< tool call %s refused: too many calls open", event.call_id)
            return p.answer(
                event.call_id,
                event.name,
                ErrorCategory.UNAVAILABLE,
                "too many tool calls at once",
                now=now,
            )
        timeout_ms = spec.timeout_ms if spec is not None else self.default_timeout_ms
        args = event.arguments or "{}"
        p.add(
            event.call_id,
            event.name,
            args,
            now=now,
            timeout_s=timeout_ms / 1000 + DEADLINE_MARGIN_S,
        )
        return Dispatch(
            ToolCall(
                call_id=event.call_id, name=event.name, arguments_json=args, timeout_ms=timeout_ms
            )
        )
