"""Which copy of the avatar's voice is played (agent.audio.source): messages in, choices out."""

from __future__ import annotations

from agent.audio.source import VoiceSource

MS = 1_000_000
CHUNK = b"\x01\x00" * 2400  # 100 ms at 24 kHz mono


def webrtc_frames(v: VoiceSource, start_ms: int, end_ms: int, queued_ms: float = 0) -> list[bool]:
    return [v.on_webrtc(t * MS, queued_ms) for t in range(start_ms, end_ms, 20)]


def test_no_webrtc_the_deltas_are_played() -> None:
    v = VoiceSource()
    assert v.on_delta("r1", CHUNK, 24_000, 1, 0, 0) == CHUNK
    assert v.on_delta("r1", CHUNK, 24_000, 1, 100 * MS, 100) == CHUNK
    v.on_done("r1")
    assert v.tick(5000 * MS) is None


def test_webrtc_live_the_deltas_are_not_played() -> None:
    v = VoiceSource()
    assert all(webrtc_frames(v, 0, 200))
    assert v.on_delta("r1", CHUNK, 24_000, 1, 200 * MS, 0) == b""
    assert all(webrtc_frames(v, 200, 1000))
    assert v.ignored_deltas == 1


def test_a_response_that_started_on_deltas_finishes_on_them() -> None:
    v = VoiceSource()
    assert v.on_delta("r1", CHUNK, 24_000, 1, 0, 0) == CHUNK
    # WebRTC comes up in the middle of r1: held back while r1 plays
    assert not any(webrtc_frames(v, 100, 300, queued_ms=500))
    assert v.on_delta("r1", CHUNK, 24_000, 1, 300 * MS, 500) == CHUNK  # still r1's source
    v.on_done("r1")
    assert not any(webrtc_frames(v, 300, 600, queued_ms=200))  # done, but still playing
    assert v.on_webrtc(600 * MS, 0)  # played out: WebRTC from now on
    assert v.on_delta("r2", CHUNK, 24_000, 1, 700 * MS, 0) == b""  # the next reply: WebRTC
    assert v.held_back == 25


def test_back_to_back_replies_stay_on_deltas_while_one_is_playing() -> None:
    v = VoiceSource()
    v.on_delta("r1", CHUNK, 24_000, 1, 0, 0)
    v.on_done("r1")
    webrtc_frames(v, 0, 100, queued_ms=400)
    assert v.on_delta("r2", CHUNK, 24_000, 1, 100 * MS, 400) == CHUNK


def test_a_response_without_done_ends_after_silence() -> None:
    v = VoiceSource(end_after_ms=1000)
    v.on_delta("r1", CHUNK, 24_000, 1, 0, 0)
    assert not v.on_webrtc(500 * MS, 0)
    assert v.on_webrtc(1000 * MS, 0)


def test_webrtc_stall_mid_response_resumes_from_the_deltas_where_it_was() -> None:
    v = VoiceSource(stall_ms=400)
    webrtc_frames(v, 0, 100)
    chunks = [bytes([i]) * 4800 for i in range(10)]  # 10 x 100 ms, all at once (fast server)
    for c in chunks:
        assert v.on_delta("r1", c, 24_000, 1, 100 * MS, 0) == b""
    webrtc_frames(v, 100, 420)  # WebRTC played r1 for ~300 ms, then stalls
    assert v.tick(600 * MS) is None  # not yet a stall
    rest = v.tick(900 * MS)
    assert rest is not None and rest.response_id == "r1"
    assert rest.pcm == b"".join(chunks)[300 * 48 :]  # from 300 ms on
    assert (rest.sample_rate_hz, rest.channels) == (24_000, 1)
    assert v.tick(1000 * MS) is None  # once
    assert not v.on_webrtc(1100 * MS, 500)  # WebRTC back: r1 finishes on deltas
    assert v.resumed == 1


def test_a_stall_after_the_response_is_over_resumes_nothing() -> None:
    v = VoiceSource(stall_ms=400)
    webrtc_frames(v, 0, 100)
    v.on_delta("r1", CHUNK, 24_000, 1, 100 * MS, 0)
    v.on_done("r1")
    webrtc_frames(v, 100, 400)  # r1 (100 ms) played through WebRTC
    assert v.tick(2000 * MS) is None
    assert v.on_delta("r2", CHUNK, 24_000, 1, 2100 * MS, 0) == CHUNK  # not live: deltas


def test_barge_in_ends_the_response_on_deltas() -> None:
    v = VoiceSource()
    v.on_delta("r1", CHUNK, 24_000, 1, 0, 0)
    assert not v.on_webrtc(50 * MS, 1000)
    v.on_barge_in()
    assert v.on_webrtc(60 * MS, 0)


def test_kept_deltas_are_bounded() -> None:
    v = VoiceSource(keep_ms=500)
    webrtc_frames(v, 0, 100)
    for _ in range(100):
        v.on_delta("r1", CHUNK, 24_000, 1, 100 * MS, 0)
    rest = v.tick(10_000 * MS)
    assert rest is not None and len(rest.pcm) <= 600 * 48


def test_deltas_without_a_response_id_are_told_apart_by_their_done() -> None:
    v = VoiceSource()
    assert v.on_delta("", CHUNK, 24_000, 1, 0, 0) == CHUNK  # the greeting, before WebRTC
    v.on_done("")
    webrtc_frames(v, 100, 1000, queued_ms=0)  # played out; WebRTC is live now
    assert v.on_delta("", CHUNK, 24_000, 1, 1000 * MS, 0) == b""  # the next reply: WebRTC
    v.on_done("")
    webrtc_frames(v, 1000, 1500)
    v2 = VoiceSource()
    v2.on_delta("r1", CHUNK, 24_000, 1, 0, 0)
    v2.on_done("r1")
    webrtc_frames(v2, 0, 40, queued_ms=300)  # r1 still playing
    assert v2.on_delta("r1", CHUNK, 24_000, 1, 40 * MS, 300) == CHUNK  # a late delta of r1


def test_a_done_that_overtakes_its_deltas_still_ends_the_response() -> None:
    """done rides the control plane, the deltas the media plane: it may come first."""
    v = VoiceSource(end_after_ms=60_000)
    v.on_done("r1")
    assert v.on_delta("r1", CHUNK, 24_000, 1, 0, 0) == CHUNK
    assert v.on_webrtc(50 * MS, 0)  # r1 is complete and played out: WebRTC at once
    assert v.on_delta("r2", CHUNK, 24_000, 1, 60 * MS, 0) == b""
