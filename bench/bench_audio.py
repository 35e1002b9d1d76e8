"""Audio benchmark on the PulseAudio null sink (real time), with the real services.

- capture -> publish: the mic service (its own process) captures the sink's monitor through
  sounddevice; for each ``audio.mic`` frame, envelope publish time minus ``capture_mono_ns``
  (the first sample's capture time, so a 20 ms frame is at least 20 ms old), and the same
  from the frame's *last* sample (what the pipeline adds).
- audio.out received -> written to the device: the speaker's own stamps (receipt of a frame
  to the device pull that took its last sample), from ``metrics.speaker``; dominated by the
  jitter target.
- barge-in -> silence: speech plays, ``control.barge_in`` mid-utterance; (a) until the first
  block written to the device that is silence (the speaker's device write log; it runs in
  this process), (b) until the last sound heard on the sink's monitor (what really left the
  "loudspeaker", so it includes PortAudio's output latency).

Goals (issue #4): capture -> publish p99 <= 25 ms; barge-in <= 30 ms.
Run: ``eval "$(scripts/virtual-audio.sh start)"; python -m bench.bench_audio`` (or ``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import soxr

from agent import topics
from agent.audio.settings import MicSettings, SpeakerSettings
from agent.bus import Bus, Proxy
from agent.config import BusSettings, ControlPlane, MediaPlane, Settings, default_settings
from agent.messages import AudioFrame, BargeIn, Metrics, SpeakerState
from bench.common import percentiles, save, table

RATE = 24_000
DEVICE = "pulse"
REPO = Path(__file__).resolve().parent.parent


def _bus(d: str) -> BusSettings:
    return BusSettings(
        control=ControlPlane(publish=f"ipc://{d}/c-in", subscribe=f"ipc://{d}/c-out", hwm=100_000),
        media=MediaPlane(publish=f"ipc://{d}/m-in", subscribe=f"ipc://{d}/m-out", hwm=1000),
    )


def _speech() -> np.ndarray:
    text = "Welcome to the Grand Hotel. Your room is on the fourth floor, next to the elevator."
    wav = Path(tempfile.mkdtemp(prefix="nt-bench-")) / "s.wav"
    raw = wav.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "24000", "-c", "1", "-b", "16", "-e",
                    "signed-integer", str(wav)], check=True)  # fmt: skip
    import wave

    with wave.open(str(wav)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16)
    shutil.rmtree(wav.parent, ignore_errors=True)
    return x


def _mic_process(settings: Settings) -> None:
    from services import mic

    async def main() -> None:
        await mic.run(settings, Bus(settings.bus, "mic"))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


async def _publish_voice(bus: Bus, voice48: np.ndarray, stop: asyncio.Event, sid: str) -> None:
    """48 kHz stereo, 20 ms frames, paced like a WebRTC track."""
    stereo = np.repeat(voice48, 2)
    per = 960 * 2
    t0 = time.monotonic()
    for k, i in enumerate(range(0, len(stereo), per)):
        if stop.is_set():
            return
        bus.publish(
            topics.AUDIO_OUT,
            AudioFrame(sample_rate_hz=48_000, channels=2, stream_id=sid),
            stereo[i : i + per].astype("<i2").tobytes(),
        )
        await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))


async def _wait(bus: Bus, pred: Any, timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            d = await bus.recv()
            if pred(d):
                return d


async def bench(
    seconds: float, trials: int, period_ms: int, latency: str | float
) -> dict[str, Any]:
    from hardware.audio import SoundDeviceInput, SoundDeviceOutput
    from services import speaker

    speech = _speech()
    voice48 = soxr.resample(speech, RATE, 48_000).astype(np.int16)
    d = tempfile.mkdtemp(prefix="nt-")
    bus_settings = _bus(d)
    settings = msgspec.structs.replace(
        default_settings(),
        bus=bus_settings,
        mic=MicSettings(device=DEVICE),
        speaker=SpeakerSettings(device=DEVICE, period_ms=period_ms, latency=latency),  # type: ignore[arg-type]
    )
    results: dict[str, Any] = {}
    with Proxy(bus_settings):
        ctx = mp.get_context("spawn")
        mic_proc = ctx.Process(target=_mic_process, args=(settings,), daemon=True)
        mic_proc.start()
        out = SoundDeviceOutput(DEVICE, period_ms=period_ms, latency=latency)  # type: ignore[arg-type]
        spk_bus = Bus(bus_settings, "speaker")
        spk = asyncio.create_task(speaker.run(settings, spk_bus, device=out))
        test = Bus(bus_settings, "session", media_queue=100_000)
        test.subscribe(topics.AUDIO_MIC, topics.SPEAKER_STATE, "metrics.speaker")
        await test.start()
        monitor = SoundDeviceInput(DEVICE, queue_ms=120_000)
        try:
            await _wait(test, lambda x: x.topic == topics.AUDIO_MIC, 20)
            await _wait(test, lambda x: isinstance(x.msg, SpeakerState), 20)

            # 1. capture -> publish, while the speaker plays (full duplex)
            stop = asyncio.Event()
            loop_voice = np.concatenate([voice48] * 20)
            player = asyncio.create_task(_publish_voice(test, loop_voice, stop, "cap"))
            ages: list[float] = []
            warmup = time.monotonic() + 3.0  # the capture clock settles in its 2 s window
            while time.monotonic() < warmup:
                await test.recv()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                x = await test.recv()
                if x.topic == topics.AUDIO_MIC and isinstance(x.msg, AudioFrame):
                    ages.append((x.mono_ns - x.msg.capture_mono_ns) / 1e6)
            stop.set()
            await player
            results["capture_to_publish_first_sample"] = percentiles(ages)
            results["capture_to_publish_last_sample"] = percentiles([a - 20.0 for a in ages])

            # 2. audio.out received -> written to the device (speaker's stamps)
            test.publish(topics.CONTROL_BARGE_IN, BargeIn(reason="bench reset"))
            await _wait(test, lambda x: isinstance(x.msg, SpeakerState) and not x.msg.playing)
            metric = await _wait(
                test,
                lambda x: isinstance(x.msg, Metrics) and "out_to_device_ms_p50" in x.msg.values,
                15,
            )
            results["audio_out_to_device"] = {
                "p50_ms": round(metric.msg.values["out_to_device_ms_p50"], 2),
                "p99_ms": round(metric.msg.values["out_to_device_ms_p99"], 2),
                "jitter_target_ms": settings.speaker.jitter_target_ms,
                "underruns": metric.msg.values.get("underruns"),
            }

            # 3. barge-in -> silence
            await monitor.start()
            heard: list[tuple[int, bytes]] = []

            async def listen() -> None:
                while True:
                    f = await monitor.read()
                    if f is None:
                        return
                    heard.append((f.capture_mono_ns, f.pcm))

            listener = asyncio.create_task(listen())
            write_delays: list[float] = []
            sound_delays: list[float] = []
            leads: list[float] = []
            rng = random.Random(4)
            for trial in range(trials):
                stop = asyncio.Event()
                feeder = asyncio.create_task(_publish_voice(test, voice48, stop, f"b{trial}"))
                await _wait(test, lambda x: isinstance(x.msg, SpeakerState) and x.msg.playing)
                await asyncio.sleep(rng.uniform(0.4, 1.2))  # mid-utterance, at a random point
                sent = time.monotonic_ns()
                test.publish(topics.CONTROL_BARGE_IN, BargeIn(reason="bench", at_mono_ns=sent))
                await _wait(test, lambda x: isinstance(x.msg, SpeakerState) and not x.msg.playing)
                stop.set()
                await feeder
                await asyncio.sleep(0.3)  # let the monitor capture past the end
                after = [w for w in out.writes if w.at_mono_ns >= sent]
                first_silent = next(w for w in after if w.peak == 0)
                write_delays.append((first_silent.at_mono_ns - sent) / 1e6)
                leads.append(
                    float(np.median([(w.play_mono_ns - w.at_mono_ns) / 1e6 for w in after]))
                )
                last = None
                for t, pcm in heard:
                    if t < sent - 200_000_000:
                        continue
                    x = np.abs(np.frombuffer(pcm, "<i2"))
                    loud = np.flatnonzero(x > 300)
                    if loud.size:
                        last = t + int(loud[-1]) * 1_000_000_000 // RATE
                if last is not None:
                    sound_delays.append((last - sent) / 1e6)
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            results["barge_in_to_silent_write"] = percentiles(write_delays)
            results["barge_in_to_silence_at_sink"] = percentiles(sound_delays)
            results["output_latency_reported_ms"] = round(float(np.median(leads)), 2)
        finally:
            await monitor.close()
            spk.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await spk
            await spk_bus.close()
            await test.close()
            mic_proc.terminate()
            mic_proc.join(5)
    shutil.rmtree(d, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="capture measurement time")
    parser.add_argument("--trials", type=int, default=15, help="barge-in trials")
    parser.add_argument("--period-ms", type=int, default=5, choices=[5, 10, 20])
    parser.add_argument("--latency", default="low", help="PortAudio output latency: low, high, s")
    args = parser.parse_args()
    latency = args.latency if args.latency in ("low", "high") else float(args.latency)
    if "PULSE_SERVER" not in os.environ:
        sock = Path(os.environ.get("NAVTALK_VAUDIO_DIR", f"/tmp/navtalk-vaudio-{os.getuid()}"))
        if (sock / "pulse" / "native").exists():
            os.environ["PULSE_SERVER"] = f"unix:{sock / 'pulse' / 'native'}"
        else:
            raise SystemExit('no PulseAudio virtual sink: eval "$(scripts/virtual-audio.sh start)"')
    r = asyncio.run(bench(args.seconds, args.trials, args.period_ms, latency))
    r["speaker"] = {"period_ms": args.period_ms, "latency": args.latency}
    rows = []
    for name, goal in (
        ("capture_to_publish_first_sample", 25.0),
        ("capture_to_publish_last_sample", None),
        ("audio_out_to_device", None),
        ("barge_in_to_silent_write", 30.0),
        ("barge_in_to_silence_at_sink", 30.0),
    ):
        v = r[name]
        rows.append({
            "measure": name, "n": v.get("n", ""), "p50 ms": v.get("p50_ms"),
            "p99 ms": v.get("p99_ms"), "max ms": v.get("max_ms", ""),
            "goal": f"p99 <= {goal:.0f} ms" if goal else "",
            "met": ("yes" if v.get("p99_ms", 1e9) <= goal else "NO") if goal else "",
        })  # fmt: skip
    title = (
        f"audio (PulseAudio null sink 'pulse'; speaker period {args.period_ms} ms, "
        f"latency {args.latency})"
    )
    print(table(title, rows,
                ["measure", "n", "p50 ms", "p99 ms", "max ms", "goal", "met"]))  # fmt: skip
    print(f"PortAudio output latency (reported): {r['output_latency_reported_ms']} ms")
    path = save("audio", r)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
