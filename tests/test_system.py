"""The whole machine: the demo's conversation (shorter), every process, the embedded emulator.

Runs ``agent.apps.demo.run_demo`` exactly as ``make demo`` does (the supervisor as a
subprocess, the emulator as its child, the guest as a WAV played in real time)
and asserts on what comes out: the stored conversation, the speaker's WAV, the
avatar's MP4, the exit codes, the process table and the logs.
"""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path

import numpy as np
import pytest

from agent.apps.demo import run_demo
from tests.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "fixtures" / "system-script.toml"
# guest A's lines (the script's `hears`), then guest B's after A's goodbye and a pause
TIMELINE = (6.0, 14.5, 28.5, 34.0, 42.0, 56.0, 63.0)
SECOND_GUEST = ("What time is it?", "Thank you. Goodbye.")
LICENSE = "SYSTEM-TEST-LICENSE-7f3a9c1e5b"


def _speech_envelope(path: Path, hop_s: float = 0.04) -> tuple[np.ndarray, float]:
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(float)
        if w.getnchannels() > 1:
            x = x.reshape(-1, w.getnchannels()).mean(axis=1)
    hop = int(rate * hop_s)
    n = len(x) // hop
    rms = np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(axis=1))
    return rms, hop_s


def _mouth_series(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(presentation times in s, mouth opening) of every frame. Times, not frame indexes:
    the display writes frames at the time it showed them, with gaps when it fell behind."""
    import av

    from agent.emulator.avatar import measure_mouth_open

    times, values = [], []
    with av.open(str(path)) as container:
        for f in container.decode(container.streams.video[0]):
            times.append(float(f.time or 0.0))
            values.append(measure_mouth_open(f.to_ndarray(format="bgr24")))
    return np.asarray(times), np.asarray(values)


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            pids.append(int(entry.name))
    return pids


# Client bugs the strict emulator (issue 11) finds in today's agent; it closes each
# offending connection (1008) and exits 1, so these fail until the session is fixed:
# - tools_declared_twice: services/session.py declares the tools on open and again on every
#   unchanged tool.catalog (2-3 declarations per connection);
# - offer_unanswered: the server's first WebRTC offer gets no answer within 3 s.
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    import asyncio
    import tempfile

    out = tmp_path_factory.mktemp("system") / "out"
    bus_dir = tempfile.mkdtemp(prefix="nts-")
    port = free_port()
    overrides = [
        f'bus.control.publish="ipc://{bus_dir}/c-in"',
        f'bus.control.subscribe="ipc://{bus_dir}/c-out"',
        f'bus.media.publish="ipc://{bus_dir}/m-in"',
        f'bus.media.subscribe="ipc://{bus_dir}/m-out"',
        f"emulator.port={port}",
        "mic.pad_silence=true",
    ]
    old = os.environ.get("NAVTALK_LICENSE")
    os.environ["NAVTALK_LICENSE"] = LICENSE
    try:
        code = asyncio.run(
            run_demo(
                out=out,
                timeout_s=60,
                live=False,
                starts_s=TIMELINE,
                script=SCRIPT,
                extra_overrides=overrides,
                second_guest=SECOND_GUEST,
            )
        )
    finally:
        if old is None:
            os.environ.pop("NAVTALK_LICENSE", None)
        else:
            os.environ["NAVTALK_LICENSE"] = old
    return {"code": code, "out": out, "bus_dir": bus_dir}


def test_demo_ran_and_every_process_exited_zero(demo_run: dict[str, object]) -> None:
    out = Path(str(demo_run["out"]))
    run_log = (out / "logs" / "run.log").read_text()
    assert demo_run["code"] == 0, run_log[-3000:]
    last = [line for line in run_log.splitlines() if "all stopped:" in line][-1]
    codes = dict(part.split("=") for part in last.split("all stopped: ")[1].split(", "))
    assert set(codes) >= {"emulator", "tools", "speaker", "display", "mic", "session"}
    assert all(v == "0" for v in codes.values()), last


def test_no_orphan_processes(demo_run: dict[str, object]) -> None:
    assert _processes_mentioning(str(demo_run["out"])) == []
    assert _processes_mentioning(str(demo_run["bus_dir"])) == []


def test_transcripts_in_order_and_tool_results_spoken(demo_run: dict[str, object]) -> None:
    out = Path(str(demo_run["out"]))
    turns = json.loads((out / "history.json").read_text())
    users = [t["text"] for t in turns if t["role"] == "user"]
    assistant = [t["text"] for t in turns if t["role"] == "assistant"]
    import tomllib

    hears = tomllib.loads(SCRIPT.read_text())["hears"]
    assert users == [*hears, *SECOND_GUEST]
    spoken = " | ".join(assistant)
    assert "It is " in spoken  # get_current_time's output, spoken
    assert "Room 221" in spoken  # the example plugin's lookup_reservation output, spoken
    assert "Goodbye" in spoken
    assert spoken.index("It is ") < spoken.index("Room 221") < spoken.index("Goodbye")


def test_two_guests_two_sessions_and_no_socket_in_between(
    demo_run: dict[str, object],
) -> None:
    """A's goodbye closes the session; it stays idle (no socket) until B's voice opens the next."""
    import re

    lines = (Path(str(demo_run["out"])) / "logs" / "emulator.log").read_text().splitlines()
    events = []  # (index, "open"/"closed", session number) at the emulator
    for i, x in enumerate(lines):
        if m := re.search(r"< emulator: session (\d+) ", x):
            events.append((i, "open", int(m[1])))
        elif m := re.search(r"= emulator: session (\d+) closed", x):
            events.append((i, "closed", int(m[1])))
    assert [e[1:] for e in events] == [("open", 1), ("closed", 1), ("open", 2), ("closed", 2)]
    # between A's session closing and B's opening, no WebSocket but B's own was opened
    between = lines[events[1][0] : events[2][0]]
    assert sum("server.ws: connection open" in x for x in between) == 1, between
    session_log = (Path(str(demo_run["out"])) / "logs" / "session.log").read_text()
    assert "replaying" not in session_log, "a visit was sent history (A's turns to B?)"
    assert "visit 2 starts (voice)" in session_log  # B's voice opened B's session


def test_second_guest_first_sentence_whole_and_none_of_the_first(
    demo_run: dict[str, object],
) -> None:
    turns = json.loads((Path(str(demo_run["out"])) / "history.json").read_text())
    ids = list(dict.fromkeys(t["session_id"] for t in turns))
    assert len(ids) == 2, ids
    b = [t for t in turns if t["session_id"] == ids[1]]
    b_users = [t["text"] for t in b if t["role"] == "user"]
    assert b_users[0] == SECOND_GUEST[0]  # B's first sentence whole: the pre-roll worked
    assert b_users == list(SECOND_GUEST)  # and nothing of A's visit in B's
    assert "It is " in " ".join(t["text"] for t in b if t["role"] == "assistant")


def test_speaker_played_speech_in_step_with_the_mouth(demo_run: dict[str, object]) -> None:
    out = Path(str(demo_run["out"]))
    env, hop = _speech_envelope(out / "speaker.wav")
    speaking = env > 300
    assert speaking.mean() > 0.1, "the speaker WAV is (nearly) silent"
    mouth_t, mouth = _mouth_series(out / "avatar.mp4")
    assert mouth_t[-1] - mouth_t[0] > 20, "the video is too short"
    assert (mouth > 0.2).mean() > 0.05, "the mouth never opened"
    # put both on a 40 ms grid; the files start at different moments, so find the lag
    t = np.arange(0, min(len(env) * hop, mouth_t[-1]), hop)
    a = np.interp(t, np.arange(len(env)) * hop, speaking.astype(float))
    b = np.interp(t, mouth_t, (mouth > 0.2).astype(float))
    best = max(
        (
            float(
                np.corrcoef(a[max(0, k) : len(a) + min(0, k)], b[max(0, -k) : len(b) - max(0, k)])[
                    0, 1
                ]
            ),
            k,
        )
        for k in range(-100, 101)
    )
    assert best[0] > 0.5, f"speech and mouth movement do not overlap (r={best[0]:.2f})"


def test_barge_in_cut_the_long_answer(demo_run: dict[str, object]) -> None:
    out = Path(str(demo_run["out"]))
    run_log = "\n".join(p.read_text() for p in (out / "logs").glob("*.log"))
    assert "barge" in run_log.lower()
    env, hop = _speech_envelope(out / "speaker.wav")
    speaking = env > 300
    # the longest stretch of avatar speech (short pauses bridged) is far shorter than the
    # uninterrupted hotel answer (~16 s at 160 words per minute)
    longest = run = gap = 0
    for s in speaking:
        if s:
            run, gap = run + 1 + gap, 0
        elif run:
            gap += 1
            if gap > int(0.6 / hop):
                longest, run, gap = max(longest, run), 0, 0
    longest = max(longest, run)
    assert longest * hop < 10.0, f"an avatar answer played for {longest * hop:.1f} s uncut"


def _log_time(line: str) -> float:
    """Seconds since midnight of a log line (``2026-11-30 12:00:01.234 session ...``)."""
    h, m, sec = line.split()[1].split(":")
    return int(h) * 3600 + int(m) * 60 + float(sec)


def test_the_session_ended_when_the_goodbye_was_over(demo_run: dict[str, object]) -> None:
    """end_conversation ends the session once the speaker is quiet: it must go idle after
    the goodbye although the voice track streams on (silence), not at the 15 s limit."""
    lines = (Path(str(demo_run["out"])) / "logs" / "run.log").read_text().splitlines()
    asked = next(i for i, x in enumerate(lines) if "control.session end_after_speech" in x)
    ended = next(i for i, x in enumerate(lines) if "> ending the NavTalk session" in x)
    after = lines[asked:ended]
    assert any("= speaker playing" in x for x in after), "the goodbye was not played"
    assert any("= speaker idle" in x for x in after), "the speaker never went quiet"
    assert not any("ending anyway" in x for x in lines)
    assert _log_time(lines[ended]) - _log_time(lines[asked]) < 8.0


def test_the_conformance_log_is_empty(demo_run: dict[str, object]) -> None:
    """The strict emulator found no protocol violation by the agent (issue 11)."""
    log = Path(str(demo_run["out"])) / "conformance.jsonl"
    entries = log.read_text().splitlines() if log.exists() else []
    assert entries == [], "\n".join(entries[:5])


def test_no_license_anywhere(demo_run: dict[str, object]) -> None:
    out = Path(str(demo_run["out"]))
    assert (out / "bus.jsonl").stat().st_size > 0, "the bus recording is empty"
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".json", ".txt"):
            assert LICENSE not in path.read_text(errors="replace"), path
    db = out / "history.sqlite3"
    if db.exists():
        assert LICENSE.encode() not in db.read_bytes()
