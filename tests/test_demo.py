"""The demo's live view: what ends a conversation, and text shown as text."""

from __future__ import annotations

from rich.console import Console

from agent.apps.demo import (
    GUEST_TIMELINE,
    ROOT,
    SECOND_GUEST,
    SECOND_GUEST_TIMELINE,
    View,
    paced_starts,
    script_lines,
)
from agent.messages import SessionPhase, SessionState, ToolCall, UserTranscript


def test_a_drop_is_not_the_end_but_idle_after_ready_is() -> None:
    v = View()
    v.feed(SessionState(phase=SessionPhase.IDLE))
    assert not v.ended, "idle before the conversation started"
    v.feed(SessionState(phase=SessionPhase.READY))
    v.feed(SessionState(phase=SessionPhase.CLOSED, detail="connection dropped"))
    assert not v.ended, "a drop is followed by a reconnect"
    v.feed(SessionState(phase=SessionPhase.IDLE, detail="session ended"))
    assert v.ended


def test_transcripts_and_tool_calls_are_not_rich_markup() -> None:
    v = View()
    v.feed(UserTranscript(text="say [bold]x[/] now"))
    v.feed(ToolCall(call_id="c", name="t", arguments_json='{"a": [1]}'))
    console = Console(width=80, record=True)
    console.print(v.render())
    text = console.export_text()
    assert "say [bold]x[/] now" in text
    assert '{"a": [1]}' in text


def test_the_demo_script_and_timeline_agree() -> None:
    lines = script_lines(ROOT / "config" / "scripts" / "demo.toml")
    assert len(lines) == len(GUEST_TIMELINE)
    assert list(GUEST_TIMELINE) == sorted(GUEST_TIMELINE)
    # guest B: lines the emulator knows, after A's goodbye and a pause of several seconds
    assert set(SECOND_GUEST) <= set(lines)
    assert len(SECOND_GUEST) == len(SECOND_GUEST_TIMELINE)
    assert SECOND_GUEST_TIMELINE[0] - GUEST_TIMELINE[-1] >= 12.0
    assert list(SECOND_GUEST_TIMELINE) == sorted(SECOND_GUEST_TIMELINE)


def test_two_visits_end_the_demo_only_after_the_second() -> None:
    v = View(visits=2)
    for _ in range(2):
        assert not v.ended
        v.feed(SessionState(phase=SessionPhase.IDLE))  # waiting for the guest: no end
        assert not v.ended
        v.feed(SessionState(phase=SessionPhase.READY))
        v.feed(SessionState(phase=SessionPhase.IDLE, detail="session ended"))
    assert v.ended and v.visits_ended == 2


def test_paced_starts_pause_before_the_second_guest() -> None:
    starts = paced_starts([1.0, 1.0, 1.0], pause_before=2)
    plain = paced_starts([1.0, 1.0, 1.0])
    assert starts[:2] == plain[:2]
    assert starts[2] > plain[2]


def test_a_barge_in_closes_the_interrupted_answer() -> None:
    from agent.messages import AssistantTranscript, BargeIn

    v = View()
    v.feed(AssistantTranscript(response_id="r1", text="Our hotel opened ", final=False))
    v.feed(AssistantTranscript(response_id="r1", text="in 1928.", final=False))
    v.feed(BargeIn())
    assert v.transcript == [("avatar", "Our hotel opened in 1928. … (interrupted)")]
    assert v.partial == {} and v.barge_ins == 1


def test_the_guest_speaking_to_a_quiet_avatar_is_no_interruption() -> None:
    """The session sends control.barge_in whenever the guest starts to speak."""
    from agent.messages import AssistantTranscript, BargeIn, SpeakerState

    v = View()
    v.feed(AssistantTranscript(response_id="r1", text="Hello.", final=True))
    v.feed(SpeakerState(playing=False))
    assert v.feed(BargeIn()) is None and v.barge_ins == 0
    v.feed(SpeakerState(playing=True))  # still talking (its transcript is done before)
    assert v.feed(BargeIn()) == "barge-in: the guest interrupted; playback flushed"
    assert v.barge_ins == 1
