"""The display's negotiation core (agent.video.negotiation): messages in, decisions out."""

from __future__ import annotations

from agent.messages import IceCandidate
from agent.video.negotiation import (
    MID_SESSION_GRACE_S,
    Action,
    CandidateVerdict,
    NegotiationPolicy,
    OfferVerdict,
    RemoteSignals,
    Step,
)


def cand(text: str, connection_id: str) -> IceCandidate:
    return IceCandidate(candidate=text, sdp_mid="0", connection_id=connection_id)


def test_each_offer_is_answered_once_per_connection_and_sdp() -> None:
    s = RemoteSignals()
    assert s.offer("c1", "sdp-a") is OfferVerdict.ANSWER
    assert s.offer("c1", "sdp-a") is OfferVerdict.DUPLICATE  # the latch re-sent it
    assert s.offer("c1", "sdp-b") is OfferVerdict.ANSWER  # the server renegotiates
    assert s.offer("c2", "sdp-a") is OfferVerdict.ANSWER  # same SDP, new connection
    assert s.duplicates == 1


def test_an_offer_of_a_connection_that_is_over_is_never_answered() -> None:
    s = RemoteSignals()
    s.on_session("c1")
    s.on_session("c2")  # the session reconnected
    assert s.offer("c1", "sdp-old") is OfferVerdict.STALE
    assert s.offer("c2", "sdp-new") is OfferVerdict.ANSWER
    assert s.offer("c1", "sdp-older") is OfferVerdict.STALE
    s.on_session("c1")  # a late session.state of the old connection does not bring it back
    assert s.current == "c2"


def test_a_newer_offer_retires_the_connection_before_it() -> None:
    s = RemoteSignals()
    assert s.offer("c1", "a") is OfferVerdict.ANSWER
    assert s.offer("c2", "b") is OfferVerdict.ANSWER
    assert s.offer("c1", "c") is OfferVerdict.STALE


def test_candidates_before_their_offer_are_held_then_handed_over_once() -> None:
    s = RemoteSignals()
    s.on_session("c2")
    assert s.candidate(cand("candidate:1", "c2")) is CandidateVerdict.HOLD
    assert s.candidate(cand("candidate:1", "c2")) is CandidateVerdict.HOLD  # re-sent
    assert s.candidate(cand("candidate:2", "c2")) is CandidateVerdict.HOLD
    assert s.offer("c2", "sdp") is OfferVerdict.ANSWER
    held = s.negotiating("c2")
    assert [c.candidate for c in held] == ["candidate:1", "candidate:2"]
    assert s.candidate(cand("candidate:3", "c2")) is CandidateVerdict.ADD
    assert s.candidate(cand("candidate:3", "c2")) is CandidateVerdict.DROP  # duplicate
    assert s.negotiating("c2") == []  # handed over once


def test_candidates_of_an_old_connection_are_dropped_and_forgotten() -> None:
    s = RemoteSignals()
    s.on_session("c1")
    assert s.candidate(cand("candidate:1", "c1")) is CandidateVerdict.HOLD
    s.on_session("c2")
    assert s.candidate(cand("candidate:2", "c1")) is CandidateVerdict.DROP
    s.offer("c2", "sdp")
    assert s.negotiating("c2") == []
    assert s.negotiating("c1") == []  # the held one went with its connection


def test_unstamped_signaling_matches_whatever_is_current() -> None:
    s = RemoteSignals()
    assert s.offer("", "sdp") is OfferVerdict.ANSWER
    s.negotiating("")
    assert s.candidate(cand("candidate:1", "")) is CandidateVerdict.ADD
    assert s.answer_matches("") and s.answer_matches("anything")
    s.negotiating("c1")
    assert s.answer_matches("c1") and not s.answer_matches("c0")


def test_held_candidates_are_bounded() -> None:
    s = RemoteSignals(max_held=4)
    for i in range(10):
        s.candidate(cand(f"candidate:{i}", "c9"))
    assert [c.candidate for c in s.negotiating("c9")] == [f"candidate:{i}" for i in range(6, 10)]


def test_no_offer_of_ours_while_a_server_offer_is_being_answered() -> None:
    p = NegotiationPolicy(timeout_s=2.0)
    assert p.on_session(True, 0.0) is Action.NONE  # display started mid-session: short grace
    p.on_remote_offer_received()
    assert p.step is Step.ANSWERING and not p.may_offer
    assert p.tick(100.0) is Action.NONE  # however long the answer takes
    assert p.on_connection_state("failed", 100.0) is Action.NONE
    p.on_remote_offer(100.0)
    assert p.step is Step.NEGOTIATED and p.may_offer
    assert p.on_connection_state("connected", 100.5) is Action.NONE
    assert p.step is Step.CONNECTED
    assert p.on_connection_state("failed", 200.0) is Action.OFFER  # answered, then it broke


def test_a_failed_answer_waits_then_offers() -> None:
    p = NegotiationPolicy(timeout_s=2.0)
    p.on_session(True, 0.0)
    p.on_remote_offer_received()
    p.on_answer_failed(1.0)
    assert p.tick(2.9) is Action.NONE
    assert p.tick(3.0) is Action.OFFER


def test_mid_session_start_offers_after_the_grace_when_no_server_offer_comes() -> None:
    p = NegotiationPolicy(timeout_s=10.0)
    p.on_session(True, 0.0)
    assert p.tick(MID_SESSION_GRACE_S - 0.01) is Action.NONE
    assert p.tick(MID_SESSION_GRACE_S) is Action.OFFER


def _connected(stall_s: float = 3.0) -> NegotiationPolicy:
    p = NegotiationPolicy(timeout_s=10.0, stall_s=stall_s)
    p.on_session(True, 0.0)
    p.on_remote_offer_received()
    p.on_remote_offer(0.1)
    p.on_connection_state("connected", 1.0)
    return p


def test_a_track_that_stops_is_renegotiated() -> None:
    p = _connected()
    for t in range(10, 50):
        p.on_frame("video", t / 10)
        p.on_frame("audio", t / 10)
    p.on_frame("audio", 6.0)  # the voice goes on, the video stopped at 4.9
    assert p.tick(7.8) is Action.NONE
    assert p.stalled(7.9) == "video"
    assert p.tick(7.9) is Action.OFFER
    assert p.stalls == 1
    p.on_offer_sent(7.9)
    assert p.step is Step.OFFERED


def test_no_frame_at_all_after_connecting_is_a_stall() -> None:
    p = _connected()
    assert p.tick(3.9) is Action.NONE
    assert p.tick(4.0) is Action.OFFER


def test_stall_detection_can_be_off_and_only_applies_when_connected() -> None:
    assert _connected(stall_s=0).tick(100.0) is Action.NONE
    p = NegotiationPolicy(timeout_s=1000.0, stall_s=1.0)
    p.on_session(True, 0.0)
    p.on_remote_offer_received()
    p.on_remote_offer(0.0)
    assert p.stalled(50.0) == ""  # negotiated, not connected: the step's own timeout applies
