"""Event -> bus mapping, local-input limits, stale signaling, backlog, burst logging."""

from __future__ import annotations

from agent import topics
from agent.errors import PermanentSessionError, TransientSessionError
from agent.messages import (
    AudioFrame,
    IceCandidate,
    ImageInput,
    SdpMessage,
    TextInput,
    UserTranscript,
)
from agent.navtalk import events as ev
from agent.navtalk.backlog import AudioBacklog
from agent.navtalk.bridge import (
    ICE_LATCH,
    OFFER_LATCH,
    check_local,
    failure_of,
    stale_signaling,
    to_bus,
)
from agent.navtalk.burst import BurstLog
from agent.navtalk.url import register_secret

SECRET = "Lic-BRIDGE-1a2b3c4d"
register_secret(SECRET)


def bus(event: ev.Event, conn: str = "k1") -> list[tuple[str, object, int]]:
    return [(p.topic, p.msg, p.latch) for p in to_bus(event, connection_id=conn, ice=(), now_ns=5)]


def test_offer_and_candidates_are_latched_with_the_connection_id() -> None:
    ((topic, msg, latch),) = bus(ev.RtcOffer(sdp="v=0"))
    assert topic == topics.WEBRTC_REMOTE_OFFER and latch == OFFER_LATCH
    assert isinstance(msg, SdpMessage) and msg.connection_id == "k1"
    ((topic, msg, latch),) = bus(ev.RtcIceCandidate(candidate="c", sdp_mid="0"))
    assert topic == topics.WEBRTC_REMOTE_ICE and latch == ICE_LATCH
    assert isinstance(msg, IceCandidate) and msg.connection_id == "k1"


def test_audio_delta_always_goes_on_the_bus() -> None:
    outs = to_bus(
        ev.AudioDelta(pcm=b"\x01\x00", response_id="r"), connection_id="", ice=(), now_ns=9
    )
    ((p),) = outs
    assert p.topic == topics.NAVTALK_AUDIO_DELTA and p.payload == (b"\x01\x00",)
    assert isinstance(p.msg, AudioFrame) and p.msg.capture_mono_ns == 9


def test_server_text_is_redacted() -> None:
    ((_, msg, _),) = bus(ev.InputTranscriptionCompleted(content=f"it is {SECRET}"))
    assert isinstance(msg, UserTranscript) and msg.text == "it is ***"
    outs = bus(ev.Unknown(type="x", frame={"k": SECRET}))
    assert SECRET not in repr(outs)


def test_failures() -> None:
    assert isinstance(failure_of(ev.ConnectedFail(), ended_by_us=False), PermanentSessionError)
    assert isinstance(failure_of(ev.InsufficientBalance(), ended_by_us=True), PermanentSessionError)
    closed = failure_of(ev.ConnectedClose(message="idle"), ended_by_us=False)
    assert isinstance(closed, TransientSessionError)
    assert failure_of(ev.ConnectedClose(), ended_by_us=True) is None
    assert failure_of(ev.SessionCreated(), ended_by_us=False) is None


def test_local_input_limits() -> None:
    assert check_local(AudioFrame(sample_rate_hz=24000), [b"\x00" * 960]) is None
    assert check_local(AudioFrame(sample_rate_hz=24000), [b"\x00" * 1_000_000]) is not None
    assert check_local(AudioFrame(sample_rate_hz=24000), [b"\x00" * 961]) is not None
    assert check_local(TextInput(text="x" * 100_000), []) is not None
    assert check_local(TextInput(text="hello"), []) is None
    assert check_local(SdpMessage(sdp_type="answer", sdp="v" * 1_000_000), []) is not None
    assert check_local(IceCandidate(candidate="c" * 10_000), []) is not None
    assert check_local(ImageInput(), [b"\x00" * (9 * 1024 * 1024)]) is not None


def test_stale_signaling() -> None:
    assert stale_signaling("k1", "k1") is None
    assert stale_signaling("", "k1") is None  # a display that predates connection ids
    assert stale_signaling("k0", "k1") is not None
    assert stale_signaling("k1", None) is not None


def test_backlog_drops_oldest_and_merges_the_preroll_in_front() -> None:
    b = AudioBacklog(max_bytes=8)
    for t in range(6):
        b.add(t * 10, bytes([t, t]))
    assert b.nbytes == 8 and b.dropped == 2
    b.merge_preroll(end_ns=35, pcm=b"PPPP")  # frames at 40, 50 are after the pre-roll
    assert b.drain() == b"PPPP" + bytes([4, 4, 5, 5])
    assert len(b) == 0
    b.merge_preroll(end_ns=0, pcm=b"0123456789")  # longer than the backlog: newest part kept
    assert b.drain() == b"23456789"


def test_burst_log() -> None:
    bl = BurstLog(window_s=10.0)
    assert bl.admit("a", 0.0) == 0
    assert all(bl.admit("a", 0.1 * i) is None for i in range(1, 50))
    assert bl.admit("b", 1.0) == 0  # keys are apart
    assert bl.admit("a", 10.5) == 49
    assert bl.admit("a", 11.0) is None
    assert bl.total == 53
