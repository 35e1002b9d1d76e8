"""The face detector and the presence decision (agent.video.face), without a bus or a
camera: a real photograph of a face (scikit-image's astronaut, shipped in its wheel) is
found; an empty, a noisy and a too-small scene are not."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agent.video.face import Change, FaceDetector, FacePresence

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    rgb = skimage_data.astronaut()  # bundled in the scikit-image wheel: no download
    return np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), dtype=np.uint8)


def test_astronaut_face_is_found(astronaut: np.ndarray) -> None:
    widths = FaceDetector(min_face_px=60).detect(astronaut)
    assert len(widths) == 1
    assert 80 <= widths[0] <= 130  # her face is about 100 px wide in the 512 px photograph


def test_a_face_below_the_minimum_size_is_ignored(astronaut: np.ndarray) -> None:
    assert FaceDetector(min_face_px=200).detect(astronaut) == []


def test_a_large_frame_is_scaled_down_and_the_width_reported_in_its_pixels(
    astronaut: np.ndarray,
) -> None:
    big = np.asarray(cv2.resize(astronaut, (1536, 1536)), dtype=np.uint8)  # 3x, over max_width
    widths = FaceDetector(min_face_px=200, max_width=640).detect(big)
    assert len(widths) == 1 and 240 <= widths[0] <= 390


@pytest.mark.parametrize("scene", ["black", "grey", "noise"])
def test_an_empty_scene_has_no_face(scene: str) -> None:
    if scene == "noise":
        frame = np.random.default_rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    else:
        frame = np.full((480, 640, 3), 0 if scene == "black" else 128, dtype=np.uint8)
    assert FaceDetector(min_face_px=40).detect(frame) == []


@pytest.mark.parametrize("shape", [(0, 0, 3), (8, 8, 3), (480, 640, 3, 1)])
def test_odd_frames_give_no_face(shape: tuple[int, ...]) -> None:
    assert FaceDetector().detect(np.zeros(shape, dtype=np.uint8)) == []


def test_grey_frames_are_accepted(astronaut: np.ndarray) -> None:
    grey = np.asarray(cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY), dtype=np.uint8)
    assert len(FaceDetector(min_face_px=60).detect(grey)) == 1


def test_seen_after_n_consecutive_frames_then_lost_after_n_without() -> None:
    p = FacePresence(frames_needed=3)
    assert p.feed([100], 0.0) is None
    assert p.feed([100], 0.2) is None
    assert p.feed([120, 90], 0.4) == Change(True, 120, 2, 0.4)
    assert p.seen
    assert p.feed([110], 0.6) is None  # still seen: no news
    assert p.feed([], 0.8) is None
    assert p.feed([], 1.0) is None
    assert p.feed([], 1.2) == Change(False, 0, 0, 1.2)
    assert not p.seen and p.frames == 7


def test_a_broken_run_starts_again() -> None:
    p = FacePresence(frames_needed=3)
    assert [p.feed(w, 0.0) for w in ([90], [90], [], [90], [90])] == [None] * 5
    assert p.feed([90], 1.0) == Change(True, 90, 1, 1.0)
    # a single empty frame (a blink, a turned head) does not lose the face
    assert [p.feed(w, 1.0) for w in ([], [], [90], [], [])] == [None] * 5
    assert p.seen


def test_one_frame_is_enough_when_asked() -> None:
    p = FacePresence(frames_needed=1)
    assert p.feed([90], 0.0) == Change(True, 90, 1, 0.0)
    assert p.feed([], 0.1) == Change(False, 0, 0, 0.1)


def test_after_a_visit_an_empty_scene_is_needed_before_the_next_seen() -> None:
    p = FacePresence(frames_needed=2)
    p.feed([90], 0.0)
    assert p.feed([90], 0.1) is not None
    p.reset(require_absence=True)
    assert not p.seen
    assert [p.feed([90], t) for t in (1.0, 1.1, 1.2, 1.3)] == [None] * 4  # the same guest
    assert [p.feed([], t) for t in (2.0, 2.1)] == [None, None]  # gone: armed again, no news
    assert p.feed([95], 3.0) is None
    assert p.feed([95], 3.1) == Change(True, 95, 1, 3.1)  # the next guest


def test_a_plain_reset_is_armed_at_once() -> None:
    p = FacePresence(frames_needed=1)
    assert p.feed([90], 0.0) is not None
    p.reset()
    assert p.feed([90], 0.1) == Change(True, 90, 1, 0.1)


def test_frames_needed_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FacePresence(frames_needed=0)
