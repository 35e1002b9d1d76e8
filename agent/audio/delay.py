"""How late the echo arrives: the delay between the played reference and the mic, tracked.

The mic's :class:`~agent.audio.echo.ReferenceBuffer` lines the reference up with each mic frame
by the speaker's play stamps, but the echo still arrives later by the converters, the
stamping error and the acoustic path (5-150 ms and more). An echo canceller's adaptive filter
only covers a few hundred milliseconds, so the reference is shifted by this estimate first.

Estimator: GCC-PHAT (generalized cross-correlation with phase transform) between the last
``window_ms`` of reference and mic, every ``update_ms`` until a delay is locked, then every
``locked_update_ms`` (an estimate costs ~5 ms of CPU: 3 FFTs of 64 k points)::

    R(f) = M(f) · conj(X(f)) / |M(f) · conj(X(f))|^beta      lag = argmax irfft(R)

PHAT whitens the spectra, so the peak is the direct path's arrival (sharp) rather than the
speech's own autocorrelation (broad); ``beta`` < 1 (PHAT-beta) keeps bins with no reference
energy from flattening the peak. An estimate is taken only when the reference carried sound
over the window and the peak stands out of the correlation's spread (``min_peak_ratio``); a
new delay replaces the tracked one when two estimates in a row agree on it, so a single
spurious peak (the guest talking over the avatar) does not move it.

Sans-I/O: blocks of samples in, the tracked delay out; no clock.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

__all__ = ["DelayEstimator", "gcc_phat"]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]


def gcc_phat(
    mic: FloatArray, ref: FloatArray, max_lag: int, *, beta: float = 0.8
) -> tuple[int, float]:
    """(lag, peak ratio) of ``mic`` behind ``ref`` in ``0..max_lag`` samples.

    ``mic`` and ``ref`` cover the same span of time (same length): ``mic[i] ~ ref[i - lag]``.

    The peak ratio is the correlation peak over the mean absolute correlation of the searched
    lags: a clear echo path gives tens, noise gives a few.
    """
    n = 2 * len(mic)  # zero-padded: no circular wrap of the searched lags
    nfft = 1 << (n - 1).bit_length()
    m = np.fft.rfft(mic.astype(np.float64), nfft)
    x = np.fft.rfft(ref.astype(np.float64), nfft)
    cross = m * np.conj(x)
    cross /= np.abs(cross) ** beta + 1e-12
    cc = np.fft.irfft(cross, nfft)[: max_lag + 1]
    mag = np.abs(cc)
    lag = int(np.argmax(mag))
    spread = float(mag.mean()) + 1e-12
    return lag, float(mag[lag]) / spread


class DelayEstimator:
    """Tracks the reference -> mic delay; see the module docstring."""

    def __init__(
        self,
        *,
        sample_rate_hz: int = 24_000,
        max_delay_ms: int = 300,
        window_ms: int = 1000,
        update_ms: int = 250,
        locked_update_ms: int = 1000,
        min_window_ms: int = 500,
        min_ref_rms: float = 3e-3,
        min_peak_ratio: float = 12.0,
        agree_ms: float = 2.0,
    ):
        self._rate = sample_rate_hz
        self.max_lag = sample_rate_hz * max_delay_ms // 1000
        self._window = sample_rate_hz * window_ms // 1000
        self._update = sample_rate_hz * update_ms // 1000
        self._locked_update = sample_rate_hz * locked_update_ms // 1000
        self._min_ref_rms = min_ref_rms
        self._min_peak_ratio = min_peak_ratio
        self._agree = max(1, round(sample_rate_hz * agree_ms / 1000))
        # the reference is kept max_lag longer than the mic: a lag of max_lag still overlaps
        self._ref = np.zeros(self._window + self.max_lag, np.float32)
        self._mic = np.zeros(self._window, np.float32)
        # the first estimate comes once min_window_ms of mic could match any searched lag
        self._min_fill = min(len(self._ref), self.max_lag + sample_rate_hz * min_window_ms // 1000)
        self._filled = 0
        self._since_update = 0
        self._candidate: int | None = None
        self.delay_samples: int | None = None  # the tracked delay; None until the first lock
        self.peak_ratio = 0.0  # of the latest estimate
        self.estimates = 0  # estimates made (windows with enough reference)
        self.changes = 0  # times the tracked delay changed

    @property
    def delay_ms(self) -> float | None:
        d = self.delay_samples
        return None if d is None else d * 1000 / self._rate

    def feed(self, mic: FloatArray, ref: FloatArray) -> int | None:
        """One block of mic and the reference lined up with it (same length); the delay."""
        if len(mic) != len(ref):
            raise ValueError(f"mic and reference differ in length: {len(mic)} != {len(ref)}")
        n = len(mic)
        if n >= len(self._mic):
            self._mic[:] = mic[-len(self._mic) :]
        else:
            self._mic[:-n] = self._mic[n:]
            self._mic[-n:] = mic
        if n >= len(self._ref):
            self._ref[:] = ref[-len(self._ref) :]
        else:
            self._ref[:-n] = self._ref[n:]
            self._ref[-n:] = ref
        self._filled += n
        self._since_update += n
        period = self._update if self.delay_samples is None else self._locked_update
        if self._filled >= self._min_fill and self._since_update >= period:
            self._since_update = 0
            self._estimate()
        return self.delay_samples

    def _estimate(self) -> None:
        k = min(self._filled, len(self._ref))  # until the window is full, what there is
        ref = self._ref[-k:]
        if float(np.sqrt(np.mean(np.square(ref)))) < self._min_ref_rms:
            return  # the avatar was (mostly) silent: nothing to correlate
        # Both end now; the mic window is padded in front to the reference's length, so that
        # mic[i] ~ ref[i - d] and the echo delay d shows as the correlation lag d.
        mic = np.concatenate((np.zeros(self.max_lag, np.float32), self._mic[-(k - self.max_lag) :]))
        delay, ratio = gcc_phat(mic, ref, self.max_lag)
        self.estimates += 1
        self.peak_ratio = ratio
        if ratio >= self._min_peak_ratio:
            self._track(delay)

    def _track(self, delay: int) -> None:
        current = self.delay_samples
        if current is not None and abs(delay - current) <= self._agree:
            self._candidate = None
            return
        if self._candidate is None or abs(delay - self._candidate) > self._agree:
            self._candidate = delay
            if current is not None:
                return  # a locked delay moves only when two estimates agree
        self._candidate = None
        log.info(
            "= echo delay %s -> %.1f ms (peak ratio %.1f)",
            "none" if current is None else f"{current * 1000 / self._rate:.1f} ms",
            delay * 1000 / self._rate,
            self.peak_ratio,
        )
        self.delay_samples = delay
        self.changes += 1
