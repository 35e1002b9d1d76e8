"""The offline demo: the whole agent against the local NavTalk emulator (``make demo``).

::

    guest.wav (espeak-ng) ─▶ mic ─▶ session ◀─WebSocket/WebRTC─▶ emulator (embedded)
                                     │                               │
                   tools ◀─tool.call─┤            display ◀─avatar video + voice
                                     ▼               │          ▼
                               history.json     avatar.mp4   speaker ─▶ speaker.wav

1. Writes two guests to ``out/guest.wav``: guest A speaks each line of the
   emulator script's ``hears`` list (espeak-ng) at the time given in
   :data:`GUEST_TIMELINE` (one line talks over the avatar: the barge-in) and says
   goodbye (``end_conversation``: the session closes); after a pause guest B
   speaks :data:`SECOND_GUEST`, and B's voice opens a new session (the profile's
   ``start_triggers`` include ``voice``; the pre-roll keeps B's first words).
2. Runs ``navtalk-agent run --config config/emulator.toml`` (the supervisor
   starts the emulator and every service) with the outputs pointed at ``out/``.
3. Shows a live view of the bus (process health, session state, transcripts,
   tool calls) until the avatar has ended both conversations, then stops everything
   cleanly and prints where the files are.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import tomllib
import wave
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
from rich.console import Group

from agent import topics
from agent.bus import Bus
from agent.config import load, navtalk_license
from agent.emulator.tts import OUT_RATE_HZ, Tts
from agent.logs import redact
from agent.messages import (
    AssistantTranscript,
    BargeIn,
    Heartbeat,
    SessionPhase,
    SessionState,
    SpeakerState,
    ToolCall,
    ToolResult,
    UserTranscript,
)
from agent.resources import packaged_path_overrides, profile_path
from agent.topics import Plane

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = (ROOT / "pyproject.toml").is_file()  # else an installed wheel (site-packages)
# config/emulator.toml: the checkout's, or the copy shipped in the package (agent.resources)
DEFAULT_CONFIG = ROOT / "config" / "emulator.toml" if CHECKOUT else profile_path("emulator")

# When (seconds into guest.wav) the guest starts each line of the script's `hears` list.
# The lead-in covers process start-up and the avatar's greeting; each gap leaves room for
# the avatar's answer, except before the barge-in line, which starts while it still talks.
GUEST_TIMELINE: tuple[float, ...] = (8.0, 16.0, 25.5, 39.5, 45.0, 55.0)
# Guest B, after A's goodbye and a pause (the session idle, no socket open): B's voice opens
# the next session. Each line must be one of the script's `hears` (what the emulator knows).
SECOND_GUEST: tuple[str, ...] = ("Hello, who are you?", "Thank you. Goodbye.")
SECOND_GUEST_TIMELINE: tuple[float, ...] = (70.0, 78.0)
# With --script: B's first line starts this long after the answer allowance of A's last line
# (A's goodbye played, the session closed, then silence).
PAUSE_S = 8.0
TAIL_SILENCE_S = 12.0
# Another script (--script) has no hand-tuned timeline: the guest's first line starts after
# the lead-in, each next one this long after the previous one ended (the avatar's answer).
LEAD_IN_S = 8.0
ANSWER_ALLOWANCE_S = 7.0


@dataclass
class Outputs:
    out: Path
    guest_wav: Path
    speaker_wav: Path
    avatar_mp4: Path
    history_db: Path
    history_json: Path
    bus_record: Path
    logs: Path

    @classmethod
    def under(cls, out: Path) -> Outputs:
        return cls(
            out=out,
            guest_wav=out / "guest.wav",
            speaker_wav=out / "speaker.wav",
            avatar_mp4=out / "avatar.mp4",
            history_db=out / "history.sqlite3",
            history_json=out / "history.json",
            bus_record=out / "bus.jsonl",
            logs=out / "logs",
        )


def script_lines(script_path: Path) -> list[str]:
    with script_path.open("rb") as f:
        hears = tomllib.load(f).get("hears", [])
    if not isinstance(hears, list) or not all(isinstance(h, str) for h in hears):
        raise ValueError(f"{script_path}: `hears` must be a list of strings")
    return list(hears)


def paced_starts(durations_s: Sequence[float], *, pause_before: int = -1) -> list[float]:
    """Start times for lines of these lengths: after the lead-in, then one answer apart;
    line ``pause_before`` (the second guest's first) waits :data:`PAUSE_S` longer."""
    starts, t = [], LEAD_IN_S
    for i, d in enumerate(durations_s):
        if i == pause_before:
            t += PAUSE_S
        starts.append(round(t, 3))
        t += d + ANSWER_ALLOWANCE_S
    return starts


async def write_guest_wav(
    path: Path,
    lines: Sequence[str],
    starts_s: Sequence[float] | None,
    *,
    tail_s: float = TAIL_SILENCE_S,
    pause_before: int = -1,
) -> list[tuple[float, float]]:
    """Speak each line at its start time into one 24 kHz mono WAV; returns (start, end) s.
    ``starts_s`` None: :func:`paced_starts` (any number of lines, with the pause before
    line ``pause_before``)."""
    if not lines:
        raise ValueError("the script has no guest lines (`hears` is empty)")
    if starts_s is not None and len(lines) != len(starts_s):
        raise ValueError(f"{len(lines)} guest lines but {len(starts_s)} start times")
    tts = Tts()
    clips = [np.frombuffer(await tts.synthesize(t), dtype="<i2") for t in lines]
    if starts_s is None:
        starts_s = paced_starts([len(c) / OUT_RATE_HZ for c in clips], pause_before=pause_before)
    spans = [(s, s + len(c) / OUT_RATE_HZ) for s, c in zip(starts_s, clips, strict=True)]
    total = int((spans[-1][1] + tail_s) * OUT_RATE_HZ)
    pcm = np.zeros(total, dtype="<i2")
    for (start, _), clip in zip(spans, clips, strict=True):
        at = int(start * OUT_RATE_HZ)
        pcm[at : at + len(clip)] = clip
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(OUT_RATE_HZ)
        w.writeframes(pcm.tobytes())
    return spans


def overrides_for(outputs: Outputs, *, window: bool, script: Path | None) -> list[str]:
    sets = [
        f'mic.wav_path="{outputs.guest_wav}"',
        f'speaker.wav_path="{outputs.speaker_wav}"',
        f'display.file_path="{outputs.avatar_mp4}"',
        f'session.history_db_path="{outputs.history_db}"',
        f'log.dir="{outputs.logs}"',
        f'emulator.conformance_log_path="{outputs.out / "conformance.jsonl"}"',
    ]
    if window:
        sets.append('display.backend="window"')
    if script is not None:
        sets.append(f'emulator.script_path="{script}"')
    return sets


@dataclass
class View:
    """What the live view shows; fed from the bus, rendered by rich (or printed plainly)."""

    visits: int = 1  # conversations (sessions) that end the demo
    processes: dict[str, Heartbeat] = field(default_factory=dict)
    phase: str = "starting"
    detail: str = ""
    transcript: list[tuple[str, str]] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    barge_ins: int = 0  # the guest interrupted the avatar
    speaker_playing: bool = False
    partial: dict[str, str] = field(default_factory=dict)
    ended: bool = False
    was_ready: bool = False
    visits_ended: int = 0
    messages: int = 0
    license_leaks: int = 0  # bus messages that carried the license (must stay 0)

    def feed(self, msg: object) -> str | None:
        """Update from one bus message; returns a plain-text line worth printing, if any."""
        if isinstance(msg, Heartbeat):
            self.processes[msg.service] = msg
        elif isinstance(msg, SessionState):
            changed = msg.phase.value != self.phase
            self.phase, self.detail = msg.phase.value, msg.detail
            if msg.phase is SessionPhase.READY:
                self.was_ready = True
            # IDLE after a conversation: it ended on purpose (end_conversation); FAILED: for good.
            # CLOSED alone is a drop that the session recovers from by reconnecting.
            if msg.phase is SessionPhase.FAILED:
                self.ended = True
            elif self.was_ready and msg.phase is SessionPhase.IDLE:
                self.was_ready = False
                self.visits_ended += 1
                self.ended = self.visits_ended >= self.visits
            if changed:
                return f"session: {msg.phase.value} {msg.detail}".rstrip()
        elif isinstance(msg, UserTranscript):
            self.transcript.append(("guest", msg.text))
            return f"guest:  {msg.text}"
        elif isinstance(msg, AssistantTranscript):
            if msg.final:
                self.partial.pop(msg.response_id, None)
                self.transcript.append(("avatar", msg.text))
                return f"avatar: {msg.text}"
            self.partial[msg.response_id] = self.partial.get(msg.response_id, "") + msg.text
        elif isinstance(msg, ToolCall):
            self.tools.append(f"→ {msg.name}({msg.arguments_json})")
            return f"tool call:   {msg.name}({msg.arguments_json})"
        elif isinstance(msg, ToolResult):
            shown = msg.output_json if msg.ok else f"error: {msg.error}"
            self.tools.append(f"← {msg.name}: {shown[:70]}")
            return f"tool result: {msg.name} -> {shown[:100]}"
        elif isinstance(msg, SpeakerState):
            self.speaker_playing = msg.playing
        elif isinstance(msg, BargeIn):
            # The session sends one each time the guest starts to speak; it is an
            # interruption only while the avatar talks or its answer is unfinished.
            if not (self.partial or self.speaker_playing):
                return None
            self.barge_ins += 1
            for text in self.partial.values():  # what the avatar said before it was cut off
                self.transcript.append(("avatar", f"{text.rstrip()} … (interrupted)"))
            self.partial.clear()
            return "barge-in: the guest interrupted; playback flushed"
        return None

    def render(self) -> Group:
        from rich.markup import escape
        from rich.panel import Panel
        from rich.table import Table

        procs = Table(title="processes", expand=True)
        for col in ("service", "pid", "status", "uptime"):
            procs.add_column(col)
        for name, hb in sorted(self.processes.items()):
            procs.add_row(name, str(hb.pid), hb.status, f"{hb.uptime_s:5.1f} s")
        lines = [f"[bold]{who:>6}[/]: {escape(text)}" for who, text in self.transcript[-10:]]
        lines += [f"[dim]avatar: {escape(text)}…[/]" for text in self.partial.values()]
        return Group(
            procs,
            Panel(f"{self.phase} {self.detail}  ·  barge-ins: {self.barge_ins}", title="session"),
            Panel("\n".join(lines) or "(nobody has spoken yet)", title="conversation"),
            Panel(
                "\n".join(escape(t) for t in self.tools[-6:]) or "(no tool calls yet)",
                title="tool calls",
            ),
        )


async def watch(
    config: Path, overrides: Sequence[str], proc: asyncio.subprocess.Process, timeout_s: float,
    *, live: bool, record: Path, visits: int = 1,
) -> View:  # fmt: skip
    """Follow the bus until ``visits`` conversations ended; record every control message
    (redacted)."""
    settings = load(config, overrides)
    secret = navtalk_license().encode()
    view = View(visits=visits)
    deadline = time.monotonic() + timeout_s
    async with Bus(settings.bus, topics.EXTERNAL, media_queue=50) as bus:
        bus.subscribe(*(s.prefix for s in topics.TOPICS.values() if s.plane is Plane.CONTROL))
        ctx = contextlib.nullcontext()
        if live:
            from rich.live import Live

            ctx = Live(view.render(), refresh_per_second=4)  # type: ignore[assignment]
        with ctx as screen, record.open("w") as rec:
            while not view.ended and proc.returncode is None and time.monotonic() < deadline:
                try:
                    d = await asyncio.wait_for(bus.recv(), 0.25)
                except TimeoutError:
                    continue
                view.messages += 1
                body = msgspec.json.encode(d.msg)
                if secret and secret in body:
                    view.license_leaks += 1
                rec.write(
                    redact(f'{{"topic":"{d.topic}","sender":"{d.sender}","msg":{body.decode()}}}')
                )
                rec.write("\n")
                line = view.feed(d.msg)
                if screen is not None:
                    screen.update(view.render())
                elif line:
                    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
    return view


def export_history(db: Path, out: Path) -> int:
    from agent.navtalk.history import ConversationStore

    if not db.exists():
        out.write_text("[]\n")
        return 0
    with ConversationStore(db) as store:
        turns = store.turns()
    out.write_text(json.dumps(msgspec.to_builtins(turns), indent=2, ensure_ascii=False) + "\n")
    return len(turns)


def _prepare(outputs: Outputs, config: Path, script: Path | None) -> list[str]:
    """Make the output folders, remove the last run's files, read the guest's lines."""
    outputs.logs.mkdir(parents=True, exist_ok=True)
    for stale in (outputs.speaker_wav, outputs.avatar_mp4, outputs.history_db):
        stale.unlink(missing_ok=True)
    settings = load(config, packaged_path_overrides(config, ROOT))
    script_path = script or Path(settings.emulator.script_path or "")
    if not script_path.is_file():
        raise SystemExit(f"demo: the emulator script {script_path} does not exist")
    return script_lines(script_path)


async def run_demo(
    *,
    out: Path,
    config: Path = DEFAULT_CONFIG,
    window: bool = False,
    timeout_s: float = 100.0,
    live: bool | None = None,
    starts_s: Sequence[float] | None = None,
    script: Path | None = None,
    extra_overrides: Sequence[str] = (),
    second_guest: Sequence[str] | None = None,
) -> int:
    """``starts_s``: when each line starts, guest A's then ``second_guest``'s (empty: A only;
    None: :data:`SECOND_GUEST`, or with ``script`` its first and last `hears` lines)."""
    outputs = Outputs.under(await asyncio.to_thread(out.resolve))
    first = await asyncio.to_thread(_prepare, outputs, config, script)
    if second_guest is None:
        second_guest = SECOND_GUEST if script is None else [first[0], first[-1]][: len(first)]
    lines = [*first, *second_guest]
    print(
        f"demo: synthesizing the guests' lines ({len(first)} + {len(second_guest)})"
        " with espeak-ng ...",
        flush=True,
    )
    if starts_s is None and script is None:
        # tuned by hand for the built-in script (with its barge-in)
        starts_s = (*GUEST_TIMELINE, *SECOND_GUEST_TIMELINE)[: len(lines)]
    elif starts_s is not None:
        starts_s = starts_s[: len(lines)]
    pause_before = len(first) if second_guest else -1
    spans = await write_guest_wav(outputs.guest_wav, lines, starts_s, pause_before=pause_before)
    overrides = [
        *packaged_path_overrides(config, ROOT),  # outside a checkout: the shipped script
        *overrides_for(outputs, window=window, script=script),
        *extra_overrides,
    ]
    args = [sys.executable, "-m", "agent", "run", "--config", str(config)]
    for item in overrides:
        args += ["--set", item]
    print(f"demo: starting the agent: navtalk-agent run --config {config}", flush=True)
    sup_log = await asyncio.to_thread((outputs.logs / "run.log").open, "wb")
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, stdout=sup_log, stderr=subprocess.STDOUT
    )
    t0 = time.monotonic()
    live = sys.stdout.isatty() if live is None else live
    try:
        view = await watch(
            config, overrides, proc, timeout_s + spans[-1][1], live=live,
            record=outputs.bus_record, visits=2 if second_guest else 1,
        )  # fmt: skip
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            code = await proc.wait()
        sup_log.close()
    turns = export_history(outputs.history_db, outputs.history_json)
    print(f"\ndemo: finished in {time.monotonic() - t0:.0f} s; agent exit code {code}")
    if not view.ended:
        print(
            f"demo: {view.visits_ended} of {view.visits} conversations ended by themselves"
            " (see out/logs/)",
            file=sys.stderr,
        )
    if view.license_leaks:
        print(f"demo: {view.license_leaks} bus message(s) carried the license!", file=sys.stderr)
    for label, path in (
        ("avatar video (with captions)", outputs.avatar_mp4),
        ("what the speaker played", outputs.speaker_wav),
        ("the guest's microphone", outputs.guest_wav),
        (f"conversation history ({turns} turns)", outputs.history_json),
        (f"bus recording ({view.messages} messages)", outputs.bus_record),
        ("logs", outputs.logs),
    ):
        print(f"  {label:<34} {path}{'' if path.exists() else '  (missing!)'}")
    return 0 if code == 0 and view.ended and not view.license_leaks else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.apps.demo", description="The offline demo against the local emulator."
    )
    out = ROOT / "out" if CHECKOUT else Path("out")  # never into site-packages
    parser.add_argument("--out", type=Path, default=out, help="output directory")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="agent profile")
    parser.add_argument("--window", action="store_true", help="show the real avatar window")
    parser.add_argument("--timeout", type=float, default=100.0, help="give up after S seconds")
    parser.add_argument("--plain", action="store_true", help="plain log lines, no live view")
    parser.add_argument(
        "--script", type=Path, help="the emulator script (its `hears`: the guest's lines)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting of the agent, e.g. --set speaker.volume=0.5 (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    return asyncio.run(
        run_demo(
            out=args.out,
            config=args.config,
            window=args.window,
            timeout_s=args.timeout,
            live=False if args.plain else None,
            script=args.script.resolve() if args.script else None,
            extra_overrides=args.overrides,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
