"""Probabilistic forecast metrics, vectorised numpy.

Conventions: ``y`` has shape ``(N,)``; ``samples`` ``(K, N)`` (K draws from the predictive
distribution of each of N targets); ``quantiles`` ``(Q, N)`` at ``levels`` ``(Q,)``;
``lower``/``upper`` ``(N,)``. All metrics are in the target's units unless named ``scaled``.
"""

from __future__ import annotations

import numpy as np

from pipeline_lib.contract import CRPS_LEVELS, sample_quantiles


def interval_from_samples(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Central ``level`` interval of the sampled predictive distribution."""
    alpha = 1.0 - level
    lower, upper = sample_quantiles(samples, [alpha / 2, 1 - alpha / 2], axis=0)
    return lower, upper


def inside_interval(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Whether each target lies in its interval ``[lower, upper]``, bounds included (an
    integer actual equal to a bound is covered); arrays broadcast. The one definition of
    "covered" behind every coverage number: PICP, the daily PIC, calibration curves."""
    return (np.asarray(y, dtype=float) >= np.asarray(lower)) & (np.asarray(y, dtype=float) <= np.asarray(upper))


def prediction_interval_coverage(y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """PICP: share of targets inside ``[lower, upper]`` (bounds included)."""
    return float(np.mean(inside_interval(y, lower, upper)))


def mean_interval_width(lower: np.ndarray, upper: np.ndarray) -> float:
    """MPIW in units."""
    return float(np.mean(np.asarray(upper) - np.asarray(lower)))


def interval_score(y: np.ndarray, lower: np.ndarray, upper: np.ndarray, level: float) -> float:
    """Winkler / interval score (Gneiting & Raftery 2007, eq. 43), mean over targets."""
    alpha = 1.0 - level
    y = np.asarray(y, dtype=float)
    score = (upper - lower) + (2 / alpha) * (lower - y) * (y < lower) + (2 / alpha) * (y - upper) * (y > upper)
    return float(np.mean(score))


def crps_from_samples(y: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Fair (unbiased) CRPS estimator per target, ``(N,)``.

    ``E|X - y| - 1/(2 K (K-1)) sum_{i,j} |X_i - X_j|``, with the pair sum computed in
    ``O(K log K)`` from sorted samples: ``sum_{i<j} (x_(j) - x_(i)) = sum_j (2j - K - 1) x_(j)``.
    """
    samples = np.asarray(samples, dtype=float)
    k = samples.shape[0]
    if k < 2:
        raise ValueError("the fair CRPS needs at least two samples")
    first = np.mean(np.abs(samples - np.asarray(y, dtype=float)[None, :]), axis=0)
    ordered = np.sort(samples, axis=0)
    weights = (2 * np.arange(1, k + 1) - k - 1)[:, None]
    pair_sum = np.sum(weights * ordered, axis=0)  # sum over i<j of |x_i - x_j|
    return first - pair_sum / (k * (k - 1))


def pinball_loss(y: np.ndarray, quantiles: np.ndarray, levels) -> np.ndarray:
    """Quantile (pinball) loss ``(Q, N)``: ``max(tau (y - q), (tau - 1) (y - q))``."""
    tau = np.asarray(levels, dtype=float)[:, None]
    diff = np.asarray(y, dtype=float)[None, :] - quantiles
    return np.maximum(tau * diff, (tau - 1) * diff)


def crps_from_quantiles(y: np.ndarray, quantiles: np.ndarray, levels) -> np.ndarray:
    """Quantile-based CRPS approximation per target: ``2 * mean_tau pinball``, ``(N,)``."""
    return 2.0 * pinball_loss(y, quantiles, levels).mean(axis=0)


def coverage_by_horizon(y: np.ndarray, lower: np.ndarray, upper: np.ndarray, horizon: np.ndarray) -> dict[int, float]:
    """PICP per forecast horizon (days ahead): ``{h: coverage}`` for each distinct ``h``."""
    inside = inside_interval(y, lower, upper)
    horizon = np.asarray(horizon)
    return {int(h): float(inside[horizon == h].mean()) for h in np.unique(horizon)}


def seasonal_naive_scale(history: np.ndarray, period: int = 7) -> float:
    """In-sample mean absolute seasonal difference of one series (MASE/SPL denominator).

    Falls back to the non-seasonal difference, then to 1, when the history is too short
    or constant, so a scaled metric is always finite.
    """
    history = np.asarray(history, dtype=float)
    for lag in (period, 1):
        if len(history) > lag:
            scale = float(np.mean(np.abs(history[lag:] - history[:-lag])))
            if scale > 0:
                return scale
    return 1.0


def seasonal_naive_scales(targets, ends) -> np.ndarray:
    """:func:`seasonal_naive_scale` of each series' history before its first forecast day:
    ``targets`` one array per series, ``ends`` ``(S,)`` the index of that day. ``(S,)``."""
    return np.array([seasonal_naive_scale(np.asarray(t)[:end]) for t, end in zip(targets, ends, strict=True)])


def means_by_series(values: np.ndarray, series_index: np.ndarray) -> np.ndarray:
    """Mean of ``values`` ``(N,)`` within each series that has any, ``(S,)`` in index order."""
    sums = np.bincount(series_index, weights=values)
    counts = np.bincount(series_index)
    present = counts > 0
    return sums[present] / counts[present]


def mean_over_series(values: np.ndarray, series_index: np.ndarray) -> float:
    """Mean within each series, then over series (every series weighs the same, as in M5)."""
    return float(np.mean(means_by_series(values, series_index)))


def scaled_crps(y: np.ndarray, quantiles: np.ndarray, series_index: np.ndarray, series_scales: np.ndarray) -> float:
    """The project's one "scaled CRPS" (the promotion gate's, the backtests', the online
    update's check): the quantile CRPS at the 23 ``CRPS_LEVELS`` of each target, divided by
    its series' seasonal-naive scale, averaged within each series, then over series.

    ``quantiles`` ``(23, N)`` at ``CRPS_LEVELS``; ``series_index`` ``(N,)`` ints;
    ``series_scales`` ``(S,)`` indexed by ``series_index``.
    """
    per_target = crps_from_quantiles(y, quantiles, CRPS_LEVELS)
    return mean_over_series(per_target / np.asarray(series_scales, dtype=float)[series_index], series_index)


def mae(y: np.ndarray, point: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y, dtype=float) - point)))


def rmse(y: np.ndarray, point: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(y, dtype=float) - point) ** 2)))


def probability_integral_transform(y: np.ndarray, samples: np.ndarray,
                                   rng: np.random.Generator | None = None) -> np.ndarray:
    """Randomised PIT values ``(N,)``: uniform on [0, 1] for a calibrated forecast.

    Ties (e.g. many predictive samples exactly 0 for a closed day) are broken uniformly,
    as is standard for discrete predictive distributions.
    """
    rng = rng or np.random.default_rng(0)
    y = np.asarray(y, dtype=float)[None, :]
    below = np.mean(samples < y, axis=0)
    equal = np.mean(samples == y, axis=0)
    return below + equal * rng.uniform(size=below.shape)


def randomised_coverage(pit: np.ndarray, level: float) -> float:
    """Coverage of the central ``level`` interval judged by the randomised PIT: the share of
    ``pit`` values in ``((1 - level) / 2, (1 + level) / 2]``. For a calibrated forecast it is
    ``level`` in expectation, discrete or not; inclusive intervals of whole units
    (:func:`prediction_interval_coverage`) cover more than ``level`` even for the true
    distribution of a count, because an actual on a bound counts as covered in full."""
    pit = np.asarray(pit, dtype=float)
    return float(np.mean((pit > (1.0 - level) / 2) & (pit <= (1.0 + level) / 2)))


CALIBRATION_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 5%, 10%, .., 95% central intervals


def calibration_curve(y: np.ndarray, samples: np.ndarray,
                      levels=CALIBRATION_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """Observed coverage of central intervals at nominal ``levels``: ``(nominal, observed)``."""
    nominal = np.asarray(levels, dtype=float)
    lower = sample_quantiles(samples, (1 - nominal) / 2, axis=0)
    upper = sample_quantiles(samples, (1 + nominal) / 2, axis=0)
    observed = np.mean(inside_interval(np.asarray(y, dtype=float)[None, :], lower, upper), axis=1)
    return nominal, observed


def pit_calibration_error(pit: np.ndarray, levels=None) -> float:
    """Mean absolute gap ``|P(PIT <= tau) - tau|`` over ``levels`` (default: the 23 CRPS
    levels): one number for the calibration of every quantile a forecast publishes.

    Use the randomised PIT (:func:`probability_integral_transform`) for integer demand:
    it is uniform for a calibrated discrete forecast, where interval coverage is not (an
    interval that starts at 0 covers a zero day whatever its width).
    """
    tau = np.asarray(CRPS_LEVELS if levels is None else levels, dtype=float)
    pit = np.sort(np.asarray(pit, dtype=float))
    observed = np.searchsorted(pit, tau, side="right") / len(pit)
    return float(np.mean(np.abs(observed - tau)))


def calibration_error(nominal: np.ndarray, observed: np.ndarray) -> float:
    """Mean absolute gap between observed and nominal coverage."""
    return float(np.mean(np.abs(np.asarray(observed) - np.asarray(nominal))))
