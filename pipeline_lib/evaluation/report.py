"""All metrics of one set of forecasts against actuals, as a flat dict for MLflow."""

from __future__ import annotations

import numpy as np

from pipeline_lib.contract import CRPS_LEVELS

# M5 uncertainty competition: the median and the 50/67/95/99% central intervals.
M5_LEVELS = (0.005, 0.025, 0.165, 0.25, 0.5, 0.75, 0.835, 0.975, 0.995)
from pipeline_lib.evaluation import metrics as m


def level_key(level: float) -> str:
    """``0.95 -> '95'`` for metric names like ``picp_95``."""
    return f"{round(level * 100):d}"


def evaluate_samples(
    y: np.ndarray,
    samples: np.ndarray,
    series_index: np.ndarray,
    series_scales: np.ndarray,
    coverage_levels=(0.8, 0.9, 0.95),
) -> dict[str, float]:
    """Metrics of predictive ``samples`` ``(K, N)`` for actuals ``y`` ``(N,)``.

    ``series_index`` ``(N,)`` maps each target to its series; ``series_scales`` holds each
    series' in-sample mean absolute seasonal-naive(7) error before the test window, which
    scales ``crps_scaled`` (2 x mean pinball over the 23 CRPS levels), ``mase`` and
    ``mpiw_scaled`` per series before averaging over series, as M5 does.
    """
    y = np.asarray(y, dtype=float)
    median = np.median(samples, axis=0)
    mean = samples.mean(axis=0)
    result: dict[str, float] = {}
    for level in coverage_levels:
        lower, upper = m.interval_from_samples(samples, level)
        key = level_key(level)
        result[f"picp_{key}"] = m.prediction_interval_coverage(y, lower, upper)
        result[f"mpiw_{key}"] = m.mean_interval_width(lower, upper)
        result[f"mpiw_{key}_scaled"] = result[f"mpiw_{key}"] / max(float(np.mean(np.abs(y))), 1e-12)
        result[f"interval_score_{key}"] = m.interval_score(y, lower, upper, level)
    quantiles = np.quantile(samples, CRPS_LEVELS, axis=0)
    per_target_crps_q = m.crps_from_quantiles(y, quantiles, CRPS_LEVELS)
    per_target_abs = np.abs(y - median)
    scales = np.asarray(series_scales, dtype=float)[series_index]
    result["crps"] = float(m.crps_from_samples(y, samples).mean())
    result["crps_quantile"] = float(per_target_crps_q.mean())
    result["crps_scaled"] = float(_mean_over_series(per_target_crps_q / scales, series_index))
    result["mase"] = float(_mean_over_series(per_target_abs / scales, series_index))
    # M5's SPL, with the scale of this project (seasonal naive instead of naive, no weights).
    spl = m.pinball_loss(y, np.quantile(samples, M5_LEVELS, axis=0), M5_LEVELS).mean(axis=0)
    result["spl_scaled"] = float(_mean_over_series(spl / scales, series_index))
    result["mae"] = m.mae(y, median)
    result["rmse"] = m.rmse(y, mean)
    nominal, observed = m.calibration_curve(y, samples)
    result["calibration_error"] = m.calibration_error(nominal, observed)
    return result


def _mean_over_series(values: np.ndarray, series_index: np.ndarray) -> float:
    sums = np.bincount(series_index, weights=values)
    counts = np.bincount(series_index)
    present = counts > 0
    return float(np.mean(sums[present] / counts[present]))
