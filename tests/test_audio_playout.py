"""The speaker's core: conversion, barge-in, state changes, volume, latency stamps."""

from __future__ import annotations

import numpy as np

from agent.audio.playout import PlayedBlock, Playout, StateChange
from agent.audio.settings import SpeakerSettings

MS = 1_000_000


def _pcm(n: int, value: int = 1000, channels: int = 1) -> bytes:
    return np.full(n * channels, value, dtype="<i2").tobytes()


def _playout(**fields: object) -> Playout:
    base: dict[str, object] = {"jitter_target_ms": 20, "idle_after_ms": 30}
    base.update(fields)
    return Playout(SpeakerSettings(**base))  # type: ignore[arg-type]


def test_plays_converted_audio_and_reports_state_changes() -> None:
    p = _playout()
    assert p.push(_pcm(960, channels=2), 48_000, 2, "r1", now_ns=0)  # 20 ms of 48 kHz stereo
    assert p.push(_pcm(960, channels=2), 48_000, 2, "r1", now_ns=20 * MS)
    out = []
    for k in range(12):
        now = (30 + 10 * k) * MS
        p.tick(now)  # as the shell does after each pull: plays the resampler's tail
        out.append(p.pull(240, now_ns=now, play_ns=0))
    events = p.drain()
    changes = [e for e in events if isinstance(e, StateChange)]
    assert [c.playing for c in changes] == [True, False]
    real = sum(e.real_samples for e in events if isinstance(e, PlayedBlock))
    assert real == 960  # all 40 ms, the resampler's tail included
    samples = np.frombuffer(b"".join(out), "<i2")
    assert 990 <= float(np.median(samples[samples != 0])) <= 1010  # a DC step: 1000 mono


def test_barge_in_flushes_and_holds_then_accepts_a_new_stream() -> None:
    p = _playout(barge_in_hold_ms=100)
    p.push(_pcm(24_00), 24_000, 1, "r1", now_ns=0)
    p.pull(240, now_ns=1 * MS, play_ns=0)
    assert p.barge_in(now_ns=10 * MS) == 2400 - 240
    assert p.pull(240, now_ns=11 * MS, play_ns=0) == bytes(480)
    assert not p.push(_pcm(480), 24_000, 1, "r2", now_ns=50 * MS)  # within the hold
    assert not p.push(_pcm(480), 24_000, 1, "r1", now_ns=500 * MS)  # the interrupted stream
    assert p.push(_pcm(480), 24_000, 1, "r2", now_ns=500 * MS)  # a new response plays
    assert p.dropped_after_barge_in == 2


def test_volume_and_latency_stamps() -> None:
    p = _playout(jitter_target_ms=0)
    p.set_volume(0.5)
    p.push(_pcm(240, 2000), 24_000, 1, "", now_ns=0)
    pcm = p.pull(240, now_ns=7 * MS, play_ns=0)
    assert set(np.frombuffer(pcm, "<i2")) == {1000}
    assert list(p.latencies_ns) == [7 * MS]
    p.set_volume(3.0)
    assert p.volume == 1.0


def test_a_stream_of_silence_is_not_playing() -> None:
    # the WebRTC voice track sends silence between utterances: the speaker is idle then
    p = _playout(jitter_target_ms=0)
    for k in range(10):
        p.push(_pcm(240, 0), 24_000, 1, "", now_ns=k * 10 * MS)
        p.pull(240, now_ns=k * 10 * MS + MS, play_ns=0)
    assert not p.playing
    assert not [e for e in p.drain() if isinstance(e, StateChange)]
    p.push(_pcm(240, 3000), 24_000, 1, "", now_ns=100 * MS)
    p.pull(240, now_ns=101 * MS, play_ns=0)
    assert p.playing
    for k in range(11, 16):  # silence again: idle after idle_after_ms (30 ms)
        p.push(_pcm(240, 0), 24_000, 1, "", now_ns=k * 10 * MS)
        p.pull(240, now_ns=k * 10 * MS + MS, play_ns=0)
    assert [c.playing for c in p.drain() if isinstance(c, StateChange)] == [True, False]


def test_goes_idle_when_a_continuous_stream_turns_silent() -> None:
    """The WebRTC voice never stops: silence follows the words, and with a jitter target
    the queue is never empty. Idle must follow the last audible sample, not an empty queue
    (a speaker "playing" for ever held end_after_speech for its 15 s limit, and would gate
    a half-duplex mic for good)."""
    p = _playout(jitter_target_ms=60, idle_after_ms=100)
    period, frame = 5 * MS, 20 * MS  # device pulls 5 ms; the track delivers 20 ms frames
    changes: list[tuple[bool, int]] = []
    last_audible_played = 0
    for step in range(400):  # 2 s: 0.5 s of voice, then silence
        now = step * period
        if now % frame == 0:
            value = 3000 if now < 500 * MS else 0
            assert p.push(_pcm(480, value), 24_000, 1, "", now_ns=now)
        pcm = p.pull(120, now_ns=now, play_ns=now)
        if np.frombuffer(pcm, "<i2").any():
            last_audible_played = now
        p.tick(now)
        changes += [(e.playing, e.at_mono_ns) for e in p.drain() if isinstance(e, StateChange)]
    assert p.stats()[0] > 0  # the queue never ran dry: the old rule could not go idle
    assert [c for c, _ in changes] == [True, False]
    idle_at = changes[1][1]
    assert 100 * MS <= idle_at - last_audible_played <= 110 * MS


def test_audible_queued_ms_leaves_out_a_silent_tail() -> None:
    p = Playout(SpeakerSettings(jitter_target_ms=60))
    voice = (np.ones(2400, np.int16) * 5000).astype("<i2").tobytes()  # 100 ms, audible
    p.push(voice, 24_000, 1, "r1", 0)
    p.push(bytes(480 * 2), 24_000, 1, "r1", 0)  # 20 ms of silence after it
    assert abs(p.audible_queued_ms() - 100.0) < 0.1
    p.pull(2400, 200_000_000, 200_000_000)  # the voice is played
    assert p.audible_queued_ms() == 0.0
    assert p.stats()[0] > 0  # the silent tail is still queued
