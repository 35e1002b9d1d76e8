"""Chaos: every service SIGKILLed in the middle of a scripted conversation.

The whole agent runs under the real supervisor with the embedded emulator. The test plays
the guest by typed text (``input.text``: "What time is it?", which the emulator's default
script answers through the ``get_current_time`` tool, so session, emulator and tools all
take part), SIGKILLs one service right after each question, and checks:

- the killed service is back in service (first heartbeat of a new pid), time recorded;
- then the zygote (which forks the services) is SIGKILLed: every service dies with it and
  comes back;
- the agent recovers: the next question gets its spoken answer with the tool's output;
- after SIGTERM, the supervisor exits 0 and no process it started is left (0 orphans).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from agent import topics
from agent.bus import Bus
from agent.config import bus_toml, load
from agent.messages import (
    AssistantTranscript,
    Heartbeat,
    SessionPhase,
    SessionState,
    TextInput,
    ToolResult,
)
from tests.conftest import ipc_bus_settings
from tests.supervisor_helpers import (
    alive,
    children_of,
    cmdline_of,
    descendants_of,
    start_supervisor,
    stop,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

KILL_ORDER = ("tools", "speaker", "display", "mic", "session")
QUESTION = "What time is it?"


class Agent:
    """What the test sees of the agent on the bus."""

    def __init__(self, bus: Bus):
        self.bus = bus
        self.pid: dict[str, int] = {}
        self.first_beat: dict[str, float] = {}
        self.every_pid: set[int] = set()
        self.phase: SessionPhase | None = None
        self.answers: list[str] = []
        self.tool_results: list[ToolResult] = []
        self.changed = asyncio.Event()

    async def run(self) -> None:
        async for d in self.bus:
            msg = d.msg
            if isinstance(msg, Heartbeat) and msg.service in KILL_ORDER:
                if self.pid.get(msg.service) != msg.pid:
                    self.pid[msg.service] = msg.pid
                    self.first_beat[msg.service] = time.monotonic()
                    self.every_pid.add(msg.pid)
            elif isinstance(msg, SessionState):
                self.phase = msg.phase
            elif isinstance(msg, AssistantTranscript) and msg.final:
                self.answers.append(msg.text)
            elif isinstance(msg, ToolResult):
                self.tool_results.append(msg)
            self.changed.set()

    async def until(self, cond: object, timeout: float, what: str) -> None:
        assert callable(cond)
        try:
            async with asyncio.timeout(timeout):
                while not cond():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    def ask(self) -> int:
        """Ask the question; returns how many answers there were before."""
        self.bus.publish(topics.INPUT_TEXT, TextInput(text=QUESTION))
        return len(self.answers)

    async def answered(self, timeout: float = 30.0) -> str:
        """A spoken answer to the question, asked again when the session was not there to
        hear it (a question asked while the session restarts is not the agent's to keep)."""
        deadline = time.monotonic() + timeout
        while True:
            await self.until(lambda: self.phase is SessionPhase.READY, deadline - time.monotonic(),
                             "the session to be ready")  # fmt: skip
            before = self.ask()
            try:
                await self.until(
                    lambda b=before: any("It is" in a for a in self.answers[b:]),
                    min(10.0, max(0.1, deadline - time.monotonic())),
                    "an answer",
                )
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise
                continue
            return next(a for a in self.answers[before:] if "It is" in a)


def _config(d: Path) -> Path:
    cfg = d / "chaos.toml"
    cfg.write_text(
        bus_toml(ipc_bus_settings(str(d)))
        + f"""
[supervisor]
heartbeat_interval_s = 0.5
restart_stable_s = 1.0

[emulator]
embedded = true
port = 0
webrtc = false
pace = 4.0

[session]
audio_only = true
history_db_path = "{d}/history.sqlite3"

[mic]
backend = "null"

[speaker]
backend = "null"
audio_only = true

[display]
backend = "null"

[tools]
entry_points = false
disabled_builtins = ["take_photo"]
"""
    )
    return cfg


async def test_every_service_sigkilled_mid_conversation(tmp_path: Path) -> None:
    d = Path(tempfile.mkdtemp(prefix="ntc-"))
    cfg = _config(d)
    log = tmp_path / "chaos.log"
    proc = start_supervisor(cfg, log=log)
    restart_ms: dict[str, float] = {}
    spawned: set[int] = set()
    try:
        async with Bus(load(cfg).bus, "chaos") as bus:
            bus.subscribe(
                "health.", topics.SESSION_STATE, topics.NAVTALK_TRANSCRIPT_ASSISTANT,
                topics.TOOL_RESULT,
            )  # fmt: skip
            agent = Agent(bus)
            reader = asyncio.create_task(agent.run())
            await agent.until(lambda: len(agent.pid) == len(KILL_ORDER), 60, "every service")
            first = await agent.answered()
            assert "It is" in first
            for service in KILL_ORDER:
                spawned.update(descendants_of(proc.pid))
                old = agent.pid[service]
                agent.ask()  # mid-conversation: the question is on its way
                t0 = time.monotonic()
                os.kill(old, signal.SIGKILL)
                await agent.until(lambda s=service, o=old: agent.pid[s] != o, 20,
                                  f"{service} back in service")  # fmt: skip
                restart_ms[service] = round((agent.first_beat[service] - t0) * 1000, 1)
                answer = await agent.answered()  # the agent recovers
                assert "It is" in answer, answer
            # the zygote that forks the services: they all die with it, all come back
            spawned.update(descendants_of(proc.pid))
            zygote = [p for p in children_of(proc.pid) if "agent.apps.zygote" in cmdline_of(p)]
            assert len(zygote) == 1
            before = dict(agent.pid)
            t0 = time.monotonic()
            os.kill(zygote[0], signal.SIGKILL)
            await agent.until(
                lambda: all(agent.pid[s] != before[s] for s in KILL_ORDER), 30,
                "every service back after the zygote died",
            )  # fmt: skip
            restart_ms["all, zygote killed"] = round(
                (max(agent.first_beat.values()) - t0) * 1000, 1
            )
            assert "It is" in await agent.answered()
            spawned.update(descendants_of(proc.pid))
            tool_ok = [r for r in agent.tool_results if r.name == "get_current_time" and r.ok]
            assert len(tool_ok) >= len(KILL_ORDER) + 2, "the tools answered every round"
            reader.cancel()
        code = await asyncio.to_thread(stop, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)
    text = log.read_text()
    assert code == 0, text[-3000:]
    every = spawned | agent.every_pid
    assert len(every) >= 2 * len(KILL_ORDER), every
    orphans = [pid for pid in every if alive(pid)]
    assert orphans == [], f"orphans: {orphans}"
    for service in KILL_ORDER:
        assert f"{service} died (signal 9)" in text
    print("\nSIGKILL -> back in service (ms):", json.dumps(restart_ms))
    (tmp_path / "restart_ms.json").write_text(json.dumps(restart_ms))
    assert all(ms < 10_000 for ms in restart_ms.values()), restart_ms  # a hang, not a pace
