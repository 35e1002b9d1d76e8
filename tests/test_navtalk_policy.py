"""The session policy core: events in, actions out; no sockets, no bus, no clock."""

from __future__ import annotations

import pytest

from agent.navtalk.policy import (
    Action,
    Close,
    Command,
    Connect,
    Ended,
    EndKind,
    Face,
    PolicyConfig,
    PublishVisit,
    RequestPreroll,
    SayWrapUp,
    Server,
    ServerKind,
    SessionPolicy,
    Speaker,
    Spent,
    Start,
    Tick,
    Trigger,
    Vad,
    VisitPhase,
)

WRAP = "Say goodbye."


def policy(*triggers: Trigger, **kw: object) -> SessionPolicy:
    cfg = PolicyConfig(triggers=frozenset(triggers), **kw)  # type: ignore[arg-type]
    p = SessionPolicy(cfg)
    assert p.feed(Start(0.0)) == [PublishVisit(VisitPhase.IDLE, "ready")]
    return p


def kinds(actions: list[Action]) -> list[type]:
    return [type(a) for a in actions if not isinstance(a, PublishVisit)]


def engaged(p: SessionPolicy, now: float = 1.0) -> None:
    out = p.feed(Command("start", "test", now))
    assert Connect in kinds(out)
    p.feed(Server(ServerKind.CONNECTED, now))
    p.feed(Server(ServerKind.CREATED, now))
    out = p.feed(Server(ServerKind.UPDATED, now))
    assert out == [PublishVisit(VisitPhase.ENGAGED, f"visit {p.visits}")]


# --- start triggers -----------------------------------------------------------------------------


def test_always_connects_at_start() -> None:
    p = SessionPolicy(PolicyConfig(triggers=frozenset({Trigger.ALWAYS}), preroll_ms=0))
    out = p.feed(Start(0.0))
    assert out == [
        PublishVisit(VisitPhase.STARTING, "visit 1 (always)"),
        Connect(1, Trigger.ALWAYS),
    ]
    assert p.phase is VisitPhase.STARTING


def test_without_always_the_start_is_idle_and_ready() -> None:
    p = policy(Trigger.VOICE)
    assert p.phase is VisitPhase.IDLE and p.visits == 0


def test_voice_onset_asks_for_preroll_then_connects() -> None:
    p = policy(Trigger.VOICE, preroll_ms=800)
    out = p.feed(Vad(True, 5.0))
    assert kinds(out) == [RequestPreroll, Connect]
    assert RequestPreroll(800) in out and Connect(1, Trigger.VOICE) in out
    assert p.phase is VisitPhase.STARTING


def test_voice_offset_and_onsets_while_starting_do_not_connect_twice() -> None:
    p = policy(Trigger.VOICE)
    p.feed(Vad(True, 1.0))
    assert p.feed(Vad(False, 1.5)) == []
    assert p.feed(Vad(True, 2.0)) == []
    assert p.visits == 1


def test_voice_is_not_a_trigger_unless_configured() -> None:
    p = policy(Trigger.BUTTON)
    assert p.feed(Vad(True, 1.0)) == [] and p.phase is VisitPhase.IDLE


def test_voice_onset_while_the_speaker_plays_is_echo_not_a_guest() -> None:
    p = policy(Trigger.VOICE)
    p.feed(Speaker(True, 1.0))
    assert p.feed(Vad(True, 1.1)) == [] and p.ignored == 1
    p.feed(Speaker(False, 2.0))
    assert Connect in kinds(p.feed(Vad(True, 2.1)))


def test_button_starts_and_a_second_start_is_ignored() -> None:
    p = policy(Trigger.BUTTON, preroll_ms=0)
    assert p.feed(Command("start", "", 1.0))[-1] == Connect(1, Trigger.BUTTON)
    assert p.feed(Command("start", "", 1.1)) == [] and p.ignored == 1


def test_button_is_refused_unless_configured() -> None:
    p = policy(Trigger.VOICE)
    assert p.feed(Command("start", "", 1.0)) == [] and p.phase is VisitPhase.IDLE


def test_face_seen_starts_a_visit() -> None:
    p = policy(Trigger.FACE, preroll_ms=0)
    assert kinds(p.feed(Face(True, 1.0))) == [Connect]
    assert p.feed(Face(True, 1.1)) == []


# --- the visit ----------------------------------------------------------------------------------


def test_updated_engages_and_reconnect_keeps_the_visit() -> None:
    p = policy(Trigger.BUTTON)
    engaged(p)
    assert p.feed(Ended(EndKind.RETRYING, "dropped", 2.0)) == []
    assert p.phase is VisitPhase.ENGAGED
    assert p.feed(Server(ServerKind.UPDATED, 2.5)) == []  # engaged already: no new visit
    assert p.phase is VisitPhase.ENGAGED and p.visits == 1


def test_retrying_while_starting_stays_starting() -> None:
    p = policy(Trigger.BUTTON)
    p.feed(Command("start", "", 1.0))
    assert p.feed(Ended(EndKind.RETRYING, "refused", 1.2)) == []
    assert p.phase is VisitPhase.STARTING


def test_failure_goes_back_to_idle_with_the_reason() -> None:
    p = policy(Trigger.BUTTON)
    p.feed(Command("start", "", 1.0))
    out = p.feed(Ended(EndKind.FAILED, "insufficient balance", 1.3))
    assert out == [PublishVisit(VisitPhase.IDLE, "insufficient balance")]
    assert Connect in kinds(p.feed(Command("start", "", 1.4)))  # the next guest may try
    assert p.visits == 2


def test_always_does_not_reconnect_after_a_failure() -> None:
    p = SessionPolicy(PolicyConfig(triggers=frozenset({Trigger.ALWAYS})))
    p.feed(Start(0.0))
    p.feed(Ended(EndKind.FAILED, "license refused", 0.5))
    assert p.feed(Tick(100.0)) == [] and p.phase is VisitPhase.IDLE


# --- end triggers -------------------------------------------------------------------------------


def test_end_closes_at_once_then_idle_when_the_socket_is_closed() -> None:
    p = policy(Trigger.BUTTON)
    engaged(p)
    assert p.feed(Command("end", "bye", 3.0)) == [
        PublishVisit(VisitPhase.CLOSING, "bye"),
        Close("bye"),
    ]
    assert p.feed(Command("end", "again", 3.1)) == []  # closing: one Close only
    assert p.feed(Ended(EndKind.BY_US, "closed by us", 3.2)) == [
        PublishVisit(VisitPhase.IDLE, "ready")
    ]


def test_end_while_starting_closes() -> None:
    p = policy(Trigger.BUTTON)
    p.feed(Command("start", "", 1.0))
    assert kinds(p.feed(Command("end_after_speech", "", 1.1))) == [Close]


def test_end_while_idle_only_republishes() -> None:
    p = policy(Trigger.BUTTON)
    assert p.feed(Command("end", "", 1.0)) == [PublishVisit(VisitPhase.IDLE, "ready")]
    assert p.feed(Command("end_after_speech", "", 1.0)) == [PublishVisit(VisitPhase.IDLE, "ready")]


def test_end_after_speech_waits_for_audio_done_and_a_quiet_speaker() -> None:
    p = policy(Trigger.BUTTON, speech_grace_s=0.3)
    engaged(p)
    out = p.feed(Command("end_after_speech", "guest said goodbye", 2.0))
    assert out == [PublishVisit(VisitPhase.CLOSING, "guest said goodbye")]
    assert p.feed(Tick(3.0)) == []  # no audio.done yet
    p.feed(Speaker(True, 3.1))
    p.feed(Server(ServerKind.AUDIO_DONE, 3.2))
    assert p.feed(Tick(3.4)) == []  # grace
    assert p.feed(Tick(3.6)) == []  # the speaker still plays
    p.feed(Speaker(False, 4.0))
    assert p.feed(Tick(4.1)) == [Close("the last words were said")]
    assert p.feed(Tick(4.2)) == []


def test_closing_gives_up_waiting_after_wrapup_max() -> None:
    p = policy(Trigger.BUTTON, wrapup_max_s=5.0)
    engaged(p)
    p.feed(Command("end_after_speech", "", 2.0))
    assert p.feed(Tick(6.9)) == []
    assert kinds(p.feed(Tick(7.0))) == [Close]


def test_idle_timeout_says_the_wrapup_then_closes() -> None:
    p = policy(Trigger.BUTTON, idle_timeout_s=10.0, wrapup_text=WRAP)
    engaged(p, now=1.0)
    assert p.feed(Tick(10.9)) == []
    out = p.feed(Tick(11.0))
    assert out == [PublishVisit(VisitPhase.CLOSING, "idle"), SayWrapUp(WRAP)]
    p.feed(Server(ServerKind.AUDIO_DONE, 12.0))
    assert p.feed(Tick(12.5)) == [Close("the last words were said")]


def test_a_wrapup_asked_during_a_response_waits_for_its_own_audio_done() -> None:
    p = policy(Trigger.BUTTON, max_session_s=5.0, wrapup_text=WRAP)
    engaged(p, now=0.0)
    p.feed(Server(ServerKind.RESPONDING, 4.5))  # the avatar is answering at the limit
    assert kinds(p.feed(Tick(5.0))) == [SayWrapUp]
    p.feed(Server(ServerKind.AUDIO_DONE, 5.2))  # the answer's end, not the wrap-up's
    assert p.feed(Tick(6.0)) == []
    p.feed(Server(ServerKind.RESPONDING, 6.1))
    p.feed(Server(ServerKind.AUDIO_DONE, 7.0))
    assert kinds(p.feed(Tick(7.4))) == [Close]


def test_speech_keeps_the_visit_alive() -> None:
    p = policy(Trigger.BUTTON, idle_timeout_s=10.0)
    engaged(p, now=1.0)
    p.feed(Server(ServerKind.ACTIVITY, 8.0))
    assert p.feed(Tick(17.0)) == []
    p.feed(Vad(True, 17.5))  # a long utterance: no timeout while the guest speaks
    assert p.feed(Tick(40.0)) == []
    p.feed(Vad(False, 41.0))
    p.feed(Speaker(True, 41.0))
    assert p.feed(Tick(60.0)) == []  # nor while the avatar speaks
    p.feed(Speaker(False, 60.0))
    assert p.feed(Tick(69.9)) == []
    assert kinds(p.feed(Tick(70.0))) == [Close]  # no wrap-up text: closes at once


def test_max_length_wraps_up_even_mid_conversation() -> None:
    p = policy(Trigger.BUTTON, max_session_s=60.0, wrapup_text=WRAP)
    engaged(p, now=0.0)
    p.feed(Vad(True, 59.0))
    assert kinds(p.feed(Tick(60.0))) == [SayWrapUp]
    assert p.feed(Vad(True, 60.5)) == []  # the guest talking does not undo the end
    assert p.feed(Tick(61.0)) == []


def test_max_length_while_never_ready_closes() -> None:
    p = policy(Trigger.BUTTON, max_session_s=5.0, wrapup_text=WRAP)
    p.feed(Command("start", "", 0.0))
    assert kinds(p.feed(Tick(5.0))) == [Close]


def test_face_gone_ends_the_visit() -> None:
    p = policy(Trigger.FACE, face_gone_s=3.0, wrapup_text=WRAP)
    p.feed(Face(True, 0.0))
    p.feed(Server(ServerKind.UPDATED, 0.5))
    p.feed(Face(False, 1.0))
    assert p.feed(Tick(3.9)) == []
    p.feed(Face(True, 3.95))  # back: no end
    assert p.feed(Tick(10.0)) == []
    p.feed(Face(False, 10.0))
    assert kinds(p.feed(Tick(13.0))) == [SayWrapUp]


def test_drop_while_closing_finishes_the_end() -> None:
    p = policy(Trigger.BUTTON, idle_timeout_s=1.0, wrapup_text=WRAP)
    engaged(p, now=0.0)
    p.feed(Tick(1.0))
    assert kinds(p.feed(Ended(EndKind.RETRYING, "dropped", 1.5))) == [Close]
    assert p.feed(Ended(EndKind.BY_US, "", 1.6)) == [PublishVisit(VisitPhase.IDLE, "ready")]


# --- after a visit ------------------------------------------------------------------------------


def test_the_next_guest_after_the_cooldown_gets_a_new_visit() -> None:
    p = policy(Trigger.VOICE, voice_cooldown_s=0.5)
    p.feed(Vad(True, 0.0))
    p.feed(Server(ServerKind.UPDATED, 0.5))
    p.feed(Command("end", "", 2.0))
    p.feed(Ended(EndKind.BY_US, "", 2.1))
    assert p.feed(Vad(True, 2.3)) == [] and p.phase is VisitPhase.IDLE  # the goodbye's echo
    out = p.feed(Vad(True, 2.7))
    assert Connect(2, Trigger.VOICE) in out


@pytest.mark.parametrize(
    "event",
    [
        Server(ServerKind.CONNECTED, 1.0),
        Server(ServerKind.UPDATED, 1.0),
        Server(ServerKind.AUDIO_DONE, 1.0),
        Ended(EndKind.BY_US, "", 1.0),
        Ended(EndKind.RETRYING, "", 1.0),
        Ended(EndKind.FAILED, "", 1.0),
        Tick(1.0),
        Speaker(True, 1.0),
        Face(False, 1.0),
        Vad(False, 1.0),
    ],
)
def test_events_while_idle_change_nothing(event: object) -> None:
    p = policy(Trigger.BUTTON)
    assert p.feed(event) == []  # type: ignore[arg-type]
    assert p.phase is VisitPhase.IDLE and p.visits == 0


def test_late_events_of_a_closed_visit_do_not_revive_it() -> None:
    p = policy(Trigger.BUTTON, idle_timeout_s=1.0)
    engaged(p)
    p.feed(Command("end", "", 2.0))
    p.feed(Ended(EndKind.BY_US, "", 2.1))
    assert p.feed(Server(ServerKind.UPDATED, 2.2)) == []
    assert p.feed(Tick(50.0)) == [] and p.phase is VisitPhase.IDLE


# --- budget -------------------------------------------------------------------------------------


def test_a_spent_budget_refuses_every_trigger_until_a_new_day() -> None:
    p = SessionPolicy(PolicyConfig(triggers=frozenset(Trigger)))
    assert p.feed(Spent(True, 0.0)) == [PublishVisit(VisitPhase.IDLE, "budget spent")]
    assert p.feed(Start(0.0)) == [PublishVisit(VisitPhase.IDLE, "budget spent")]
    for event in (Vad(True, 1.0), Face(True, 1.0), Command("start", "", 1.0)):
        assert kinds(p.feed(event)) == [] and p.phase is VisitPhase.IDLE
    assert p.visits == 0
    assert p.feed(Spent(False, 2.0)) == [PublishVisit(VisitPhase.IDLE, "ready")]
    assert Connect in kinds(p.feed(Command("start", "", 2.1)))


def test_budget_spent_mid_visit_wraps_up_then_stays_idle() -> None:
    p = policy(Trigger.BUTTON, wrapup_text=WRAP)
    engaged(p)
    assert kinds(p.feed(Spent(True, 5.0))) == [SayWrapUp]
    p.feed(Server(ServerKind.AUDIO_DONE, 6.0))
    assert kinds(p.feed(Tick(6.5))) == [Close]
    out = p.feed(Ended(EndKind.BY_US, "", 6.6))
    assert out == [PublishVisit(VisitPhase.IDLE, "budget spent")]


def test_budget_spent_while_starting_closes() -> None:
    p = policy(Trigger.BUTTON)
    p.feed(Command("start", "", 1.0))
    assert kinds(p.feed(Spent(True, 1.1))) == [Close]
