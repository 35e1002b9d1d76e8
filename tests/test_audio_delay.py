"""The reference -> mic delay estimator (GCC-PHAT), on synthetic delays of 5-150 ms."""

from __future__ import annotations

import numpy as np
import pytest

from agent.audio.delay import DelayEstimator, gcc_phat

RATE = 24_000
FRAME = 480


def _voice_like(seconds: float, seed: int) -> np.ndarray:
    """Seeded noise shaped by a syllable-rate envelope: speech-like, not periodic."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    noise = rng.normal(0.0, 0.1, n)
    syllables = np.repeat(rng.uniform(0.0, 1.0, n // 2400 + 1), 2400)[:n]
    # a little colouring: a two-tap smoother, so the spectrum is not white
    shaped = np.convolve(noise * syllables, [0.6, 0.4], mode="same")
    return shaped.astype(np.float32)


def _feed(est: DelayEstimator, ref: np.ndarray, mic: np.ndarray) -> None:
    for i in range(0, len(ref) - FRAME + 1, FRAME):
        est.feed(mic[i : i + FRAME], ref[i : i + FRAME])


def _delayed(x: np.ndarray, delay: int, gain: float, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.concatenate((np.zeros(delay, np.float32), x))[: len(x)] * gain
    return (y + rng.normal(0.0, noise, len(x))).astype(np.float32)


@pytest.mark.parametrize("delay_ms", [5, 12, 37, 80, 150])
def test_finds_a_pure_delay(delay_ms: int) -> None:
    ref = _voice_like(2.0, seed=delay_ms)
    d = delay_ms * RATE // 1000
    mic = _delayed(ref, d, gain=0.5, noise=0.003, seed=1)
    est = DelayEstimator()
    _feed(est, ref, mic)
    assert est.delay_samples == d
    assert est.delay_ms == pytest.approx(delay_ms, abs=0.05)


def test_finds_the_direct_path_under_reverberation() -> None:
    """Echo = direct path + an exponentially decaying diffuse tail (RT60 ~0.5 s)."""
    rng = np.random.default_rng(7)
    n_tail = RATE // 2
    tail = rng.normal(0.0, 1.0, n_tail) * np.exp(-np.arange(n_tail) * 6.9 / n_tail) * 0.05
    h = np.concatenate(([1.0], tail)).astype(np.float32)
    ref = _voice_like(3.0, seed=3)
    echo = np.convolve(ref, h)[: len(ref)].astype(np.float32)
    d = 63 * RATE // 1000
    mic = _delayed(echo, d, gain=0.4, noise=0.002, seed=2)
    est = DelayEstimator()
    _feed(est, ref, mic)
    assert est.delay_samples == d


def test_tracks_a_change_but_not_a_single_outlier() -> None:
    ref = _voice_like(6.0, seed=11)
    first, second = 40 * RATE // 1000, 120 * RATE // 1000
    half = len(ref) // 2
    mic = np.concatenate(
        (
            _delayed(ref, first, 0.5, 0.003, seed=4)[:half],
            _delayed(ref, second, 0.5, 0.003, seed=5)[half:],
        )
    )
    est = DelayEstimator()
    _feed(est, ref[:half], mic[:half])
    assert est.delay_samples == first
    _feed(est, ref[half:], mic[half:])
    assert est.delay_samples == second
    assert est.changes == 2


def test_silent_reference_or_uncorrelated_mic_leaves_the_delay() -> None:
    ref = _voice_like(2.0, seed=21)
    d = 25 * RATE // 1000
    est = DelayEstimator()
    _feed(est, ref, _delayed(ref, d, 0.5, 0.003, seed=6))
    assert est.delay_samples == d
    # the avatar falls silent: once its last words left the window, nothing is estimated
    _feed(est, np.zeros(RATE * 3 // 2, np.float32), _voice_like(1.5, seed=22))
    made = est.estimates
    _feed(est, np.zeros(2 * RATE, np.float32), _voice_like(2.0, seed=25))
    assert est.estimates == made
    # the avatar talks but the mic hears only the guest (no echo path): no lock moves
    _feed(est, _voice_like(3.0, seed=23), _voice_like(3.0, seed=24))
    assert est.estimates > made
    assert est.delay_samples == d


def test_gcc_phat_peak_ratio_separates_echo_from_noise() -> None:
    rng = np.random.default_rng(0)
    x = _voice_like(1.0, seed=31)
    lag, ratio = gcc_phat(_delayed(x, 100, 0.5, 0.003, seed=7), x, 2400)
    assert lag == 100 and ratio > 30
    _lag, noise_ratio = gcc_phat(rng.normal(0, 0.1, len(x)).astype(np.float32), x, 2400)
    assert noise_ratio < 8


def test_blocks_of_different_length_are_refused() -> None:
    est = DelayEstimator()
    with pytest.raises(ValueError, match="differ in length"):
        est.feed(np.zeros(480, np.float32), np.zeros(240, np.float32))
