"""The speaker process: plays the avatar's voice, stops at once on barge-in.

::

    audio.out (WebRTC voice, e.g. 48 kHz stereo)  ┐  VoiceSource: one copy per response
    navtalk.audio.delta (WebSocket voice, 24 kHz) ┼▶ (deltas while WebRTC is not live) ─▶
    navtalk.audio.done (a response's end)         ┘  Playout (jitter buffer) ◀─pull─ device
    control.barge_in ─▶ flush queued audio + the device's own look-ahead: silent within one
                        device period (speaker.period_ms)
    control.volume   ─▶ gain
    ─▶ speaker.state (playing / idle, on change and every state_interval_ms)
    ─▶ audio.played  (what was written, 24 kHz mono, stamped with its estimated play time:
                      the echo reference for the mic's software canceller; published only
                      when mic.echo_mode = "software_aec" and speaker.publish_played)

The device pulls on its own thread (see :mod:`agent.audio.playout`); the played blocks come
back to the event loop through a bounded deque plus one pending wake-up, batched: the loop is
woken every WAKE_BATCH_MS of pulls (not every 5 ms period), and at once when the speaker
starts or stops playing. Barge-in does not wait for it (the bus loop flushes directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent import topics
from agent.aio import ThreadWakeup
from agent.audio.pcm import PCM_RATE_HZ
from agent.audio.playout import PlayedBlock, Playout, StateChange
from agent.audio.source import VoiceSource
from agent.bus import Bus
from agent.config import Settings
from agent.messages import AudioFrame, BargeIn, Metrics, ResponseDone, SetVolume, SpeakerState
from hardware.audio import AudioOutput, SoundDeviceOutput, open_output, rescan_devices
from hardware.reopen import reopen

__all__ = ["run"]

log = logging.getLogger(__name__)

METRICS_INTERVAL_S = 5.0
WAKE_BATCH_MS = 20  # the device thread wakes the loop after this much was pulled


class _PullWaker:
    """Device thread: wakes the loop once per ``batch_ms`` of pulls, or when the playing
    state flipped (speaker.state must go out at once)."""

    def __init__(self, wakeup: ThreadWakeup, playout: Playout, period_ms: int) -> None:
        self._wakeup = wakeup
        self._playout = playout
        self._every = max(1, WAKE_BATCH_MS // max(1, period_ms))
        self._count = 0
        self._playing = False
        self.wakes = 0

    def pulled(self) -> None:
        self._count += 1
        playing = self._playout.playing
        if self._count >= self._every or playing != self._playing:
            self._count = 0
            self._playing = playing
            self.wakes += 1
            self._wakeup.wake()


TOPICS = topics.ServiceTopics(
    reads=(
        topics.AUDIO_OUT,
        topics.NAVTALK_AUDIO_DELTA,
        topics.NAVTALK_AUDIO_DONE,
        topics.CONTROL_BARGE_IN,
        topics.CONTROL_VOLUME,
    ),
    writes=(topics.AUDIO_PLAYED, topics.SPEAKER_STATE, topics.METRICS),
)


async def run(settings: Settings, bus: Bus, *, device: AudioOutput | None = None) -> None:
    """Play until cancelled. ``device`` is built from ``settings.speaker`` when not given (an
    injected device is started and closed here too)."""
    cfg = settings.speaker
    # audio_only: the deltas only (no WebRTC voice is coming); else both, VoiceSource chooses
    sources = (topics.NAVTALK_AUDIO_DELTA,) if cfg.audio_only else (
        topics.NAVTALK_AUDIO_DELTA, topics.AUDIO_OUT
    )  # fmt: skip
    # audio.played is the software canceller's reference: nobody else reads it
    publish_played = cfg.publish_played and settings.mic.echo_mode == "software_aec"
    bus.declare(TOPICS, without=(topics.AUDIO_OUT,) if cfg.audio_only else ())
    await bus.start()
    playout = Playout(cfg, keep_idle=bool(cfg.record_path))
    voice = VoiceSource(stall_ms=cfg.voice_stall_ms)
    wakeup = ThreadWakeup(asyncio.get_running_loop())
    output = device if device is not None else open_output(cfg)
    waker = _PullWaker(wakeup, playout, output.period_ms)

    def pull(n: int, play_ns: int) -> bytes:  # the device's thread
        pcm = playout.pull(n, time.monotonic_ns(), play_ns)
        waker.pulled()
        return pcm

    await output.start(pull)  # a device that cannot open at start ends the service

    def revive() -> Awaitable[int]:  # one that fails later is opened again until it is back
        rescan = rescan_devices if isinstance(output, SoundDeviceOutput) else None
        return reopen("speaker device", lambda: output.start(pull), output.close, rescan=rescan)

    recorder = _Recorder(Path(cfg.record_path)) if cfg.record_path else None
    log.info(
        "= speaker up: %s, sources %s, period %d ms, jitter %d/%d ms, audio.played %s",
        type(output).__name__,
        " + ".join(sources),
        output.period_ms,
        cfg.jitter_target_ms,
        cfg.jitter_max_ms,
        "on" if publish_played else "off (no software canceller)",
    )
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_bus_loop(bus, playout, output, voice), name="speaker-bus")
            tasks.create_task(
                _played_loop(bus, playout, output, revive, voice, wakeup, recorder,
                             publish_played,
                             cfg.state_interval_ms / 1000),
                name="speaker-played",
            )  # fmt: skip
            tasks.create_task(_metrics_loop(bus, playout, voice), name="speaker-metrics")
    finally:
        await output.close()
        if recorder is not None:
            recorder.close()


async def _bus_loop(bus: Bus, playout: Playout, output: AudioOutput, voice: VoiceSource) -> None:
    async for d in bus:
        msg = d.msg
        try:
            if isinstance(msg, BargeIn):
                now = time.monotonic_ns()
                voice.on_barge_in()
                dropped = playout.barge_in(now)
                output.flush()
                log.info(
                    "< barge-in (%s): dropped %d ms queued, %.2f ms after it was sent",
                    msg.reason,
                    dropped * 1000 // PCM_RATE_HZ,
                    (now - d.mono_ns) / 1e6,
                )
            elif isinstance(msg, SetVolume):
                playout.set_volume(msg.level)
                log.info("< volume %.2f", msg.level)
            elif isinstance(msg, AudioFrame) and d.topic == topics.AUDIO_OUT:
                now = time.monotonic_ns()
                if d.payload and voice.on_webrtc(now, playout.audible_queued_ms()):
                    playout.push(d.payload[0], msg.sample_rate_hz, msg.channels, msg.stream_id, now)
            elif isinstance(msg, AudioFrame) and d.topic == topics.NAVTALK_AUDIO_DELTA:
                now = time.monotonic_ns()
                if d.payload:
                    pcm = voice.on_delta(
                        msg.stream_id,
                        d.payload[0],
                        msg.sample_rate_hz,
                        msg.channels,
                        now,
                        playout.audible_queued_ms(),
                    )
                    if pcm:
                        playout.push(pcm, msg.sample_rate_hz, msg.channels, msg.stream_id, now)
            elif isinstance(msg, ResponseDone):
                voice.on_done(msg.response_id)
        except Exception:  # never die on one bad message
            log.exception("< %s from %s: could not handle it", d.topic, d.sender)


async def _played_loop(
    bus: Bus,
    playout: Playout,
    output: AudioOutput,
    revive: Callable[[], Awaitable[object]],
    voice: VoiceSource,
    wakeup: ThreadWakeup,
    recorder: _Recorder | None,
    publish_played: bool,
    state_interval_s: float,
) -> None:
    last_state = 0.0
    while True:
        wakeup.event.clear()
        now = time.monotonic_ns()
        rest = voice.tick(now)
        if rest is not None and rest.pcm:
            playout.push(rest.pcm, rest.sample_rate_hz, rest.channels, rest.response_id, now)
        playout.tick(now)
        for item in playout.drain():
            if isinstance(item, StateChange):
                log.info("= speaker %s", "playing" if item.playing else "idle")
                _publish_state(bus, playout)
                last_state = time.monotonic()
            elif isinstance(item, PlayedBlock):
                if publish_played and item.playing:
                    bus.publish(
                        topics.AUDIO_PLAYED,
                        AudioFrame(
                            sample_rate_hz=PCM_RATE_HZ,
                            channels=1,
                            capture_mono_ns=item.play_mono_ns,
                            stream_id=item.stream_id,
                        ),
                        item.pcm,
                    )
                if recorder is not None:
                    recorder.write(item.pcm)
        output.report()
        if output.failed is not None:
            log.warning("= %s", output.failed)
            await revive()
        if time.monotonic() - last_state >= state_interval_s:
            _publish_state(bus, playout)
            last_state = time.monotonic()
        # Woken by the device thread after each pull; the timeout keeps the periodic state and
        # the idle check going when the device is not pulling. asyncio.timeout, not wait_for:
        # on 3.11 wait_for can swallow a cancellation that races the wake-up (no clean stop).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                await wakeup.event.wait()


def _publish_state(bus: Bus, playout: Playout) -> None:
    queued_ms, underruns, overruns = playout.stats()
    bus.publish(
        topics.SPEAKER_STATE,
        SpeakerState(
            playing=playout.playing,
            queued_ms=queued_ms,
            underruns=underruns,
            overruns=overruns,
            volume=playout.volume,
        ),
    )


async def _metrics_loop(bus: Bus, playout: Playout, voice: VoiceSource) -> None:
    while True:
        await asyncio.sleep(METRICS_INTERVAL_S)  # a reporting period, not a wait for an event
        queued_ms, underruns, overruns = playout.stats()
        values = {
            "queued_ms": queued_ms,
            "underruns": float(underruns),
            "overruns": float(overruns),
            "barge_ins": float(playout.barge_ins),
            "dropped_after_barge_in": float(playout.dropped_after_barge_in),
            "webrtc_held_back": float(voice.held_back),
            "deltas_ignored": float(voice.ignored_deltas),
            "resumed_from_deltas": float(voice.resumed),
        }
        lat = sorted(playout.latencies_ns)
        if lat:
            values["out_to_device_ms_p50"] = lat[len(lat) // 2] / 1e6
            values["out_to_device_ms_p99"] = lat[min(len(lat) - 1, len(lat) * 99 // 100)] / 1e6
        bus.publish("metrics.speaker", Metrics(service="speaker", values=values))


class _Recorder:
    """speaker.record_path: what was played, as a 24 kHz mono WAV."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._wav: wave.Wave_write | None = wave.open(str(path), "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(PCM_RATE_HZ)

    def write(self, pcm: bytes) -> None:
        if self._wav is not None:
            self._wav.writeframesraw(pcm)

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None
