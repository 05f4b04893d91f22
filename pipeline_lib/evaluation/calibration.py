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

A global map corrects what all series share. Fitted ``by_series``, each series' own PITs
correct what is its own (a series the network keeps forecasting too low has PITs crowding
at 1 on every calibration day), shrunk towards the global map: its map inverts the mixture
``w F_s + (1 - w) F`` of its PITs' empirical CDF ``F_s`` and the pooled one ``F``, with
``w = n_s / (n_s + SERIES_PRIOR_DAYS)``. A series without PITs (new, or outside the scored
sample) gets the global map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline_lib.contract import sample_quantiles
from pipeline_lib.evaluation.metrics import probability_integral_transform

TAIL_SHARE = 0.1  # the share of samples at each end whose spread sets a tail's scale
MAX_TAIL_MULTIPLE = 10.0  # the farthest extrapolation, in tail scales beyond the extreme sample
# The pooled PITs' weight in a series' map, in calibration days: a series' own 28 days (one
# test window) weigh half. Chosen on 2026-12-01 from maps fitted on one fold's days and
# applied to the next (benchmarks/headroom.py, section 4; RESULTS.md): 28, 56 and 112 were
# within 0.002 of the best on all three data sets; 0 (each series on its own) was worse than
# the global map everywhere.
SERIES_PRIOR_DAYS = 28.0


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
    by_series: dict[str, tuple[float, ...]] = field(default_factory=dict)  # series id -> its sorted PITs

    @classmethod
    def fit(cls, pit_values: np.ndarray, grid_size: int = 201, tails: bool = False,
            series_ids: np.ndarray | None = None) -> PitRecalibration:
        """From PITs ``(N,)``; with ``series_ids`` ``(N,)`` each series also keeps its own
        PITs for its map (module docstring)."""
        pit = np.asarray(pit_values, dtype=float)
        finite = np.isfinite(pit)
        if finite.sum() < 20:
            raise ValueError(f"recalibration needs at least 20 calibration points, got {int(finite.sum())}")
        grid = np.linspace(0.0, 1.0, grid_size)
        levels = np.quantile(pit[finite], grid)
        levels[0], levels[-1] = 0.0, 1.0
        by_series = {}
        if series_ids is not None:
            ids = np.asarray(series_ids)[finite]
            for series_id, own in _groups(ids, pit[finite]):
                by_series[str(series_id)] = tuple(np.sort(own).tolist())
        return cls(levels=tuple(np.maximum.accumulate(levels).tolist()), n_calibration=int(finite.sum()),
                   tails=tails, by_series=by_series)

    @classmethod
    def from_dict(cls, raw: dict) -> PitRecalibration:
        """From ``vars()`` of one (files written before tails or series maps existed have none)."""
        return cls(tuple(raw["levels"]), raw["n_calibration"], bool(raw.get("tails", False)),
                   {str(k): tuple(v) for k, v in raw.get("by_series", {}).items()})

    @classmethod
    def identity(cls) -> PitRecalibration:
        return cls(levels=(0.0, 1.0), n_calibration=0)

    def level(self, tau: np.ndarray, series_id: str | None = None) -> np.ndarray:
        """``R(tau)``: the raw predictive level to read for nominal level ``tau``; with a
        ``series_id`` that has PITs of its own, that series' map."""
        grid = np.linspace(0.0, 1.0, len(self.levels))
        own = self.by_series.get(series_id) if series_id is not None else None
        if not own:
            return np.interp(tau, grid, self.levels)
        # Invert w F_s + (1 - w) F on a fine grid of raw levels u: F(u) is the global map's
        # inverse (its levels are F's quantiles), F_s the series' empirical CDF.
        u = np.linspace(0.0, 1.0, 2001)
        pooled = np.interp(u, self.levels, grid)
        weight = len(own) / (len(own) + SERIES_PRIOR_DAYS)
        mixed = weight * np.searchsorted(own, u, side="right") / len(own) + (1.0 - weight) * pooled
        # mixed is non-decreasing but may be flat: interp over its first point of each level
        mixed, first = np.unique(mixed, return_index=True)
        return np.interp(tau, mixed, u[first])

    def saturation_level(self) -> float:
        """The lowest nominal level whose recalibrated quantile is the largest raw sample: from
        there up every level reads the same value, because the calibration days' actuals fell
        above all samples more often than ``1 - level`` (a PIT of 1 says "above", not how far).
        1.0 when only level 1 does. With ``tails`` only actuals above constant forecasts have
        PIT 1; the level from which every sample reads the farthest extrapolation. With maps
        by series, the lowest over them."""
        grid = np.linspace(0.0, 1.0, len(self.levels))
        lowest = 1.0
        for series_id in (None, *self.by_series):
            levels = self.level(grid, series_id)
            lowest = min(lowest, float(grid[int(np.argmax(levels >= 1.0 - 1e-12))]))  # levels end with 1.0
        return lowest

    def apply(self, samples: np.ndarray, series_ids: np.ndarray | None = None) -> np.ndarray:
        """Recalibrated samples ``(K, N)`` from raw samples ``(K, N)``; ``series_ids`` ``(N,)``
        picks each column's series map (without them, or without maps, the global one).

        Each sample keeps its rank within its column, so joint sample paths (columns of the
        same series on consecutive days) keep their dependence; only the marginal of every
        column is remapped: the sample of rank ``k`` becomes the raw quantile at
        ``R((k + 0.5) / K)``.
        """
        if not self.by_series or series_ids is None:
            return self._remap(samples, None)
        ids = np.asarray(series_ids).astype(str)
        mapped = np.isin(ids, list(self.by_series))
        out = np.empty(samples.shape, dtype=float)
        if not mapped.all():  # series without a map of their own: the global map, in one pass
            out[:, ~mapped] = self._remap(samples[:, ~mapped], None)
        for series_id, columns in _groups(ids[mapped], np.flatnonzero(mapped)):
            out[:, columns] = self._remap(samples[:, columns], str(series_id))
        return out

    def _remap(self, samples: np.ndarray, series_id: str | None) -> np.ndarray:
        k = samples.shape[0]
        ranks = np.argsort(np.argsort(samples, axis=0, kind="stable"), axis=0, kind="stable")
        targets = self.level((np.arange(k) + 0.5) / k, series_id)  # (K,) non-decreasing
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


def _groups(keys: np.ndarray, values: np.ndarray):
    """``(key, values of that key)`` for each distinct key of ``keys`` ``(N,)``, in one sort
    (a mask per key would cost N x the number of series)."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], len(ordered)], strict=True):
        yield ordered[start], values[order[start:end]]


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
