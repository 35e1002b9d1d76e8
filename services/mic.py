"""The mic process: capture, echo handling, local VAD, pre-roll.

::

    input device ─▶ CaptureCore ─▶ audio.mic (24 kHz mono PCM16, 20 ms, capture-stamped)
                                └▶ vad.state (onset / offset, with capture times)
    speaker.state ─▶ half-duplex gating      audio.played ─▶ software-AEC reference
    mic.preroll.request ─▶ mic.preroll (the last N ms published)

Two tasks: the capture loop (device -> core -> bus) and the bus loop (speaker state,
reference, pre-roll requests). A device that fails after it started (PulseAudio restarted,
the device unplugged) is opened again until it is back (:mod:`hardware.reopen`), without a
process restart; one that cannot open at start ends the service with DeviceError. Bad bus
input is logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agent import topics
from agent.audio.capture import CaptureCore
from agent.audio.echo import EchoMode
from agent.audio.pcm import PCM_RATE_HZ
from agent.bus import Bus
from agent.config import Settings
from agent.errors import DeviceError
from agent.messages import (
    AudioFrame,
    Metrics,
    PreRoll,
    PreRollRequest,
    SpeakerState,
    VadState,
)
from hardware.audio import AudioInput, SoundDeviceInput, open_input, rescan_devices
from hardware.reopen import reopen

__all__ = ["run"]

log = logging.getLogger(__name__)

METRICS_INTERVAL_S = 5.0

TOPICS = topics.ServiceTopics(
    reads=(topics.SPEAKER_STATE, topics.MIC_PREROLL_REQUEST, topics.AUDIO_PLAYED),
    writes=(topics.AUDIO_MIC, topics.VAD_STATE, topics.MIC_PREROLL, topics.METRICS),
)


async def run(settings: Settings, bus: Bus, *, device: AudioInput | None = None) -> None:
    """Capture and publish until cancelled. ``device`` is built from ``settings.mic`` when not
    given (an injected device is started and closed here too)."""
    cfg = settings.mic
    core = CaptureCore(cfg)
    aec = core.echo.mode is EchoMode.SOFTWARE_AEC
    bus.declare(TOPICS, without=() if aec else (topics.AUDIO_PLAYED,))
    await bus.start()
    source = device if device is not None else open_input(cfg)
    await source.start()
    log.info(
        "= mic up: %s, %d ms frames, echo %s, vad %s",
        type(source).__name__,
        cfg.frame_ms,
        cfg.echo_mode,
        f"mode {cfg.vad_aggressiveness}" if cfg.vad_enabled else "off",
    )
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_capture_loop(source, core, bus), name="mic-capture")
            tasks.create_task(_bus_loop(core, bus), name="mic-bus")
            tasks.create_task(_metrics_loop(source, core, bus), name="mic-metrics")
    finally:
        await source.close()


async def _capture_loop(source: AudioInput, core: CaptureCore, bus: Bus) -> None:
    published = 0
    while True:
        try:
            frame = await source.read()
        except DeviceError:
            rescan = rescan_devices if isinstance(source, SoundDeviceInput) else None
            await reopen("mic device", source.start, source.close, rescan=rescan)
            continue
        if frame is None:
            log.info("= mic input ended after %d frames", published)
            return
        result = core.process(frame.pcm, frame.capture_mono_ns)
        bus.publish(
            topics.AUDIO_MIC,
            AudioFrame(
                sample_rate_hz=PCM_RATE_HZ, channels=1, capture_mono_ns=frame.capture_mono_ns
            ),
            result.pcm,
        )
        published += 1
        for event in result.events:
            log.info("> vad.state speaking=%s (at %d)", event.speaking, event.at_mono_ns)
            bus.publish(
                topics.VAD_STATE, VadState(speaking=event.speaking, at_mono_ns=event.at_mono_ns)
            )
        # read() does not suspend while frames are queued: yield, so that a backlog (a device
        # that delivers faster than real time) cannot starve the bus loop.
        await asyncio.sleep(0)


async def _bus_loop(core: CaptureCore, bus: Bus) -> None:
    async for d in bus:
        msg = d.msg
        try:
            if isinstance(msg, SpeakerState):
                core.on_speaker_state(msg.playing, d.mono_ns)
            elif isinstance(msg, AudioFrame) and d.topic == topics.AUDIO_PLAYED:
                if msg.sample_rate_hz == PCM_RATE_HZ and msg.channels == 1 and d.payload:
                    core.on_reference(d.payload[0], msg.capture_mono_ns)
            elif isinstance(msg, PreRollRequest):
                pcm, end_ns = core.preroll_snapshot(msg.duration_ms)
                log.info(
                    "< preroll request %s (%d ms) > %d ms",
                    msg.request_id,
                    msg.duration_ms,
                    len(pcm) // 2 * 1000 // PCM_RATE_HZ,
                )
                bus.publish(
                    topics.MIC_PREROLL,
                    PreRoll(
                        request_id=msg.request_id, sample_rate_hz=PCM_RATE_HZ, end_mono_ns=end_ns
                    ),
                    pcm,
                )
        except Exception:  # never die on one bad message
            log.exception("< %s from %s: could not handle it", d.topic, d.sender)


async def _metrics_loop(source: AudioInput, core: CaptureCore, bus: Bus) -> None:
    while True:
        await asyncio.sleep(METRICS_INTERVAL_S)  # a reporting period, not a wait for an event
        values = {
            "frames": float(core.frames),
            "dropped_frames": float(source.dropped),
            "gated_frames": float(core.echo.gated_frames),
            "vad_speaking": float(core.vad.speaking) if core.vad else 0.0,
        }
        with contextlib.suppress(Exception):
            bus.publish("metrics.mic", Metrics(service="mic", values=values))
