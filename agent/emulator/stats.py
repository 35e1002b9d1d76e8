"""What a client did in one connection, as the emulator's brain saw it (tests, benchmarks)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from agent.emulator.conformance import Violation

__all__ = ["SessionStats"]


@dataclass(slots=True)
class SessionStats:
    """What the client did, for tests and benchmarks."""

    received: Counter[str] = field(default_factory=Counter)
    audio_bytes: int = 0
    violations: list[Violation] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # user text items received
    declared_tools: set[str] = field(default_factory=set)
    declarations: int = 0  # tool declarations received (input_function_call, session.update)
    tool_outputs: dict[str, str] = field(default_factory=dict)  # call_id -> output
    heard: list[str] = field(default_factory=list)  # transcripts
    recognized: list[bool] = field(default_factory=list)  # per utterance: a line matched?
    replies: list[str] = field(default_factory=list)  # response texts
    errors_sent: list[str] = field(default_factory=list)  # error codes sent to the client
    images: int = 0
    malformed: int = 0

    @property
    def order_violations(self) -> list[str]:
        return [v.detail for v in self.violations]
