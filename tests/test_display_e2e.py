"""Emulator ↔ session ↔ display over real WebRTC on loopback, under the real supervisor.

One run of ``python -m agent run --only session display speaker`` with the embedded
emulator, the display's MP4 sink and the speaker's WAV sink, watched from the bus by
an "external" tap::

    supervisor ─┬─ emulator (ws + aiortc, 127.0.0.1)
                ├─ session ── webrtc.remote.* / webrtc.local.* ── display ── audio.out ── speaker
                └─ bus proxy ◀── tap: webrtc.*, session.state, navtalk.connection,
                                      audio.out, video.stats, health.display

The scenario: the avatar answers a typed turn (voice on ``audio.out``), the display is
SIGKILLed, the supervisor restarts it, it renegotiates through the session, and the
avatar answers again over the new connection, all on the first WebSocket session.
The tests then look at what the tap saw, the logs, the MP4 and the WAV.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from agent import topics
from agent.bus import Bus, Delivery
from agent.config import Settings, load
from agent.messages import (
    AudioFrame,
    ConnectionEvent,
    ConnectionStatus,
    Heartbeat,
    IceCandidate,
    SdpMessage,
    SessionPhase,
    SessionState,
    SpeakerState,
    TextInput,
    VideoStats,
)
from agent.video.peer import sdp_candidate_addresses
from tests.conftest import free_port, ipc_bus_settings
from tests.supervisor_helpers import Tap, alive, bus_toml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
STEP_S = 20.0  # timeout of each step of the scenario
LOUD_RMS = 300.0  # s16 RMS above which a block of PCM is voice, not silence

SCRIPT = """\
greeting = ""
fallback = "Sorry, say that again?"
[[rules]]
match = "hello"
reply = "Hello there! I am Leo, and I can see you very well today."
[[rules]]
match = "again"
reply = "Here I am again, back on a fresh connection, and still talking."
"""


def _rms(pcm: bytes) -> float:
    x = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


def _loud_voice(d: Delivery, topic: str = topics.AUDIO_OUT, sender: str = "display") -> bool:
    return (
        d.topic == topic
        and d.sender == sender
        and isinstance(d.msg, AudioFrame)
        and bool(d.payload)
        and _rms(d.payload[0]) > LOUD_RMS
    )


@dataclass
class Run:
    out: Path
    seen: list[Delivery] = field(default_factory=list)
    code: int | None = None
    first_pid: int = 0
    second_pid: int = 0
    kill_index: int = 0  # first delivery after the SIGKILL
    renegotiated_index: int = 0  # the new display's first offer/answer
    voice_before: int = 0  # loud audio.out frames before the kill
    voice_after: int = 0  # loud audio.out frames over the new connection
    video_after: VideoStats | None = None  # the new display's stats once it renders video
    video_back_s: float = 0.0  # SIGKILL -> the restarted display's first video frame
    seconds: float = 0.0

    def exit_codes(self) -> dict[str, str]:
        """Each child's last exit code, from the supervisor's ``all stopped:`` line."""
        text = (self.out / "supervisor.log").read_text(errors="replace")
        last = [line for line in text.splitlines() if "all stopped: " in line][-1]
        return dict(part.split("=") for part in last.split("all stopped: ")[1].split(", "))


async def _watch(run: Run, settings: Settings) -> None:
    bus = Bus(settings.bus, "external")
    bus.subscribe(
        "webrtc.",
        topics.SESSION_STATE,
        topics.NAVTALK_CONNECTION,
        topics.AUDIO_OUT,
        topics.SPEAKER_STATE,  # playing / idle (audio.played goes only to a canceller)
        topics.VIDEO_STATS,
        "health.display",
    )
    async with bus:
        tap = Tap(bus)
        pump = asyncio.create_task(tap.pump())
        try:
            await _drive(run, tap, bus)
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            run.seen = tap.seen


async def _drive(run: Run, tap: Tap, bus: Bus) -> None:
    def beat(d: Delivery, not_pid: int = 0) -> bool:
        return isinstance(d.msg, Heartbeat) and d.msg.service == "display" and d.msg.pid != not_pid

    def ready(d: Delivery) -> bool:
        return isinstance(d.msg, SessionState) and d.msg.phase is SessionPhase.READY

    def signaling(d: Delivery) -> bool:
        return d.topic in (topics.WEBRTC_LOCAL_OFFER, topics.WEBRTC_LOCAL_ANSWER)

    def voice_flows(d: Delivery) -> bool:
        return d.topic == topics.AUDIO_OUT and d.sender == "display"

    first = tap.seen[await tap.wait("the display's heartbeat", beat)].msg
    assert isinstance(first, Heartbeat)
    run.first_pid = first.pid
    await tap.wait("session.state ready", ready)
    at = await tap.wait("the display's answer to the server's offer", signaling)
    at = await tap.wait("audio.out from the display", voice_flows, at)
    bus.publish(topics.INPUT_TEXT, TextInput(text="Hello, who is there?"))
    await voice(tap, "the avatar's voice on audio.out", at, 50)  # 1 s of it
    run.voice_before = sum(_loud_voice(d) for d in tap.seen)

    run.kill_index = len(tap.seen)
    kill_ns = time.monotonic_ns()
    os.kill(run.first_pid, signal.SIGKILL)
    second = tap.seen[
        await tap.wait(
            "a restarted display", lambda d: beat(d, not_pid=run.first_pid), run.kill_index
        )
    ].msg
    assert isinstance(second, Heartbeat)
    run.second_pid = second.pid
    at = run.renegotiated_index = await tap.wait(
        "the restarted display's offer or answer", signaling, run.kill_index
    )
    back = tap.seen[
        await tap.wait(
            "the restarted display's first video frame",
            lambda d: isinstance(d.msg, VideoStats) and d.msg.frames_received > 0,
            run.kill_index,
        )
    ]
    run.video_back_s = (back.mono_ns - kill_ns) / 1e9  # CLOCK_MONOTONIC: one clock per host
    at = await tap.wait("audio.out from the restarted display", voice_flows, at)
    bus.publish(topics.INPUT_TEXT, TextInput(text="Are you there again?"))
    await voice(tap, "the avatar's voice over the new connection", at, 1)
    stats = tap.seen[
        await tap.wait(
            "video.stats of the restarted display with video",
            lambda d: (
                isinstance(d.msg, VideoStats)
                and d.msg.connection_state == "connected"
                and d.msg.frames_rendered >= 25
            ),
            run.renegotiated_index,
        )
    ].msg
    assert isinstance(stats, VideoStats)
    run.video_after = stats
    # let the answer play on (so the MP4 holds a speaking mouth), then stop
    await voice(tap, "2 s of the avatar's voice over the new connection", at, 100)
    run.voice_after = sum(_loud_voice(d) for d in tap.seen[at:])


async def voice(tap: Tap, what: str, start: int, frames: int) -> int:
    """Wait until ``frames`` loud audio.out frames from the display arrived since ``start``."""
    count = 0

    def enough(d: Delivery) -> bool:
        nonlocal count
        count += _loud_voice(d)
        return count >= frames

    return await tap.wait(what, enough, start)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    out = tmp_path_factory.mktemp("display-e2e")  # logs, MP4, WAV: kept by pytest
    bus_dir = tempfile.mkdtemp(prefix="nt-disp-")  # short: ipc:// paths are limited
    (out / "script.toml").write_text(SCRIPT)
    config = out / "agent.toml"
    config.write_text(
        bus_toml(ipc_bus_settings(bus_dir)) + "\n[supervisor]\nheartbeat_interval_s = 0.5\n"
        "restart_initial_s = 0.2\nstop_timeout_s = 5.0\n"
        f'\n[emulator]\nscript_path = "{out}/script.toml"\n'
        '\n[navtalk]\nname = "navtalk.Leo"\n'
        f'\n[display]\nbackend = "file"\nfile_path = "{out}/avatar.mp4"\n'
        "width = 512\nheight = 512\nfps = 25\n"
        f'\n[speaker]\nbackend = "file"\nwav_path = "{out}/speaker.wav"\n'
        "\n[session]\nhistory_enabled = false\nstate_interval_s = 1.0\n"
        f'\n[log]\ndir = "{out}/logs"\n'
    )
    result = Run(out=out)
    env = {k: v for k, v in os.environ.items() if k != "NAVTALK_LICENSE"}  # the emulator's own
    port = free_port()
    argv = [sys.executable, "-m", "agent", "run", "--config", str(config),
            "--only", "session", "display", "speaker",
            "--set", f"emulator.port={port}", "--set", "emulator.embedded=true"]  # fmt: skip
    t0 = time.monotonic()
    with (out / "supervisor.log").open("wb") as sup_log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sup_log, stderr=subprocess.STDOUT)
    try:
        asyncio.run(_watch(result, load(config)))
        proc.send_signal(signal.SIGTERM)
        result.code = proc.wait(timeout=20)
        result.seconds = time.monotonic() - t0
        yield result
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(bus_dir, ignore_errors=True)


def _log(run: Run, name: str) -> str:
    path = run.out / "logs" / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


# --- the tests ---------------------------------------------------------------------------


def test_the_run_stops_cleanly_and_quickly(run: Run) -> None:
    sup = (run.out / "supervisor.log").read_text(errors="replace")
    codes = run.exit_codes()
    assert set(codes) == {"emulator", "session", "display", "speaker"}, codes
    assert set(codes.values()) == {"0"}, sup[-3000:]
    assert run.seconds < 60, f"the scenario took {run.seconds:.1f} s"
    assert not alive(run.first_pid) and not alive(run.second_pid)
    assert run.code == 0, sup[-3000:]


def test_every_sdp_and_candidate_is_on_loopback(run: Run) -> None:
    sdps = [d for d in run.seen if isinstance(d.msg, SdpMessage)]
    by_topic = {d.topic for d in sdps}
    assert topics.WEBRTC_REMOTE_OFFER in by_topic  # the emulator's offer, through the session
    assert topics.WEBRTC_LOCAL_ANSWER in by_topic  # the display's answer
    for d in sdps:
        assert isinstance(d.msg, SdpMessage)
        addresses = sdp_candidate_addresses(d.msg.sdp)
        assert addresses, f"{d.topic} without candidates"
        assert set(addresses) == {"127.0.0.1"}, (d.topic, addresses)
    trickled = [d.msg for d in run.seen if isinstance(d.msg, IceCandidate)]
    assert trickled, "no trickled candidate"
    for c in trickled:
        if c.candidate.strip():
            assert c.candidate.split()[4] == "127.0.0.1", c.candidate


def test_the_speaker_gets_the_voice_through_audio_out(run: Run) -> None:
    assert run.voice_before > 20  # ≥ 0.4 s of voice before the kill
    assert run.voice_after >= 100  # ≥ 2 s over the renegotiated connection
    rates = {
        d.msg.sample_rate_hz
        for d in run.seen
        if isinstance(d.msg, AudioFrame) and d.topic == topics.AUDIO_OUT
    }
    assert rates == {48_000}, rates
    # speaker.state comes on every change and every second: sum the playing stretches
    states = [d for d in run.seen[run.renegotiated_index :] if isinstance(d.msg, SpeakerState)]
    playing_ms = sum(
        (b.mono_ns - a.mono_ns) / 1e6
        for a, b in itertools.pairwise(states)
        if isinstance(a.msg, SpeakerState) and a.msg.playing
    )
    assert playing_ms > 1000, f"the speaker played {playing_ms:.0f} ms (< 1 s)"
    if run.exit_codes()["speaker"] != "0":
        return  # killed while stopping: its WAV is not finalised (see the test above)
    with wave.open(str(run.out / "speaker.wav")) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    hop = rate // 50
    blocks = pcm[: len(pcm) // hop * hop].reshape(-1, hop)
    loud = np.sqrt((blocks**2).mean(axis=1)) > LOUD_RMS
    assert loud.sum() > 100, f"the speaker played only {loud.sum() * 20} ms of voice"


def test_the_mp4_holds_the_speaking_avatar(run: Run) -> None:
    import av

    from agent.emulator.avatar import measure_mouth_open

    skin = np.array([150, 185, 230], np.int16)  # the avatar's face (BGR)
    faces, mouths = [], []
    with av.open(str(run.out / "avatar.mp4")) as container:
        for frame in container.decode(container.streams.video[0]):
            img = np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
            h, w = img.shape[:2]
            centre = img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].astype(np.int16)
            faces.append(float((np.abs(centre - skin).max(axis=2) < 30).mean()))
            mouths.append(measure_mouth_open(img))
    face, mouth = np.array(faces), np.array(mouths)
    avatar = face > 0.3  # the idle screen and the placeholder have no skin-coloured face
    assert avatar.sum() >= 25, f"{avatar.sum()} avatar frames of {len(face)}"
    assert (mouth[avatar] > 0.3).sum() >= 5, "the mouth never opened"
    assert (mouth[avatar] < 0.05).sum() >= 5, "the mouth never closed"


def test_display_sigkill_renegotiates_on_the_same_websocket_session(run: Run) -> None:
    # Goal 3 s (issue 15). Measured on this 2-core machine: 2.4-3.0 s at a load average of
    # 5-7 (with the session's latched signaling too: 2.5-2.9 s), 4.3-5.0 s at 12-15. The new
    # process's start (interpreter + aiortc/av/cv2 imports: 1.5 s idle, 3 s loaded) and the
    # wait for the session's next session.state dominate; the negotiation itself is ~0.1 s.
    # The bound leaves room for a loaded machine; the figure is printed.
    print(f"display SIGKILL -> video back in {run.video_back_s:.2f} s")
    assert 0 < run.video_back_s <= 8.0, f"video back {run.video_back_s:.2f} s after SIGKILL"
    assert run.second_pid and run.second_pid != run.first_pid
    assert "display died (signal 9)" in (run.out / "supervisor.log").read_text(errors="replace")
    assert run.video_after is not None and run.video_after.frames_received > 0
    after = run.seen[run.kill_index :]
    phases = [d.msg.phase for d in after if isinstance(d.msg, SessionState)]
    assert phases, "no session.state after the kill"
    assert set(phases) == {SessionPhase.READY}, phases
    assert not [d for d in after if isinstance(d.msg, ConnectionEvent)], "the session reconnected"
    successes = [
        d
        for d in run.seen
        if isinstance(d.msg, ConnectionEvent) and d.msg.status is ConnectionStatus.SUCCESS
    ]
    assert len(successes) <= 1
    emulator = _log(run, "emulator")
    assert "< emulator: session 1 " in emulator
    assert "session 2" not in emulator
