"""Video benchmark: the display service in its own process, fed by the emulator's avatar.

For 512x512 @ 25 fps and 1280x720 @ 30 fps it measures, over real aiortc on loopback:

- frames the server sent, the display received and rendered, and dropped;
- render lag (frame received -> shown), p50 / p99, from the display's video.stats;
- CPU % of the display process (one core = 100 %);
- A/V sync at the display's outputs: the avatar emits a white flash and a click at the
  same media time (AvatarMedia.marker); the flash is timed when the screen shows it,
  the click when its samples leave on audio.out. Positive = video later than audio.

::

    .venv/bin/python -m bench.bench_video [--seconds 10] [--backend null|window|file]
        [--baseline DIR [--rounds 2]]

With ``--baseline DIR`` (a checkout of the code to compare with, e.g.
``git worktree add /tmp/base main``), the display runs alternately from DIR and from
this tree, ABBA-interleaved in one run, so that both see the same machine load; the
table then carries one row per run and a ratio per config (median CPU this tree /
baseline). The CPU figure starts when the avatar starts speaking (after 2 s of warm-up)
and stops ``--seconds`` later; it is the display process's user + system time
(/proc/PID/stat) over that wall time, and ``load`` is the 1-minute load average
at the end of the window.

This process plays the session and the cloud (bus proxy + aiortc sender); the
display runs as ``python -m bench.bench_video --child ...``. Results go to
bench/results/video.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from agent import topics
from agent.bus import Bus, Delivery, Proxy
from agent.config import BusSettings, ControlPlane, MediaPlane, Settings, default_settings
from agent.messages import AudioFrame, SdpMessage, SessionPhase, SessionState, VideoStats
from agent.video.settings import DisplaySettings
from bench.common import save, table
from hardware.screen import Screen, open_screen

CONFIGS = [("512x512@25", 512, 512, 25), ("1280x720@30", 1280, 720, 30)]
CLICK_LEVEL = 12_000  # |sample| above this in audio.out is the marker's click


def bus_settings(directory: str) -> BusSettings:
    return BusSettings(
        control=ControlPlane(
            publish=f"ipc://{directory}/c-in", subscribe=f"ipc://{directory}/c-out", hwm=100_000
        ),
        media=MediaPlane(
            publish=f"ipc://{directory}/m-in", subscribe=f"ipc://{directory}/m-out", hwm=1000
        ),
    )


# --- the display process -----------------------------------------------------------------------


class FlashTimer(Screen):
    """Wraps the real screen; notes when a (nearly) all-white frame is shown."""

    def __init__(self, inner: Screen) -> None:
        super().__init__()
        self.inner = inner
        self.main_thread_only = inner.main_thread_only  # the window must stay on the main thread
        self.takes_audio = getattr(inner, "takes_audio", True)  # (a baseline without it)
        self.flashes: list[float] = []

    def open(self) -> None:
        self.inner.open()

    def show(self, frame: npt.NDArray[np.uint8], at_s: float) -> None:
        self.inner.show(frame, at_s)
        self.frames_shown += 1
        # The centre of the canvas is the avatar's face: white only during a flash.
        h, w = frame.shape[:2]
        if frame[h // 3 : 2 * h // 3 : 4, w // 3 : 2 * w // 3 : 4].mean() > 235:
            self.flashes.append(time.monotonic())

    def write_audio(self, pcm: bytes, rate_hz: int, channels: int, at_s: float) -> None:
        self.inner.write_audio(pcm, rate_hz, channels, at_s)

    def poll(self) -> None:
        self.inner.poll()

    def close(self) -> None:
        self.inner.close()


async def child(settings_json: str, out_path: str) -> None:
    from services import display

    settings = msgspec.json.decode(settings_json, type=Settings)
    screen = FlashTimer(open_screen(settings.display))
    bus = Bus(settings.bus, "display")
    task = asyncio.create_task(display.run(settings, bus, screen=screen))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await bus.close()
    write_json(out_path, {"flashes": screen.flashes})


def write_json(path: str, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data))


def read_json(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


HERE = Path(__file__).resolve().parents[1]


def start_child(settings: Settings, out_path: str, root: Path = HERE) -> subprocess.Popen[bytes]:
    """The display process, running the code of ``root`` (this tree, or a baseline)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bench_video", "--child",
         msgspec.json.encode(settings).decode(), out_path],
        cwd=root,
        env=env,
    )  # fmt: skip


# --- the session + cloud side --------------------------------------------------------------------


def voice(seconds: float) -> bytes:
    """A voice stand-in at 24 kHz: a buzz whose loudness varies like syllables."""
    rate = 24_000
    t = np.arange(int(seconds * rate)) / rate
    buzz = sum(np.sin(2 * np.pi * 160 * k * t) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)
    return (buzz * envelope * 3000).astype("<i2").tobytes()  # peaks well below the click


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def next_on(bus: Bus, topic: str, timeout: float = 20.0) -> Delivery:
    async def find() -> Delivery:
        async for d in bus:
            if d.topic == topic:
                return d
        raise RuntimeError("bus closed")

    return await asyncio.wait_for(find(), timeout)


async def run_config(
    name: str,
    w: int,
    h: int,
    fps: int,
    seconds: float,
    backend: str,
    workdir: str,
    root: Path = HERE,
) -> dict[str, Any]:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from agent.emulator.avatar import AvatarMedia
    from agent.video.peer import restrict_ice_host

    bs = bus_settings(workdir)
    ds = DisplaySettings(
        backend=backend,  # type: ignore[arg-type]
        width=w if w >= h else h,
        height=h,
        fps=fps,
        file_path=f"{workdir}/display.mp4",
        stats_interval_s=0.5,
    )
    settings = msgspec.structs.replace(default_settings(), bus=bs, display=ds)
    out_path = f"{workdir}/child-{name}.json"
    with Proxy(bs):
        session = Bus(bs, "session")
        session.subscribe(topics.WEBRTC_LOCAL_ANSWER, topics.VIDEO_STATS, topics.AUDIO_OUT)
        await session.start()
        proc = start_child(settings, out_path, root)
        restrict_ice_host("127.0.0.1")
        media = AvatarMedia(w, h, fps)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        clicks: list[float] = []
        stats: list[VideoStats] = []
        try:
            await next_on(session, topics.VIDEO_STATS)  # the display is on the bus
            session.publish(topics.SESSION_STATE, SessionState(phase=SessionPhase.CONNECTING))
            session.publish(topics.SESSION_STATE, SessionState(phase=SessionPhase.CONNECTED))
            pc.addTrack(media.video)
            pc.addTrack(media.audio)
            await pc.setLocalDescription(await pc.createOffer())
            offer = SdpMessage(sdp_type="offer", sdp=pc.localDescription.sdp)
            session.publish(topics.WEBRTC_REMOTE_OFFER, offer)
            answer = await next_on(session, topics.WEBRTC_LOCAL_ANSWER)
            assert isinstance(answer.msg, SdpMessage)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.msg.sdp, type="answer"))

            async def consume(until: float) -> None:
                while time.monotonic() < until:
                    with contextlib.suppress(TimeoutError):
                        d = await asyncio.wait_for(session.recv(), 0.5)
                        if isinstance(d.msg, VideoStats):
                            stats.append(d.msg)
                        elif isinstance(d.msg, AudioFrame) and d.payload:
                            x = np.frombuffer(d.payload[0], "<i2").reshape(-1, d.msg.channels)
                            loud = np.nonzero(np.abs(x[:, 0]) > CLICK_LEVEL)[0]
                            if len(loud):
                                at = d.msg.capture_mono_ns / 1e9 + loud[0] / d.msg.sample_rate_hz
                                if not clicks or at - clicks[-1] > 0.3:
                                    clicks.append(at)

            await consume(time.monotonic() + 2.0)  # warm up: connect, codecs settle
            base = (
                stats[-1]
                if stats
                else VideoStats(frames_received=0, frames_rendered=0, frames_dropped=0)
            )
            sent0 = media.video.frames_sent
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            media.speak(voice(seconds))
            markers = 0
            end = t0 + seconds
            while time.monotonic() < end - 0.6:
                media.marker()
                markers += 1
                await consume(min(end, time.monotonic() + 1.0))
            await consume(end)
            cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
            load = os.getloadavg()[0]
            sent = media.video.frames_sent - sent0
            await consume(time.monotonic() + 0.6)  # the last stats after the window
            last = stats[-1]
        finally:
            await pc.close()
            proc.terminate()
            proc.wait(timeout=30)
            await session.close()
    flashes = read_json(out_path)["flashes"]
    offsets = []
    for f in flashes:
        near = [c for c in clicks if abs(f - c) < 0.5]
        if near:
            offsets.append((f - min(near, key=lambda c: abs(f - c))) * 1000)
    received = last.frames_received - base.frames_received
    rendered = last.frames_rendered - base.frames_rendered
    dropped = last.frames_dropped - base.frames_dropped
    return {
        "config": name,
        "code": "this tree" if root == HERE else "baseline",
        "backend": backend,
        "load": round(load, 2),
        "seconds": round(t1 - t0, 2),
        "frames_sent": sent,
        "frames_received": received,
        "frames_rendered": rendered,
        "frames_dropped": dropped,
        "render_lag_p50_ms": last.render_lag_ms_p50,
        "render_lag_p99_ms": last.render_lag_ms_p99,
        "frame_period_ms": round(1000 / fps, 1),
        "display_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        # per frame received: fair between runs whose sender the load slowed down
        "cpu_ms_per_frame": round(1000 * (cpu1 - cpu0) / max(1, received), 2),
        "markers": markers,
        "av_pairs": len(offsets),
        "av_offset_ms_mean": round(float(np.mean(offsets)), 1) if offsets else None,
        "av_offset_ms_min": round(float(np.min(offsets)), 1) if offsets else None,
        "av_offset_ms_max": round(float(np.max(offsets)), 1) if offsets else None,
    }


async def main(seconds: float, backend: str, baseline: Path | None, rounds: int) -> None:
    rows = []
    ratios: dict[str, Any] = {}
    for name, w, h, fps in CONFIGS:
        # ABBA: baseline, this, this, baseline, ... so that a load trend hits both alike
        abba = [baseline, HERE, HERE, baseline] * rounds
        order = [HERE] if baseline is None else abba[: 2 * rounds]
        runs: dict[Path, list[float]] = {}
        per_frame: dict[Path, list[float]] = {}
        for root in order:
            with tempfile.TemporaryDirectory(prefix="ntv-") as workdir:
                row = await run_config(name, w, h, fps, seconds, backend, workdir, root)
            rows.append(row)
            runs.setdefault(root, []).append(row["display_cpu_pct"])
            per_frame.setdefault(root, []).append(row["cpu_ms_per_frame"])
            print(
                f"{name} {row['code']}: display {row['display_cpu_pct']} % "
                f"{row['cpu_ms_per_frame']} ms/frame (load {row['load']})",
                flush=True,
            )
        if baseline is not None:
            ratios[name] = {
                what: round(float(np.median(d[HERE]) / max(1e-9, np.median(d[baseline]))), 3)
                for what, d in (("cpu_pct", runs), ("cpu_ms_per_frame", per_frame))
            }
    columns = [
        "config", "code", "backend", "load", "frames_sent", "frames_received",
        "frames_rendered", "frames_dropped", "render_lag_p50_ms", "render_lag_p99_ms",
        "display_cpu_pct", "cpu_ms_per_frame", "av_pairs", "av_offset_ms_mean",
        "av_offset_ms_min", "av_offset_ms_max",
    ]  # fmt: skip
    print(table(f"video: {seconds:.0f} s per run, display in its own process", rows, columns))
    for name, ratio in ratios.items():
        print(
            f"{name}: display CPU this tree / baseline (medians): x{ratio['cpu_pct']} of % "
            f"of a core, x{ratio['cpu_ms_per_frame']} per frame received"
        )
    path = save(
        "video",
        {
            "goals": {"drops": 0, "render_lag": "<= 1 frame", "av_sync_ms": "within +-40"},
            "cpu_count": os.cpu_count(),
            "baseline": str(baseline) if baseline else None,
            "cpu_ratio_vs_baseline": ratios,
            "results": rows,
        },
    )
    print(f"saved {path}")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":
        asyncio.run(child(sys.argv[2], sys.argv[3]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--backend",
        choices=["null", "window", "file"],
        default="window" if os.environ.get("DISPLAY") else "null",
    )
    parser.add_argument("--baseline", type=Path, help="a checkout to compare with, interleaved")
    parser.add_argument("--rounds", type=int, default=2, help="runs per code with --baseline")
    args = parser.parse_args()
    baseline = args.baseline.resolve() if args.baseline else None
    asyncio.run(main(args.seconds, args.backend, baseline, args.rounds))
