"""Calibration correction: quantile recalibration, i.e. split conformal on the probability scale.

On a held-out calibration split (the validation days) we collect the PIT values
``u_i = F_i(y_i)`` of the actuals under the model's predictive distributions. If the model
is calibrated they are uniform; if its intervals are too wide they crowd around 0.5. The
map ``R(tau) = empirical tau-quantile of the PIT values`` sends a nominal level to the level
of the raw predictive distribution that was exceeded with frequency ``tau`` on the
calibration split, so ``Q_raw(R(tau))`` is a calibrated ``tau``-quantile (Kuleshov et al.,
2018; the conformal guarantee holds marginally, for exchangeable calibration and test days).

``R`` is monotone, so corrected quantiles never cross, and it wraps any model that
produces predictive samples.

A remap of ``K`` samples cannot reach beyond their range: an actual above every sample has
PIT 1, which says "above", not how far, and a level whose calibrated quantile lies beyond the
largest sample reads the largest sample. With ``tails`` the sample distribution of each
forecast gets exponential tails beyond its extreme samples (:func:`recalibration_pit`), so
the PIT of such an actual records how far out it fell and the recalibrated top (and bottom)
levels extrapolate by as much as the calibration days needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline_lib.contract import sample_quantiles
from pipeline_lib.evaluation.metrics import probability_integral_transform

TAIL_SHARE = 0.1  # the share of samples at each end whose spread sets a tail's scale
MAX_TAIL_MULTIPLE = 10.0  # the farthest extrapolation, in tail scales beyond the extreme sample


def tail_scales(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scales ``(N,)`` of the upper and lower exponential tails of sorted samples ``(K, N)``.

    The extreme sample sits at the Hazen level ``(K - 1/2) / K`` and the ``m``-th from the
    end at ``(K - m - 1/2) / K``; an exponential tail ``Q(p) = x_(K) + b ln((1/2K) / (1 - p))``
    through both has ``b = (x_(K) - x_(K-m)) / ln(2m + 1)``, with ``m`` the outer 10% of the
    samples. Where those are tied (a count forecast's top tenth all 3 units) the whole range
    sets the scale; a constant forecast has none (0): it does not extrapolate.
    """
    k = ordered.shape[0]
    m = min(max(1, round(TAIL_SHARE * k)), k - 1)
    whole = (ordered[-1] - ordered[0]) / np.log(2 * k - 1)
    upper = (ordered[-1] - ordered[-1 - m]) / np.log(2 * m + 1)
    lower = (ordered[m] - ordered[0]) / np.log(2 * m + 1)
    return np.where(upper > 0, upper, whole), np.where(lower > 0, lower, whole)


def recalibration_pit(y: np.ndarray, samples: np.ndarray, tails: bool,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """PIT values ``(N,)`` of actuals ``(N,)`` under samples ``(K, N)``, for fitting a
    recalibration: the randomised PIT, with ``tails`` continued beyond the extreme samples by
    :func:`tail_scales`' exponential tails (an actual ``d`` above the largest sample has PIT
    ``1 - exp(-d / b) / 2K`` instead of 1), which :meth:`PitRecalibration.apply` inverts."""
    pit = probability_integral_transform(y, samples, rng)
    if not tails:
        return pit
    ordered = np.sort(samples, axis=0)
    upper, lower = tail_scales(ordered)
    y = np.asarray(y, dtype=float)
    half = 0.5 / samples.shape[0]
    beyond_top = np.divide(np.maximum(y - ordered[-1], 0.0), upper, out=np.zeros_like(y), where=upper > 0)
    beyond_bottom = np.divide(np.maximum(ordered[0] - y, 0.0), lower, out=np.zeros_like(y), where=lower > 0)
    # Ties with an extreme sample (count forecasts) keep their randomised share of the step,
    # shrunk so the tail's 1 / 2K beyond it stays the tail's.
    below_top = np.mean(ordered < y, axis=0)  # < 1 wherever y is the top sample
    at_top = (y == ordered[-1]) & (upper > 0)
    shrink = np.divide(1.0 - half - below_top, 1.0 - below_top, out=np.ones_like(y), where=at_top)
    pit = np.where(at_top, below_top + (pit - below_top) * shrink, pit)
    at_bottom = (y == ordered[0]) & (lower > 0)
    tied = np.maximum(np.mean(ordered == y, axis=0), half)
    pit = np.where(at_bottom, half + pit * (1.0 - half / tied), pit)
    pit = np.where((y > ordered[-1]) & (upper > 0), 1.0 - half * np.exp(-beyond_top), pit)
    return np.where((y < ordered[0]) & (lower > 0), half * np.exp(-beyond_bottom), pit)


@dataclass(frozen=True)
class PitRecalibration:
    """``levels[j] = R(j / (G - 1))`` on a uniform grid of ``G`` points, ``R(0) = 0, R(1) = 1``;
    ``tails``: fitted on :func:`recalibration_pit` with tails, so levels beyond the extreme
    samples' extrapolate."""

    levels: tuple[float, ...]
    n_calibration: int
    tails: bool = False

    @classmethod
    def fit(cls, pit_values: np.ndarray, grid_size: int = 201, tails: bool = False) -> PitRecalibration:
        pit = np.asarray(pit_values, dtype=float)
        pit = pit[np.isfinite(pit)]
        if len(pit) < 20:
            raise ValueError(f"recalibration needs at least 20 calibration points, got {len(pit)}")
        grid = np.linspace(0.0, 1.0, grid_size)
        levels = np.quantile(pit, grid)
        levels[0], levels[-1] = 0.0, 1.0
        return cls(levels=tuple(np.maximum.accumulate(levels).tolist()), n_calibration=len(pit), tails=tails)

    @classmethod
    def from_dict(cls, raw: dict) -> PitRecalibration:
        """From ``vars()`` of one (files written before tails existed have none)."""
        return cls(tuple(raw["levels"]), raw["n_calibration"], bool(raw.get("tails", False)))

    @classmethod
    def identity(cls) -> PitRecalibration:
        return cls(levels=(0.0, 1.0), n_calibration=0)

    def level(self, tau: np.ndarray) -> np.ndarray:
        """``R(tau)``: the raw predictive level to read for nominal level ``tau``."""
        grid = np.linspace(0.0, 1.0, len(self.levels))
        return np.interp(tau, grid, self.levels)

    def saturation_level(self) -> float:
        """The lowest nominal level whose recalibrated quantile is the largest raw sample: from
        there up every level reads the same value, because the calibration days' actuals fell
        above all samples more often than ``1 - level`` (a PIT of 1 says "above", not how far).
        1.0 when only level 1 does. With ``tails`` only actuals above constant forecasts have
        PIT 1; the level from which every sample reads the farthest extrapolation."""
        levels = np.asarray(self.levels)
        top = int(np.argmax(levels >= 1.0))  # levels end with 1.0
        return float(np.linspace(0.0, 1.0, len(levels))[top])

    def apply(self, samples: np.ndarray) -> np.ndarray:
        """Recalibrated samples ``(K, N)`` from raw samples ``(K, N)``.

        Each sample keeps its rank within its column, so joint sample paths (columns of the
        same series on consecutive days) keep their dependence; only the marginal of every
        column is remapped: the sample of rank ``k`` becomes the raw quantile at
        ``R((k + 0.5) / K)``.
        """
        k = samples.shape[0]
        ranks = np.argsort(np.argsort(samples, axis=0, kind="stable"), axis=0, kind="stable")
        targets = self.level((np.arange(k) + 0.5) / k)  # (K,) non-decreasing
        # Resampling at the K mid-levels (k + 0.5) / K: the Hazen plotting position reads
        # exactly the k-th order statistic there, so the identity recalibration returns the
        # samples unchanged (linear interpolation pulled every sample towards its neighbour
        # and narrowed the tails; tests/test_calibration.py).
        corrected_sorted = sample_quantiles(samples, targets, continuous_method="hazen")  # (K, N), sorted per column
        if self.tails:
            corrected_sorted = self._extrapolated(np.sort(samples, axis=0), targets, corrected_sorted)
        return np.take_along_axis(corrected_sorted, ranks, axis=0)

    @staticmethod
    def _extrapolated(ordered: np.ndarray, targets: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
        """``quantiles`` ``(K, N)`` with the levels beyond the extreme samples' Hazen levels read
        off the exponential tails of :func:`tail_scales` (the inverse of
        :func:`recalibration_pit`), at most ``MAX_TAIL_MULTIPLE`` scales out; whole numbers
        for count samples, and no lower tail below 0 for non-negative samples."""
        k = ordered.shape[0]
        half = 0.5 / k
        upper, lower = tail_scales(ordered)
        with np.errstate(divide="ignore"):
            up = np.minimum(np.log(half / (1.0 - targets)), MAX_TAIL_MULTIPLE)[:, None]  # (K, 1)
            down = np.minimum(np.log(half / targets), MAX_TAIL_MULTIPLE)[:, None]
        counts = np.array_equal(ordered, np.round(ordered))
        above = ordered[-1] + upper * up
        below = ordered[0] - lower * down
        if counts:
            above, below = np.ceil(above - 1e-9), np.floor(below + 1e-9)
        below = np.where(ordered[0] >= 0, np.maximum(below, 0.0), below)
        out = np.where(up > 0, np.maximum(quantiles, above), quantiles)
        return np.where(down > 0, np.minimum(out, below), out)


PATH_BUCKETS = (2, 8, 15)  # first day ahead of each bucket: days 2-7, 8-14, 15 and on


@dataclass(frozen=True)
class HorizonRecalibration:
    """A :class:`PitRecalibration` per range of days ahead, for the days 2.. of sample paths.

    A one-day forecast's PITs say nothing of how a path's spread grows: a path that keeps
    its origin's level for four weeks under-covers more each day (synthetic smooth demand,
    28 days from one origin: PICP90 0.76 with the one-day recalibration). Fitted on the raw
    PITs of paths from origins the model never trained on, bucket ``j`` covers days ahead
    ``first_days[j] .. first_days[j + 1] - 1`` (the last bucket every later day); day 1 is
    the one-day forecast and keeps the one-day recalibration.
    """

    first_days: tuple[int, ...]
    buckets: tuple[PitRecalibration, ...]

    @classmethod
    def fit(cls, pit_values: np.ndarray, days_ahead: np.ndarray, first_days: tuple[int, ...] = PATH_BUCKETS,
            min_points: int = 100, tails: bool = False) -> HorizonRecalibration | None:
        """From raw PITs ``(N,)`` and their days ahead ``(N,)``; a bucket with fewer than
        ``min_points`` PITs ends the list (later days use the last bucket fitted). None when
        even the first bucket is short of points."""
        pit, days = np.asarray(pit_values, dtype=float), np.asarray(days_ahead)
        fitted_days, buckets = [], []
        for j, first in enumerate(first_days):
            last = first_days[j + 1] - 1 if j + 1 < len(first_days) else np.inf
            chosen = pit[(days >= first) & (days <= last) & np.isfinite(pit)]
            if len(chosen) < min_points:
                break
            fitted_days.append(first)
            buckets.append(PitRecalibration.fit(chosen, tails=tails))
        return cls(tuple(fitted_days), tuple(buckets)) if buckets else None

    def bucket_of(self, days_ahead: np.ndarray) -> np.ndarray:
        """Bucket index of each day ahead ``(N,)`` (-1 for day 1, which is not recalibrated here)."""
        days = np.asarray(days_ahead)
        return np.where(days >= self.first_days[0], np.searchsorted(self.first_days, days, side="right") - 1, -1)

    def apply(self, samples: np.ndarray, days_ahead: np.ndarray) -> np.ndarray:
        """Samples ``(K, N)`` with every column of day ahead >= 2 remapped by its bucket (ranks
        kept, as :meth:`PitRecalibration.apply`); day-1 columns are returned unchanged."""
        out = samples.copy()
        which = self.bucket_of(days_ahead)
        for j, bucket in enumerate(self.buckets):
            columns = which == j
            if columns.any():
                out[:, columns] = bucket.apply(samples[:, columns])
        return out

    def saturation_level(self, last_day: int | None = None) -> float:
        """:meth:`PitRecalibration.saturation_level` of the buckets of days ahead 2 ..
        ``last_day`` (every bucket without it): the lowest."""
        used = [b for d, b in zip(self.first_days, self.buckets, strict=True) if last_day is None or d <= last_day]
        return min((b.saturation_level() for b in used), default=1.0)

    def to_dict(self) -> dict:
        return {"first_days": list(self.first_days), "buckets": [vars(b) for b in self.buckets]}

    @classmethod
    def from_dict(cls, raw: dict) -> HorizonRecalibration:
        buckets = tuple(PitRecalibration.from_dict(b) for b in raw["buckets"])
        if len(buckets) != len(raw["first_days"]) or not buckets:
            raise ValueError("path calibration: one bucket per first day, at least one")
        return cls(tuple(int(d) for d in raw["first_days"]), buckets)
