"""Soak: the whole agent in a typed conversation for N minutes; memory, fds, threads, CPU
of every process, sampled every 10 s.

The whole agent runs under the real supervisor (``navtalk-agent run``, subprocess) with the
embedded emulator, null mic/speaker/display backends (no devices needed) and, unless
``--no-video``, the emulator's WebRTC avatar video received by the display (decoded and
composed, shown on no screen). This process plays the guest on the bus: a question on
``input.text`` every few seconds, cycling through the emulator's default script

- "Hello, who are you?"            -> a reply, no tool
- "What time is it?"               -> the ``get_current_time`` tool
- "I have a reservation for Smith." -> ``lookup_reservation`` (examples/reception-tools)
- "Goodbye."                       -> ``end_conversation``: the session ends; the bench
                                      starts a new one (``control.session`` start)

so every cycle also closes and opens a NavTalk connection. A question is answered when a
final ``navtalk.transcript.assistant`` with its expected words arrives within 60 s. A tool
call (``tool.call``) is answered exactly once when exactly one ``tool.result`` carries its
call_id (the session's safety-net result would be a second one).

Every 10 s it reads, for the supervisor (with the bus proxy threads), the zygote, every
service (pid from its heartbeat) and the emulator: RSS and PSS (``/proc/PID/smaps_rollup``),
open fds (``/proc/PID/fd``), threads and CPU seconds (``/proc/PID/stat``), and the load
average. The slope is a least-squares line over the samples after the warm-up (2 min);
a process whose RSS grows more than 10 % per hour of its size at the warm-up is flagged.

    scripts/with-virtual-devices.sh .venv/bin/python -m bench.bench_soak [--minutes 60]

``python -m bench`` (``make bench``) runs it with no arguments: ``BENCH_SOAK_MINUTES``
(default 60) sets the length there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent import topics
from agent.bus import Bus
from agent.config import BusSettings, ControlPlane, MediaPlane, Settings, bus_toml, load
from agent.messages import (
    AssistantTranscript,
    Heartbeat,
    SessionControl,
    SessionPhase,
    SessionState,
    TextInput,
    ToolCall,
    ToolResult,
)
from bench.common import save, start_supervisor, stop_supervisor, table

ROOT = Path(__file__).resolve().parents[1]
# every service a default profile runs (the camera runs only with camera.enabled)
SERVICES = tuple(s for s in topics.SERVICES if s != topics.CAMERA)
_TICK = os.sysconf("SC_CLK_TCK")
ANSWER_TIMEOUT_S = 60.0  # a long spoken answer at the emulator's real-time pace
GROWTH_FLAG_PCT_PER_H = 10.0

# (question, words its answer contains, the tool the emulator calls for it)
QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("Hello, who are you?", "digital human", ""),
    ("What time is it?", "it is", "get_current_time"),
    ("I have a reservation for Smith.", "smith", "lookup_reservation"),
    ("Goodbye.", "wonderful day", "end_conversation"),
)


def _bus_settings(d: str) -> BusSettings:
    return BusSettings(
        control=ControlPlane(publish=f"ipc://{d}/c-in", subscribe=f"ipc://{d}/c-out", hwm=100_000),
        media=MediaPlane(publish=f"ipc://{d}/m-in", subscribe=f"ipc://{d}/m-out", hwm=100),
    )


def _config(d: str, *, video: bool) -> Path:
    path = Path(d) / "soak.toml"
    path.write_text(
        bus_toml(_bus_settings(d))
        + f"""
[emulator]
embedded = true
port = 0
webrtc = {str(video).lower()}

[session]
audio_only = {str(not video).lower()}
history_db_path = "{d}/history.sqlite3"

[mic]
backend = "null"

[speaker]
backend = "null"
audio_only = {str(not video).lower()}

[display]
backend = "null"

[tools]
disabled_builtins = ["take_photo"]
"""
    )
    return path


# --- /proc ---------------------------------------------------------------------------


def read_proc(pid: int) -> dict[str, float] | None:
    """RSS/PSS (kB), fds, threads, CPU seconds of ``pid``; None when it is gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    mem = {}
    for line in rollup.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            mem[key] = float(rest.split()[0])
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return {
        "rss_kb": mem.get("Rss", 0.0),
        "pss_kb": mem.get("Pss", 0.0),
        "fds": float(fds),
        "threads": float(fields[17]),  # field 20 overall: num_threads
        "cpu_s": (int(fields[11]) + int(fields[12])) / _TICK,  # utime + stime
    }


def _children_of(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


class SpawnLog:
    """The pids the supervisor logs (``= NAME: spawned, pid N``), read as the log grows:
    the emulator, forked by the zygote like the services, sends no heartbeat."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.pid: dict[str, int] = {}

    def poll(self) -> dict[str, int]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for m in _SPAWNED.finditer(chunk[:end].decode(errors="replace")):
            self.pid[m["name"]] = int(m["pid"])
        return self.pid


_SPAWNED = re.compile(r"= (?P<name>[a-z]+): spawned, pid (?P<pid>\d+)")


def processes(sup_pid: int, service_pid: dict[str, int], spawned: dict[str, int]
              ) -> dict[str, int]:  # fmt: skip
    """Role -> pid: the supervisor, the zygote, the emulator, every service."""
    out = {"supervisor": sup_pid}
    for child in _children_of(sup_pid):
        if any("agent.apps.zygote" in a for a in _cmdline(child)):
            out["zygote"] = child
    if "emulator" in spawned:
        out["emulator"] = spawned["emulator"]
    for service, pid in service_pid.items():
        out[service] = pid
    return out


# --- the guest -----------------------------------------------------------------------


@dataclass
class Guest:
    """What the bench sees of the agent on the bus, and what it asked."""

    bus: Bus
    pid: dict[str, int] = field(default_factory=dict)
    phase: SessionPhase | None = None
    readies: int = 0
    answers: list[str] = field(default_factory=list)
    calls: dict[str, str] = field(default_factory=dict)  # call_id -> tool
    results: Counter[str] = field(default_factory=Counter)  # call_id -> tool.results
    asked: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)
    latency_s: list[float] = field(default_factory=list)
    not_ready: int = 0  # rounds the session did not come back in time
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async for d in self.bus:
            msg = d.msg
            if isinstance(msg, Heartbeat) and msg.service in SERVICES:
                self.pid[msg.service] = msg.pid
            elif isinstance(msg, SessionState):
                if msg.phase is SessionPhase.READY and self.phase is not SessionPhase.READY:
                    self.readies += 1
                self.phase = msg.phase
            elif isinstance(msg, AssistantTranscript) and msg.final:
                self.answers.append(msg.text)
            elif isinstance(msg, ToolCall):
                self.calls[msg.call_id] = msg.name
            elif isinstance(msg, ToolResult):
                self.results[msg.call_id] += 1
            self.changed.set()

    async def until(self, cond: Any, timeout: float) -> bool:
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                while not cond():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            return False
        return True

    async def ready(self, timeout: float) -> bool:
        """The session READY; a session that ended (IDLE) is started again."""
        deadline = time.monotonic() + timeout
        while not self.is_ready() and time.monotonic() < deadline:
            if self.phase in (SessionPhase.IDLE, SessionPhase.FAILED):
                self.bus.publish(topics.CONTROL_SESSION, SessionControl(action="start"))
            await self.until(self.is_ready, min(5.0, deadline - time.monotonic()))
        return self.is_ready()

    def is_ready(self) -> bool:
        return self.phase is SessionPhase.READY

    async def converse(self, stop_at: float, every_s: float) -> None:
        i = 0
        while time.monotonic() < stop_at:
            question, expect, _tool = QUESTIONS[i % len(QUESTIONS)]
            i += 1
            t0 = time.monotonic()
            if not await self.ready(30.0):
                self.not_ready += 1
                continue
            before = len(self.answers)
            t_ask = time.monotonic()
            self.bus.publish(topics.INPUT_TEXT, TextInput(text=question))
            self.asked[question] += 1
            if await self.until(
                lambda b=before, e=expect: any(e in a.lower() for a in self.answers[b:]),
                ANSWER_TIMEOUT_S,
            ):
                self.answered[question] += 1
                self.latency_s.append(time.monotonic() - t_ask)
            if expect == "wonderful day":  # the session ends after its goodbye
                await self.until(lambda: self.phase is not SessionPhase.READY, 15.0)
            pause = every_s - (time.monotonic() - t0)
            if pause > 0:
                await asyncio.sleep(pause)  # pacing of the conversation, not synchronization


# --- the run -------------------------------------------------------------------------


async def _sample_loop(
    sup: subprocess.Popen[bytes], guest: Guest, spawn_log: SpawnLog, t_start: float,
    stop_at: float, every_s: float, series: dict[str, list[dict[str, float]]],
    pids: dict[str, set[int]], load: list[list[float]],
) -> None:  # fmt: skip
    while True:
        now = time.monotonic()
        for role, pid in processes(sup.pid, guest.pid, spawn_log.poll()).items():
            got = read_proc(pid)
            if got is None:
                continue
            series.setdefault(role, []).append({"t_s": round(now - t_start, 2), **got})
            pids.setdefault(role, set()).add(pid)
        load.append([round(now - t_start, 2), *os.getloadavg()])
        if now >= stop_at:
            return
        await asyncio.sleep(min(every_s, max(0.0, stop_at - now)))


def _slope_per_h(t: np.ndarray, y: np.ndarray) -> float:
    if t.size < 3 or float(t.max() - t.min()) <= 0:
        return float("nan")
    return float(np.polyfit(t, y, 1)[0]) * 3600


def summarize(role: str, samples: list[dict[str, float]], n_pids: int, warmup_s: float
              ) -> dict[str, Any]:  # fmt: skip
    t = np.array([s["t_s"] for s in samples])
    after = t >= warmup_s
    short = bool(after.sum() < 3)
    if short:  # a run shorter than the warm-up: slopes over all of it, nothing flagged
        after = np.ones_like(t, dtype=bool)
    row: dict[str, Any] = {"process": role, "pids": n_pids, "samples": len(samples)}
    for key, scale in (("rss_kb", 1024), ("pss_kb", 1024), ("fds", 1), ("threads", 1)):
        y = np.array([s[key] for s in samples]) / scale
        name = key.removesuffix("_kb")
        row[f"{name}_start"] = round(float(y[0]), 1)
        row[f"{name}_warm"] = round(float(y[after][0]), 1)
        row[f"{name}_end"] = round(float(y[-1]), 1)
        row[f"{name}_max"] = round(float(y.max()), 1)
        row[f"{name}_slope_h"] = round(_slope_per_h(t[after], y[after]), 2)
    warm = row["rss_warm"]
    row["rss_pct_h"] = round(100 * row["rss_slope_h"] / warm, 1) if warm else float("nan")
    cpu = np.array([s["cpu_s"] for s in samples])
    span = float(t[-1] - t[0])
    row["cpu_s"] = round(float(cpu[-1] - cpu[0]), 1)
    row["cpu_pct"] = round(100 * row["cpu_s"] / span, 1) if span > 0 else float("nan")
    row["grows"] = not short and bool(row["rss_pct_h"] > GROWTH_FLAG_PCT_PER_H)
    return row


def _log_counts(text: str) -> dict[str, int]:
    return {
        "bytes": len(text.encode()),
        "lines": text.count("\n"),
        "warning": text.count(" WARNING "),
        "error": text.count(" ERROR "),
        "traceback": text.count("Traceback (most recent call last)"),
        "died": text.count(" died ("),
        "session_lost": text.count("NavTalk session lost"),
        "conformance": text.count("! conformance:"),
        "webrtc_local_offers": text.count("> webrtc.local.offer"),
        "webrtc_failed": text.count("= webrtc failed"),
    }


async def guest_on_bus(settings: Settings, sender: str) -> tuple[Bus, Guest, asyncio.Task[None]]:
    """The guest's bus client, reading, once every service of a default profile is up."""
    bus = Bus(settings.bus, sender)
    bus.subscribe("health.", topics.SESSION_STATE, topics.NAVTALK_TRANSCRIPT_ASSISTANT,
                  topics.TOOL_CALL, topics.TOOL_RESULT)  # fmt: skip
    await bus.start(timeout=30)
    guest = Guest(bus)
    reader = asyncio.create_task(guest.run())
    if not await guest.until(lambda: all(s in guest.pid for s in SERVICES), 90):
        raise RuntimeError(f"services up: {sorted(guest.pid)} of {SERVICES}")
    return bus, guest, reader


async def bench(minutes: float, every_s: float, ask_every_s: float, warmup_s: float,
                video: bool, log_path: Path) -> dict[str, Any]:  # fmt: skip
    d = tempfile.mkdtemp(prefix="nts-")
    cfg = _config(d, video=video)
    settings = load(cfg)
    sup = start_supervisor(cfg, log_path)
    series: dict[str, list[dict[str, float]]] = {}
    pids: dict[str, set[int]] = {}
    loadavg: list[list[float]] = []
    try:
        bus, guest, reader = await guest_on_bus(settings, "soak")
        t_start = time.monotonic()
        stop_at = t_start + minutes * 60
        print(f"soak: {minutes:g} min, sampling every {every_s:g} s, a question every "
              f"{ask_every_s:g} s, video {'on' if video else 'off'}", flush=True)  # fmt: skip
        sampler = asyncio.create_task(
            _sample_loop(
                sup, guest, SpawnLog(log_path), t_start, stop_at, every_s, series, pids, loadavg
            )
        )
        await guest.converse(stop_at, ask_every_s)
        await sampler
        # the last calls' results
        await guest.until(lambda: all(guest.results[c] for c in guest.calls), 15.0)
        reader.cancel()
        await bus.close()
    finally:
        await asyncio.to_thread(stop_supervisor, sup)
        shutil.rmtree(d, ignore_errors=True)
    order = ("supervisor", "zygote", "emulator", *SERVICES)
    roles = sorted(series, key=lambda r: order.index(r) if r in order else len(order))
    rows = [summarize(r, series[r], len(pids[r]), warmup_s) for r in roles if len(series[r]) >= 2]
    counts = Counter(guest.results[c] for c in guest.calls)
    stray = sum(n for c, n in guest.results.items() if c not in guest.calls)
    log_text = await asyncio.to_thread(log_path.read_text, errors="replace")
    la = np.array([x[1:] for x in loadavg]) if loadavg else np.zeros((1, 3))
    return {
        "minutes": minutes,
        "sample_every_s": every_s,
        "ask_every_s": ask_every_s,
        "warmup_s": warmup_s,
        "video": video,
        "supervisor_exit": sup.returncode,
        "conversation": {
            "asked": sum(guest.asked.values()),
            "answered": sum(guest.answered.values()),
            "per_question": {q: [guest.asked[q], guest.answered[q]] for q, _, _ in QUESTIONS},
            "session_not_ready": guest.not_ready,
            "sessions_ready": guest.readies,
            "answer_s": _pcts(guest.latency_s),
        },
        "tool_calls": {
            "calls": len(guest.calls),
            "per_tool": dict(Counter(guest.calls.values())),
            "answered_once": counts.get(1, 0),
            "unanswered": counts.get(0, 0),
            "answered_more": sum(v for k, v in counts.items() if k > 1),
            "results_without_call": stray,
        },
        "loadavg_1m": {
            "min": round(float(la[:, 0].min()), 2),
            "mean": round(float(la[:, 0].mean()), 2),
            "max": round(float(la[:, 0].max()), 2),
        },  # fmt: skip
        "supervisor_log": _log_counts(log_text),
        "processes": rows,
        "series": series,
        "loadavg": loadavg,
    }


def _pcts(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    a = np.asarray(xs)
    return {"n": int(a.size), "p50_s": round(float(np.percentile(a, 50)), 2),
            "p99_s": round(float(np.percentile(a, 99)), 2),
            "max_s": round(float(a.max()), 2)}  # fmt: skip


def report(r: dict[str, Any]) -> None:
    rows = r["processes"]
    print()
    mem_cols = ["process", "pids", "rss_start", "rss_warm", "rss_end", "rss_max", "rss_slope_h",
                "rss_pct_h", "pss_start", "pss_end", "pss_max", "pss_slope_h"]  # fmt: skip
    print(table(f"Memory (MB; slope per hour after {r['warmup_s']:g} s)", rows, mem_cols))
    print()
    other = ["process", "fds_start", "fds_end", "fds_max", "fds_slope_h", "threads_start",
             "threads_end", "threads_max", "cpu_s", "cpu_pct"]  # fmt: skip
    print(table("Open fds, threads, CPU", rows, other))
    c, t = r["conversation"], r["tool_calls"]
    print(
        f"\nquestions answered / asked: {c['answered']} / {c['asked']} "
        f"(per question {c['per_question']}; session not ready in time: "
        f"{c['session_not_ready']}; sessions: {c['sessions_ready']}; answer {c['answer_s']})"
    )
    print(
        f"tool calls: {t['calls']} {t['per_tool']}; answered exactly once "
        f"{t['answered_once']}, never {t['unanswered']}, more than once {t['answered_more']}, "
        f"results without a call {t['results_without_call']}"
    )
    print(f"load average (1 min) during the run: {r['loadavg_1m']}")
    print(f"supervisor log: {r['supervisor_log']}")  # fmt: skip
    for row in rows:
        if row["grows"]:
            print(f"GROWS: {row['process']} RSS {row['rss_slope_h']:+.1f} MB/h = "
                  f"{row['rss_pct_h']:+.1f} %/h of {row['rss_warm']} MB (> "
                  f"{GROWTH_FLAG_PCT_PER_H:g} %/h)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float,
                        default=float(os.environ.get("BENCH_SOAK_MINUTES", "60")))  # fmt: skip
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds")
    parser.add_argument("--ask-every", type=float, default=5.0, help="seconds per question")
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds before slopes")
    parser.add_argument("--no-video", action="store_true", help="no WebRTC (audio on the bus)")
    parser.add_argument("--name", default="soak", help="results file name")
    args = parser.parse_args()
    log_path = Path(tempfile.gettempdir()) / f"bench-soak-{os.getpid()}.log"
    result = asyncio.run(bench(args.minutes, args.sample_every, args.ask_every, args.warmup,
                               not args.no_video, log_path))  # fmt: skip
    report(result)
    print(f"\nsupervisor log: {log_path}")
    print(f"saved {save(args.name, result)}")
    t = result["tool_calls"]
    ok = result["supervisor_exit"] == 0 and t["unanswered"] == 0 and t["answered_more"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
