"""All metrics of one set of forecasts against actuals, as a flat dict for MLflow."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline_lib.contract import CRPS_LEVELS, interval_columns, quantile_column, sample_quantiles
from pipeline_lib.evaluation import metrics as m

# M5 uncertainty competition: the median and the 50/67/95/99% central intervals.
M5_LEVELS = (0.005, 0.025, 0.165, 0.25, 0.5, 0.75, 0.835, 0.975, 0.995)


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
    pit = m.probability_integral_transform(y, samples)
    for level in coverage_levels:
        lower, upper = m.interval_from_samples(samples, level)
        key = level_key(level)
        result[f"picp_{key}"] = m.prediction_interval_coverage(y, lower, upper)
        result[f"mpiw_{key}"] = m.mean_interval_width(lower, upper)
        result[f"mpiw_{key}_scaled"] = result[f"mpiw_{key}"] / max(float(np.mean(np.abs(y))), 1e-12)
        result[f"interval_score_{key}"] = m.interval_score(y, lower, upper, level)
        # Closed days sell 0 and any interval starting at 0 covers them for free: coverage of
        # the days with demand says whether the intervals hold where it matters.
        nonzero = y > 0
        if nonzero.any():
            result[f"picp_{key}_nonzero"] = m.prediction_interval_coverage(y[nonzero], lower[nonzero], upper[nonzero])
        # The same interval judged by the randomised PIT: nominal for a calibrated forecast
        # of whole units, whose inclusive intervals over-cover even when they are right.
        result[f"picp_{key}_randomised"] = m.randomised_coverage(pit, level)
    quantiles = sample_quantiles(samples, CRPS_LEVELS, axis=0)
    scales = np.asarray(series_scales, dtype=float)[series_index]
    result["crps"] = float(m.crps_from_samples(y, samples).mean())
    result["crps_quantile"] = float(m.crps_from_quantiles(y, quantiles, CRPS_LEVELS).mean())
    result["crps_scaled"] = m.scaled_crps(y, quantiles, series_index, series_scales)
    result["mase"] = m.mean_over_series(np.abs(y - median) / scales, series_index)
    # M5's SPL, with the scale of this project (seasonal naive instead of naive, no weights).
    spl = m.pinball_loss(y, sample_quantiles(samples, M5_LEVELS, axis=0), M5_LEVELS).mean(axis=0)
    result["spl_scaled"] = m.mean_over_series(spl / scales, series_index)
    result["mae"] = m.mae(y, median)
    result["rmse"] = m.rmse(y, mean)
    nominal, observed = m.calibration_curve(y, samples)
    result["calibration_error"] = m.calibration_error(nominal, observed)
    result["pit_calibration_error"] = m.pit_calibration_error(pit)
    return result


def score_forecast_table(forecasts: pd.DataFrame, history: pd.DataFrame,
                         coverage_levels=(0.8, 0.9, 0.95)) -> dict[str, float]:
    """Metrics of a forecast table (output contract) against actuals.

    ``history``: ``series_id, date, target`` including the forecast days. Each series is
    scaled by its mean absolute seasonal-naive(7) error before its first forecast day.
    Works from the quantile columns alone, so it scores any model's table.
    """
    merged = forecasts.merge(history[["series_id", "date", "target"]], on=["series_id", "date"], how="inner")
    if merged.empty:
        raise ValueError("no forecast row has an actual")
    y = merged["target"].to_numpy(dtype=float)
    result: dict[str, float] = {"n": float(len(merged))}
    for level in coverage_levels:
        lo, hi = interval_columns(level)
        lower, upper = merged[lo].to_numpy(), merged[hi].to_numpy()
        result[f"picp_{level_key(level)}"] = m.prediction_interval_coverage(y, lower, upper)
    quantiles = merged[[quantile_column(q) for q in CRPS_LEVELS]].to_numpy(dtype=float).T
    codes, ids = pd.factorize(merged["series_id"])
    first_day = merged.groupby("series_id")["date"].min()
    past = history[history["series_id"].isin(ids)].sort_values(["series_id", "date"]).groupby("series_id")
    targets = {sid: group["target"].to_numpy() for sid, group in past}
    ends = {sid: int((group["date"] < first_day[sid]).sum()) for sid, group in past}
    scales = m.seasonal_naive_scales([targets[sid] for sid in ids], [ends[sid] for sid in ids])
    result["crps_scaled"] = m.scaled_crps(y, quantiles, codes, scales)
    result["mase"] = m.mean_over_series(np.abs(y - merged["q0.5"].to_numpy()) / scales[codes], codes)
    return result
