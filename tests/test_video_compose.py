"""The display's sans-I/O model and composer: events in, overlay and pixels out."""

from __future__ import annotations

import numpy as np

from agent.emulator.avatar import AvatarPainter, measure_mouth_open
from agent.video.compose import (
    Badge,
    Composer,
    DisplayModel,
    Overlay,
    Scene,
    fit_aspect,
    start_hint,
)


def live_model() -> DisplayModel:
    m = DisplayModel(caption_hold_s=5.0)
    m.on_session(True, 0.0)
    m.on_video(True, 0.0)
    return m


def test_no_session_is_the_idle_scene() -> None:
    m = DisplayModel()
    assert m.overlay(0.0).scene is Scene.IDLE
    m.on_session(True, 1.0)
    o = m.overlay(1.0)
    assert o.scene is Scene.LIVE and o.badge is Badge.CONNECTING  # no video yet


def test_badge_follows_the_turns() -> None:
    m = live_model()
    assert m.overlay(1.0).badge is Badge.LISTENING
    m.on_guest_speech(True, 1.0)
    assert m.overlay(1.5).badge is Badge.LISTENING
    m.on_guest_speech(False, 2.0)
    assert m.overlay(2.1).badge is Badge.THINKING
    m.on_voice_level(0.2, 3.0)
    assert m.overlay(3.1).badge is Badge.SPEAKING
    assert m.overlay(3.0 + 1.0).badge is Badge.LISTENING  # voice stopped
    m.on_speaker(True, 5.0)
    assert m.overlay(9.0).badge is Badge.SPEAKING  # speaker still playing
    m.on_speaker(False, 9.5)
    m.on_guest_speech(True, 9.6)
    m.on_guest_speech(False, 9.7)
    assert m.overlay(9.8).badge is Badge.THINKING
    assert m.overlay(9.7 + 16).badge is Badge.LISTENING  # thinking times out
    m.on_session(False, 30.0)
    assert m.overlay(30.0).scene is Scene.IDLE


def test_captions_accumulate_and_expire() -> None:
    m = live_model()
    m.on_user_transcript(" I'd like to check in. ", 1.0)
    m.on_assistant_transcript("r1", "Wel", False, 1.5)
    m.on_assistant_transcript("r1", "come!", False, 1.6)
    o = m.overlay(2.0)
    assert o.guest_caption == "I'd like to check in."
    assert o.avatar_caption == "Welcome!"
    m.on_assistant_transcript("r1", "Welcome! Your name?", True, 2.0)
    assert m.overlay(2.0).avatar_caption == "Welcome! Your name?"
    m.on_assistant_transcript("r2", "Thanks", False, 3.0)
    assert m.overlay(3.0).avatar_caption == "Thanks"
    assert m.overlay(6.5).guest_caption == ""  # 5 s hold passed
    assert m.overlay(6.5).avatar_caption == "Thanks"


def test_fit_aspect_letterboxes() -> None:
    assert fit_aspect(512, 512, 1280, 720) == (280, 0, 720, 720)
    assert fit_aspect(1280, 720, 720, 720) == (0, 157, 720, 405)


def test_composer_scales_avatar_with_aspect_and_draws_overlay() -> None:
    c = Composer(1280, 720, captions=True, badge=True)
    avatar = AvatarPainter(512, 512).paint(1.0)
    # .copy(): the composer draws every frame into the same reused buffer
    plain = c.compose(avatar, Overlay(Scene.LIVE, Badge.LISTENING)).copy()
    assert plain.shape == (720, 1280, 3)
    # Bars left and right are the plain background; the avatar fills the middle square.
    assert (plain[100:, 200:270] == plain[100, 200]).all()
    assert plain[100:, 290 : 1270 - 280].std() > 10
    assert measure_mouth_open(plain[:, 280:1000]) > 0.8  # scaled mouth still reads open
    captioned = c.compose(
        avatar, Overlay(Scene.LIVE, Badge.SPEAKING, "hello there", "Welcome to the hotel")
    )
    band = np.abs(captioned[620:].astype(int) - plain[620:].astype(int)).mean()
    assert band > 20  # captions darken and write over the bottom
    badge = np.abs(captioned[:60, :250].astype(int) - plain[:60, :250].astype(int)).sum()
    assert badge > 0  # a different badge state looks different
    off = Composer(1280, 720, captions=False, badge=False)
    bare = off.compose(avatar, Overlay(Scene.LIVE, Badge.SPEAKING, "hello", "hi")).copy()
    assert np.array_equal(
        bare[620:, 300:900],
        off.compose(avatar, Overlay(Scene.LIVE, Badge.LISTENING))[620:, 300:900],
    )


def test_idle_screen_uses_the_image_or_a_placeholder() -> None:
    img = np.zeros((100, 200, 3), np.uint8)
    img[:] = (0, 0, 255)
    with_image = Composer(400, 400, idle_image=img).compose(
        None, Overlay(Scene.IDLE, Badge.CONNECTING)
    )
    assert (with_image[200, 200] == (0, 0, 255)).all()  # centred, aspect kept: 400x200 band
    assert (with_image[50, 200] != (0, 0, 255)).any()
    placeholder = Composer(400, 400).compose(None, Overlay(Scene.IDLE, Badge.CONNECTING))
    assert placeholder.std() > 5  # something is drawn
    waiting = Composer(400, 400).compose(None, Overlay(Scene.LIVE, Badge.CONNECTING))
    assert not np.array_equal(waiting, placeholder)


def test_reused_buffers_compose_the_same_pixels_as_a_fresh_composer() -> None:
    """The composer reuses its canvas, the background and the caption layout between frames;
    every frame must still be exactly what a fresh composer draws for the same input."""
    square = AvatarPainter(512, 512).paint(1.0)
    wide = AvatarPainter(640, 360).paint(0.5)
    steps: list[tuple[np.ndarray | None, Overlay]] = [
        (None, Overlay(Scene.LIVE, Badge.CONNECTING)),  # the placeholder
        (square, Overlay(Scene.LIVE, Badge.LISTENING, "hello there", "")),
        (square, Overlay(Scene.LIVE, Badge.THINKING, "hello there", "")),  # same captions
        (square, Overlay(Scene.LIVE, Badge.SPEAKING, "hello there", "Welcome to " * 12)),
        (square, Overlay(Scene.LIVE, Badge.SPEAKING)),  # captions gone: the bars come back
        (wide, Overlay(Scene.LIVE, Badge.SPEAKING, "", "a new geometry")),
        (wide, Overlay(Scene.LIVE, Badge.LISTENING)),
        (None, Overlay(Scene.IDLE, Badge.CONNECTING)),
        (square, Overlay(Scene.LIVE, Badge.LISTENING, "back", "")),
    ]
    for width, height in ((1280, 720), (512, 512), (480, 800)):
        reused = Composer(width, height)
        for i, (avatar, overlay) in enumerate(steps):
            got = reused.compose(avatar, overlay).copy()
            want = Composer(width, height).compose(avatar, overlay)
            diff = np.argwhere(got != want)
            assert not len(diff), f"{width}x{height} step {i}: {len(diff)} pixels differ"


def test_idle_words_follow_the_visit_and_the_start_triggers() -> None:
    assert start_hint(["always", "button"]) == "Press the button"
    assert start_hint(["voice", "face", "button"]) == (
        "Say hello, look at the screen or press the button"
    )
    assert start_hint(["always"]) == ""
    m = DisplayModel(start_hint=start_hint(["voice", "button"]))
    o = m.overlay(0.0)
    assert (o.idle_title, o.idle_hint) == ("", "")  # no session.state yet: the placeholder
    words = []
    for visit, detail in [
        ("idle", "ready"),
        ("starting", "visit 1 (voice)"),
        ("closing", "idle"),
        ("idle", "budget spent"),
    ]:
        m.on_visit(visit, detail, 1.0)
        o = m.overlay(1.0)
        assert o.scene is Scene.IDLE
        words.append((o.idle_title, o.idle_hint))
    assert words == [
        ("Ready", "Say hello or press the button"),
        ("Connecting...", "One moment, please"),
        ("Goodbye!", ""),
        ("Closed for today", "The session time is used up"),
    ]
    m.on_session(True, 2.0)  # live: the avatar, not the idle words
    assert m.overlay(2.0).scene is Scene.LIVE


def _text_pixels(frame: np.ndarray, top: int) -> int:
    """Bright pixels (text) below row ``top``: the idle screen's band of words."""
    return int((frame[top:].max(axis=2) > 150).sum())


def test_idle_screen_draws_its_words_once_per_change() -> None:
    for image in (None, np.full((90, 160, 3), (0, 90, 0), np.uint8)):
        c = Composer(640, 360, idle_image=image)
        frames = {}
        for title, hint in [
            ("Ready", "Say hello or press the button"),
            ("Connecting...", "One moment, please"),
            ("Closed for today", "The session time is used up"),
        ]:
            overlay = Overlay(Scene.IDLE, Badge.CONNECTING, idle_title=title, idle_hint=hint)
            first = c.compose(None, overlay)
            again = c.compose(None, overlay)
            assert again is first  # nothing changed: the same frame, not drawn again
            assert not first.flags.writeable
            assert _text_pixels(first, 360 * 2 // 3) > 300, title  # words in the bottom band
            frames[title] = first.copy()
            # the words, and only them, differ from the same screen with other words
            other = Composer(640, 360, idle_image=image).compose(
                None, Overlay(Scene.IDLE, Badge.CONNECTING, idle_title="x", idle_hint="y")
            )
            changed = np.argwhere((first != other).any(axis=2))
            assert len(changed) and changed[:, 0].min() >= 360 // 2
            fresh = Composer(640, 360, idle_image=image).compose(None, overlay)
            assert np.array_equal(fresh, first)  # a fresh composer draws the same pixels
        titles = list(frames)
        for i, a in enumerate(titles):
            for b in titles[i + 1 :]:
                assert not np.array_equal(frames[a], frames[b]), (a, b)
        plain = c.compose(None, Overlay(Scene.IDLE, Badge.CONNECTING))  # back to no words
        default = Composer(640, 360, idle_image=image)
        assert np.array_equal(plain, default.compose(None, Overlay(Scene.IDLE, Badge.CONNECTING)))
