"""Issue 11, "Done when": the whole agent against the STRICT emulator, signaling and greeting.

The agent runs as a new user runs it (``python -m agent run`` under the real supervisor:
tools, speaker, display, mic, session, the bus proxy), pointed at an emulator that runs in
this test process on 127.0.0.1 (``[emulator] embedded = false`` and the emulator's URL), so
that the test reads the emulator's own records: when its WebRTC offer went out
(``SessionRecord.offers_sent_mono``), every client frame with its arrival time (the
emulator's observer hook), its conformance log (``Emulator.violations`` and the JSON lines
of ``conformance_log_path``). The display renders to the "null" screen, the speaker writes
what it plays to a WAV in real time, the mic is silence.

Two runs:

* **together**: every service started at once by ``run``. The server's offer is answered
  within 1 s of the moment both it was sent and the display was in service; no client
  offer; the conformance log is empty (strict: a violation would close the socket); the
  tools are declared exactly once; the speaker's WAV holds the greeting from its first
  word (cross-correlated with the emulator's own TTS of the greeting), all of it, once.
* **late display**: ``run --only tools speaker session``; only once the session has passed
  the server's offer onto the bus is ``navtalk-agent service display`` started, as its own
  process. It answers the (latched) offer within 1 s of coming into service, sends no offer
  of its own, and the greeting, which began before any display existed, is still heard.

The display's "in service" moment is its first heartbeat's send time minus its uptime
(``agent.runtime`` sends the first beat once the service's bus subscriptions work).

To check this file against another version of the agent (e.g. the code before issue 11),
set ``ISSUE11_AGENT_ROOT`` to that checkout: the agent's processes then run from it while
the emulator and the checks stay these.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from agent import topics
from agent.bus import Bus, Delivery
from agent.config import load
from agent.emulator.script import Script
from agent.emulator.server import Emulator
from agent.messages import Heartbeat, SdpMessage, SpeakerState
from agent.navtalk.settings import EmulatorSettings
from tests.conftest import ipc_bus_settings
from tests.supervisor_helpers import Tap, bus_toml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
AGENT_ROOT = Path(os.environ.get("ISSUE11_AGENT_ROOT") or ROOT)
LICENSE = "ISSUE11-E2E-LICENSE-3b7d"
STEP_S = 20.0  # timeout of each wait
START_S = 45.0  # timeout of the agent's start (new interpreters on a loaded 2-core machine)
ANSWER_WITHIN_S = 1.0  # issue 11: the offer is answered within 1 s
GREETING = "Hello! I am Leo, the front desk assistant. How can I help you today?"
RATE = 24_000  # the speaker's WAV and the emulator's TTS: 24 kHz mono PCM16
BLOCK = RATE // 50  # 20 ms
LOUD = 300.0  # s16 RMS of a 20 ms block of speech (espeak-ng speaks at ~3000-8000)


@dataclass
class Run:
    out: Path
    late_display: bool
    frames: list[tuple[str, int]] = field(default_factory=list)  # client frames (type, ns)
    offers_sent: list[float] = field(default_factory=list)  # the emulator's offers (mono s)
    declarations: int = 0  # tool declarations the emulator counted on the connection
    client_offers: int = 0  # WebRTC offers from the client, as the emulator's peer saw
    sessions: int = 0  # WebSocket sessions the emulator saw
    violations: list[str] = field(default_factory=list)
    display_in_service: float = 0.0  # mono s
    display_started: float = 0.0  # mono s, the late display's Popen
    offer_on_bus: float = 0.0  # mono s, the session's webrtc.remote.offer (late run)
    greeting_pcm: bytes = b""
    notes: list[str] = field(default_factory=list)  # steps that timed out
    emulator_stall_s: float = 0.0  # the emulator's event loop's worst lateness
    display_proc: subprocess.Popen[bytes] | None = None
    grew: asyncio.Event = field(default_factory=asyncio.Event)  # a client frame arrived
    code: int | None = None
    seconds: float = 0.0

    def answers(self) -> list[float]:
        return [ns / 1e9 for kind, ns in self.frames if kind == "webrtc.signaling.answer"]

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.frames if k == kind)


def _beat_of(service: str) -> Callable[[Delivery], bool]:
    return lambda d: isinstance(d.msg, Heartbeat) and d.msg.service == service


def _config(out: Path, bus_dir: str, port: int) -> Path:
    config = out / "agent.toml"
    config.write_text(
        bus_toml(ipc_bus_settings(bus_dir))
        + "\n[supervisor]\nheartbeat_interval_s = 0.5\nstop_timeout_s = 5.0\n"
        + f'\n[log]\ndir = "{out}/logs"\n'
        + f'\n[navtalk]\nurl = "ws://127.0.0.1:{port}/wss/v2/realtime-chat"\n'
        + 'name = "navtalk.Leo"\n'
        + "\n[emulator]\nembedded = false\n"
        + "\n[session]\nhistory_enabled = false\nstate_interval_s = 1.0\n"
        + '\n[display]\nbackend = "null"\n'
        + f'\n[speaker]\nbackend = "file"\nwav_path = "{out}/speaker.wav"\n'
        + '\n[mic]\nbackend = "null"\n'
        + '\n[tools]\nentry_points = false\ndisabled_builtins = ["take_photo"]\n'
    )
    return config


def _agent(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(NAVTALK_LICENSE=LICENSE, PYTHONUNBUFFERED="1", PYTHONPATH=str(AGENT_ROOT))
    with log.open("ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", *args],
            cwd=AGENT_ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


async def _scenario(run: Run, emu: Emulator, config: Path) -> None:
    settings = load(config)
    only = ["--only", "tools", "speaker", "session"] if run.late_display else []
    sup = _agent("run", "--config", str(config), *only, log=run.out / "supervisor.log")
    bus = Bus(settings.bus, "external")
    bus.subscribe("health.", "webrtc.", topics.NAVTALK_AUDIO_DONE, topics.SPEAKER_STATE)
    t0 = time.monotonic()
    try:
        async with bus:
            tap = Tap(bus)
            pump = asyncio.create_task(tap.pump())
            try:
                await _drive(run, emu, tap, config)
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
    finally:
        for proc in (run.display_proc, sup):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(asyncio.to_thread(proc.wait), 20)
                except TimeoutError:
                    proc.kill()
                    await asyncio.to_thread(proc.wait)
    run.code = sup.returncode
    run.seconds = time.monotonic() - t0


async def _drive(run: Run, emu: Emulator, tap: Tap, config: Path) -> None:
    await tap.wait("the session's heartbeat", _beat_of("session"), timeout=START_S)
    record = await emu.wait_sessions(1, STEP_S)
    if run.late_display:
        try:  # on the bus before this tap? latched, it is re-sent to it
            at = await tap.wait(
                "the server's offer on webrtc.remote.offer",
                lambda d: d.topic == topics.WEBRTC_REMOTE_OFFER and isinstance(d.msg, SdpMessage),
            )
            run.offer_on_bus = tap.seen[at].mono_ns / 1e9
        except AssertionError as exc:
            run.notes.append(str(exc))
        run.display_started = time.monotonic()
        run.display_proc = _agent(
            "service", "display", "--config", str(config), log=run.out / "display.log"
        )
    beat = tap.seen[await tap.wait("the display's heartbeat", _beat_of("display"), timeout=START_S)]
    assert isinstance(beat.msg, Heartbeat)
    run.display_in_service = beat.mono_ns / 1e9 - beat.msg.uptime_s
    await _wait_frame(run, "webrtc.signaling.answer")
    try:  # the greeting: the emulator sent all of it, then the speaker played it out
        done = tap.seen[
            await tap.wait(
                "navtalk.audio.done (the greeting)",
                lambda d: d.topic == topics.NAVTALK_AUDIO_DONE,
            )
        ]
        await tap.wait(
            "the speaker idle after the greeting",
            lambda d: (
                isinstance(d.msg, SpeakerState)
                and not d.msg.playing
                and d.mono_ns > done.mono_ns + 500_000_000
            ),
        )
    except AssertionError as exc:  # the tests say what is missing; the checks go on
        run.notes.append(str(exc))
    run.offers_sent = list(record.offers_sent_mono)
    run.declarations = record.stats.declarations
    run.client_offers = record.client_offers
    run.sessions = len(emu.sessions)
    run.greeting_pcm = await emu.tts.synthesize(GREETING)


async def _wait_frame(run: Run, kind: str) -> None:
    """Until the emulator received a ``kind`` frame; a timeout is noted for the tests."""
    try:
        async with asyncio.timeout(STEP_S):
            while run.count(kind) == 0:
                run.grew.clear()
                await run.grew.wait()
    except TimeoutError:
        seen = sorted({k for k, _ in run.frames})
        run.notes.append(f"no {kind} from the agent in {STEP_S:g} s (it sent {seen})")


async def _main(run: Run, config: Path, port: int) -> None:
    def observe(_record: object, kind: str, ns: int, _text: str) -> None:
        run.frames.append((kind, ns))
        run.grew.set()

    settings = EmulatorSettings(
        port=port,
        strict_fail=True,
        conformance_log_path=str(run.out / "conformance.jsonl"),
        # the late display's new process takes seconds to import aiortc: the server's offer
        # waits for it (its 3 s deadline is for a display that is already up)
        offer_deadline_s=30.0 if run.late_display else 3.0,
    )
    script = Script.from_dict({"greeting": GREETING, "hears": ["Hello, who are you?"]})
    emu = Emulator(settings, script=script, observer=observe)
    async with emu:
        lag = asyncio.create_task(_loop_lag(run))
        try:
            await _scenario(run, emu, config)
        finally:
            lag.cancel()
        run.violations = [f"{v.kind.value}: {v.detail}" for v in emu.violations]


async def _loop_lag(run: Run) -> None:
    """The worst stall of this process's event loop, where the emulator runs (a stall there
    delays its audio deltas: the speaker then underruns, through no fault of the agent)."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(0.005)  # measuring the loop's lateness, not waiting for anything
        run.emulator_stall_s = max(run.emulator_stall_s, time.monotonic() - before - 0.005)


def _do_run(tmp_path_factory: pytest.TempPathFactory, late_display: bool) -> Run:
    from tests.conftest import free_port

    out = tmp_path_factory.mktemp("late" if late_display else "together")
    bus_dir = tempfile.mkdtemp(prefix="nt-i11-")  # short: ipc:// paths are limited
    port = free_port()
    run = Run(out=out, late_display=late_display)
    try:
        asyncio.run(_main(run, _config(out, bus_dir, port), port))
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)
    return run


@pytest.fixture(scope="module")
def together(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _do_run(tmp_path_factory, late_display=False)


@pytest.fixture(scope="module")
def late(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _do_run(tmp_path_factory, late_display=True)


# --- the speaker's WAV against the greeting's TTS --------------------------------------------


def _pcm(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw[: len(raw) - len(raw) % 2], dtype="<i2").astype(np.float64)


def _wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels()) == (RATE, 1)
        return _pcm(w.readframes(w.getnframes()))


def _rms_blocks(x: np.ndarray) -> np.ndarray:
    n = len(x) // BLOCK
    return np.sqrt((x[: n * BLOCK].reshape(n, BLOCK) ** 2).mean(axis=1))


def _best_match(x: np.ndarray, t: np.ndarray) -> tuple[float, int]:
    """(normalized cross-correlation, offset in x) of the best match of template t in x."""
    if len(x) < len(t):
        return 0.0, 0
    n = 1 << int(np.ceil(np.log2(len(x) + len(t))))
    corr = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(t, n)), n)[: len(x) - len(t) + 1]
    energy = np.concatenate(([0.0], np.cumsum(x * x)))
    window = energy[len(t) :] - energy[: len(x) - len(t) + 1]
    ncc = corr / (np.linalg.norm(t) * np.sqrt(np.maximum(window, 1e-9)))
    ncc[window < len(t) * LOUD**2 / 100] = 0.0  # silence matches nothing
    at = int(np.argmax(ncc))
    return float(ncc[at]), at


PIECE_S = 0.25  # the greeting is looked for in the WAV piece by piece
MIN_GAP = 48  # 2 ms: a run of exact zeros this long is an underrun (TTS speech has none)


@dataclass
class Heard:
    first_word_ncc: float  # the greeting's first 0.25 s found in the WAV (1.0 = identical)
    at_s: float  # where, in the WAV
    first_loud_s: float  # the WAV's first speech
    pieces: list[tuple[float, float, float]]  # (TTS s, WAV s, correlation) of each piece
    gaps_s: float  # silence inserted into the greeting (underruns)
    played_s: float  # loud speech in the whole WAV
    tts_s: float  # loud speech in the greeting's TTS

    def worst(self) -> tuple[float, float, float]:
        return min(self.pieces, key=lambda p: p[2])


def _squeeze(x: np.ndarray) -> np.ndarray:
    """Where the samples of ``x`` that are not in a run of MIN_GAP exact zeros are. The speaker
    plays digital silence when its buffer runs dry (a late delta); the TTS never has such runs,
    so taking them out lines the played speech up with the TTS again."""
    zero = np.concatenate(([False], x == 0, [False]))
    edges = np.diff(zero.astype(np.int8))
    keep = np.ones(len(x), dtype=bool)
    for start, end in zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0], strict=True):
        if end - start >= MIN_GAP:
            keep[start:end] = False
    return np.nonzero(keep)[0]


def _heard(run: Run) -> Heard:
    wav = _wav(run.out / "speaker.wav")
    where = _squeeze(wav)  # index in the WAV of each sample of the squeezed WAV
    played = wav[where]
    tts = _pcm(run.greeting_pcm)
    tts_loud = _rms_blocks(tts) > LOUD
    played_loud = _rms_blocks(played) > LOUD / 3  # the WebRTC path and the volume scale it
    first = int(np.argmax(tts_loud)) * BLOCK  # the first word's first voiced block
    size = int(PIECE_S * RATE)
    pieces, ats = [], []
    for start in range(first, len(tts) - size, size):
        piece = tts[start : start + size]
        if _rms_blocks(piece).max() < LOUD:
            continue  # a pause: nothing to find
        ncc, at = _best_match(played, piece)
        if ncc < 0.9:  # cut by an underrun? then each half is there, one after the other
            (r1, at1), (r2, at2) = (_best_match(played, half) for half in np.split(piece, 2))
            if at1 < at2 and min(r1, r2) > ncc:
                ncc, at = min(r1, r2), at1
        pieces.append((start / RATE, where[at] / RATE if ncc > 0 else -1.0, ncc))
        ats.append(at)
    inserted = int(where[ats[-1]] - where[ats[0]]) - (ats[-1] - ats[0]) if len(where) else 0
    return Heard(
        first_word_ncc=pieces[0][2],
        at_s=pieces[0][1],
        first_loud_s=(
            float(where[int(np.argmax(played_loud)) * BLOCK]) / RATE if played_loud.any() else -1
        ),
        pieces=pieces,
        gaps_s=inserted / RATE,
        played_s=float(played_loud.sum()) * BLOCK / RATE,
        tts_s=float(tts_loud.sum()) * BLOCK / RATE,
    )


def _check_greeting(run: Run) -> Heard:
    assert (run.out / "speaker.wav").exists(), f"no speaker WAV: {run.notes}"
    heard = _heard(run)
    print(
        f"greeting: first word r={heard.first_word_ncc:.2f} at {heard.at_s:.2f} s of the WAV "
        f"(its first speech at {heard.first_loud_s:.2f} s); {len(heard.pieces)} pieces of "
        f"{PIECE_S} s, worst r={heard.worst()[2]:.2f}; underruns {heard.gaps_s * 1000:.0f} ms; "
        f"{heard.played_s:.2f} s of speech played for {heard.tts_s:.2f} s of greeting; "
        f"the emulator's loop stalled up to {run.emulator_stall_s * 1000:.0f} ms"
    )
    assert heard.first_word_ncc > 0.6, f"the greeting's first word is not in the WAV: {heard}"
    # nothing was played before it: the WAV's first speech is the greeting's first word
    assert abs(heard.first_loud_s - heard.at_s) < 0.06, heard
    # the greeting was played, in order, once: its pieces are in the WAV (but for one or two
    # cut by an underrun where a few samples of silence in the TTS went with the gap) ...
    found = [p for p in heard.pieces if p[2] > 0.6]
    assert len(found) >= 0.9 * len(heard.pieces), f"parts of the greeting are missing: {heard}"
    wav_at = [w for _, w, _ in found]
    assert wav_at == sorted(wav_at), f"the greeting was played out of order: {heard.pieces}"
    # ... and as much speech was played as the greeting holds, not less, not twice
    assert heard.played_s > heard.tts_s * 0.9, f"less speech than the greeting: {heard}"
    assert heard.played_s < heard.tts_s * 1.25 + 0.2, f"more speech than the greeting: {heard}"
    assert run.notes == []
    return heard


def _conformance_lines(run: Run) -> list[str]:
    path = run.out / "conformance.jsonl"
    return path.read_text().splitlines() if path.exists() else []


# --- the tests -------------------------------------------------------------------------------


def test_the_server_offer_is_answered_within_1s(together: Run) -> None:
    assert together.offers_sent, "the emulator sent no offer"
    answers = together.answers()
    assert answers, f"the server's offer was never answered: {together.notes}"
    due_from = max(together.offers_sent[0], together.display_in_service)
    took = answers[0] - due_from
    print(
        f"offer -> answer {answers[0] - together.offers_sent[0]:.3f} s; display in service "
        f"{together.display_in_service - together.offers_sent[0]:+.3f} s from the offer; "
        f"answered {took:.3f} s after both"
    )
    assert answers[0] > together.offers_sent[0]
    assert took <= ANSWER_WITHIN_S, f"answered {took:.2f} s after offer and display were up"
    assert together.sessions == 1, f"{together.sessions} WebSocket sessions (reconnected?)"


def test_no_client_offer_and_the_conformance_log_is_empty(together: Run) -> None:
    assert together.count("webrtc.signaling.offer") == 0
    assert together.client_offers == 0
    assert together.violations == []
    assert _conformance_lines(together) == []


def test_the_agent_stopped_cleanly(together: Run, late: Run) -> None:
    for run in (together, late):
        assert run.code == 0, (run.out / "supervisor.log").read_text()[-2000:]
    assert late.display_proc is not None and late.display_proc.returncode == 0
    assert together.seconds + late.seconds < 60, (together.seconds, late.seconds)


def test_tools_are_declared_exactly_once(together: Run) -> None:
    assert together.declarations == 1, f"{together.declarations} tool declarations"
    sent = together.count("realtime.input_function_call") + together.count("session.update")
    assert sent == 1, together.frames


def test_the_greeting_reaches_the_speaker_from_its_first_word(together: Run) -> None:
    _check_greeting(together)


def test_a_late_display_answers_the_latched_offer_within_1s(late: Run) -> None:
    assert late.offers_sent, "the emulator sent no offer"
    # the display really came late: started after the session had passed the offer on
    # (offers_sent is stamped once the emulator's send returned: the session may be quicker)
    assert late.offers_sent and 0 < late.offer_on_bus <= late.display_started, late.notes
    assert late.display_started <= late.display_in_service
    answers = late.answers()
    assert answers, f"the latched offer was never answered: {late.notes}"
    took = answers[0] - late.display_in_service
    print(
        f"late display: in service {late.display_in_service - late.offers_sent[0]:.2f} s "
        f"after the offer ({late.display_in_service - late.display_started:.2f} s from its "
        "process start); "
        f"answered {took:.3f} s after it was in service"
    )
    assert 0 < took <= ANSWER_WITHIN_S, f"answered {took:.2f} s after the display came up"
    assert late.sessions == 1


def test_a_late_display_sends_no_offer_and_breaks_no_rule(late: Run) -> None:
    assert late.count("webrtc.signaling.offer") == 0
    assert late.client_offers == 0
    assert late.violations == []
    assert _conformance_lines(late) == []
    assert late.declarations == 1


def test_the_greeting_is_heard_before_the_late_display_exists(late: Run) -> None:
    _check_greeting(late)
