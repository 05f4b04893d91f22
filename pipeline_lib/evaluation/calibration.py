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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline_lib.contract import sample_quantiles


@dataclass(frozen=True)
class PitRecalibration:
    """``levels[j] = R(j / (G - 1))`` on a uniform grid of ``G`` points, ``R(0) = 0, R(1) = 1``."""

    levels: tuple[float, ...]
    n_calibration: int

    @classmethod
    def fit(cls, pit_values: np.ndarray, grid_size: int = 201) -> PitRecalibration:
        pit = np.asarray(pit_values, dtype=float)
        pit = pit[np.isfinite(pit)]
        if len(pit) < 20:
            raise ValueError(f"recalibration needs at least 20 calibration points, got {len(pit)}")
        grid = np.linspace(0.0, 1.0, grid_size)
        levels = np.quantile(pit, grid)
        levels[0], levels[-1] = 0.0, 1.0
        return cls(levels=tuple(np.maximum.accumulate(levels).tolist()), n_calibration=len(pit))

    @classmethod
    def identity(cls) -> PitRecalibration:
        return cls(levels=(0.0, 1.0), n_calibration=0)

    def level(self, tau: np.ndarray) -> np.ndarray:
        """``R(tau)``: the raw predictive level to read for nominal level ``tau``."""
        grid = np.linspace(0.0, 1.0, len(self.levels))
        return np.interp(tau, grid, self.levels)

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
        return np.take_along_axis(corrected_sorted, ranks, axis=0)
