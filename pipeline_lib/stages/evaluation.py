"""Evaluate: Monte Carlo one-day-ahead forecasts of every test day, scored against the
actuals and the seasonal-naive peer, coverage by days ahead, and the pictures."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_lib.config import PipelineConfig
from pipeline_lib.contract import interval_columns
from pipeline_lib.data.features import actuals_for, part_days, split_points
from pipeline_lib.data.validate import Panel
from pipeline_lib.evaluation import metrics as m
from pipeline_lib.evaluation.baselines import seasonal_naive_samples
from pipeline_lib.evaluation.plots import (
    calibration_plot,
    coverage_by_horizon_plot,
    fan_chart,
    pit_histogram,
    sharpness_calibration_scatter,
)
from pipeline_lib.evaluation.report import evaluate_samples, level_key
from pipeline_lib.model.forecast import ForecastModel, OneStepForecaster, SampledForecast, pooled_one_step

CANDIDATE_VERSION = "candidate"


@dataclass
class Evaluation:
    """Monte Carlo evaluation of one-day-ahead forecasts over the test split."""

    metrics: dict[str, float]
    forecasts: pd.DataFrame  # output contract, one row per series and test day
    actuals: np.ndarray  # (N,) aligned with ``forecasts``
    sampled: SampledForecast  # what users are served
    raw_samples: np.ndarray | None = None  # (K, N) before recalibration, when there is one
    peer_samples: dict[str, np.ndarray] = field(default_factory=dict)  # (K', N) per peer model
    coverage_by_horizon: dict[int, float] = field(default_factory=dict)  # days ahead -> PICP


def scored_panel(config: PipelineConfig, panel: Panel) -> Panel:
    """The series a training run scores (``evaluation.max_series``; all when there are no
    more): the Monte Carlo evaluation, the recalibration, the gate and the in-training
    inventory backtest all use these, so the challenger and the champion meet on the same
    series. The training flow says in its log when this is a sample; the run's metric
    ``scored_series`` records how many."""
    if config.evaluation.max_series is None:
        return panel
    return panel.sample_series(config.evaluation.max_series)


def seasonal_scales(panel: Panel, config: PipelineConfig) -> np.ndarray:
    """Per-series mean absolute seasonal-naive(7) error before the test window."""
    return m.seasonal_naive_scales([s.target for s in panel.series],
                                   [split_points(s, config.window).test_start for s in panel.series])


def sample_test_chunk(config: PipelineConfig, model: OneStepForecaster, chunk: Panel, k: int) -> SampledForecast:
    """Raw (uncalibrated) one-day-ahead samples of every test day of the ``k``-th chunk
    (``panel.chunks(runtime.chunk_series)``, which the training flow maps over tasks),
    seed ``evaluation.seed + k``: the numbers depend on the chunking only, not on the
    runner or the worker that computes them."""
    days = part_days(chunk, config.window, "test")
    return model.one_step(chunk, days, config.evaluation.num_samples, seed=config.evaluation.seed + k,
                          calibrated=False)


def evaluate(config: PipelineConfig, model: OneStepForecaster, panel: Panel,
             raw: SampledForecast | None = None, by_horizon: bool = True) -> Evaluation:
    """Rolling one-day-ahead forecasts for every test day (actuals up to the day before).

    ``raw``: the chunks of :func:`sample_test_chunk` already computed (the training flow
    maps them over tasks) and concatenated; None computes them here, chunk by chunk.
    ``by_horizon``: also the coverage by days ahead from joint sample paths (needs
    ``model.forecast``; the comparison of one-day-ahead variants skips it).

    Metrics without prefix describe what users are served (recalibrated when the model has
    a calibration, pooled with ETS when it has a pool); ``uncalibrated_*`` describe the raw
    predictive distribution, side by side.
    """
    if raw is None:
        raw = SampledForecast.concat([sample_test_chunk(config, model, chunk, k)
                                      for k, chunk in enumerate(panel.chunks(config.runtime.chunk_series))])
    days = part_days(panel, config.window, "test")
    actuals, series_index = actuals_for(panel, days)
    scales = seasonal_scales(panel, config)

    def score(samples):
        return evaluate_samples(actuals, samples, series_index, scales, config.evaluation.coverage_levels)

    served = raw
    metrics = {"epistemic_share": float(np.mean(raw.epistemic_share)), "scored_series": float(len(panel.series))}
    if model.calibration is not None:
        served = replace(raw, samples=model.calibration.apply(raw.samples, raw.series_ids))
        metrics.update({f"uncalibrated_{k}": v for k, v in score(raw.samples).items()})
    if model.pool is not None:
        metrics["ets_pool_weight"] = model.pool.weight
        served = pooled_one_step(model, served, panel, days)
    metrics.update(score(served.samples))
    # The simplest honest peer, on the same days, logged side by side.
    fit_end = {k: split_points(s, config.window).test_start for k, s in enumerate(panel.series)}
    naive = seasonal_naive_samples(panel, days, fit_end, non_negative=config.data.non_negative)
    metrics.update({f"peer_seasonal_naive_{k}": v for k, v in score(naive).items()})
    by_horizon = horizon_coverage(config, model, panel) if by_horizon else {}
    metrics.update({f"picp_{level_key(config.evaluation.nominal_level)}_h{h:02d}": v for h, v in by_horizon.items()})
    return Evaluation(metrics=metrics, forecasts=served.to_frame(CANDIDATE_VERSION), actuals=actuals, sampled=served,
                      raw_samples=raw.samples if served is not raw else None, peer_samples={"seasonal naive": naive},
                      coverage_by_horizon=by_horizon)


def horizon_coverage(config: PipelineConfig, model: ForecastModel, panel: Panel) -> dict[int, float]:
    """Coverage of the nominal interval by days ahead, forecasting every test day from the
    single origin before the test split (joint sample paths, no actuals fed back)."""
    frame = backtest_forecasts(config, model, panel, horizon=config.window.test_days)
    merged = frame.merge(panel.to_frame()[["series_id", "date", "target"]], on=["series_id", "date"])
    first = merged.groupby("series_id")["date"].transform("min")
    days_ahead = ((merged["date"] - first).dt.days + 1).to_numpy()
    lower, upper = interval_columns(config.evaluation.nominal_level)
    return m.coverage_by_horizon(merged["target"].to_numpy(), merged[lower].to_numpy(),
                                 merged[upper].to_numpy(), days_ahead)


def write_plots(config: PipelineConfig, panel: Panel, evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """Fan chart of a few series, calibration curve and PIT histogram of the test split."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # The busiest series first: their charts are the most telling.
    totals = sorted(panel.series, key=lambda s: -float(s.target.sum()))
    chosen = [s.series_id for s in totals[: config.evaluation.fan_chart_series]]
    history = panel.to_frame()
    paths = [fan_chart(evaluation.forecasts, history, chosen, out_dir / "fan_chart.png",
                       title="One-day-ahead forecasts on the test split")]
    curves = {"Bayesian LSTM": m.calibration_curve(evaluation.actuals, evaluation.sampled.samples)}
    if evaluation.raw_samples is not None:
        curves = {"Bayesian LSTM, raw": m.calibration_curve(evaluation.actuals, evaluation.raw_samples),
                  "Bayesian LSTM, recalibrated": curves["Bayesian LSTM"]}
    for name, samples in evaluation.peer_samples.items():
        curves[name] = m.calibration_curve(evaluation.actuals, samples)
    paths.append(calibration_plot(curves, out_dir / "calibration_curve.png"))
    points = {
        name: (evaluation.metrics[f"{prefix}picp_90"], evaluation.metrics[f"{prefix}mpiw_90_scaled"])
        for prefix, name in (("", "Bayesian LSTM"), ("uncalibrated_", "Bayesian LSTM, raw"),
                             ("peer_seasonal_naive_", "seasonal naive"))
        if f"{prefix}picp_90" in evaluation.metrics  # needs 0.9 among evaluation.coverage_levels
    }
    if points:
        paths.append(sharpness_calibration_scatter(points, out_dir / "sharpness_vs_calibration.png"))
    if evaluation.coverage_by_horizon:
        paths.append(coverage_by_horizon_plot({"Bayesian LSTM": evaluation.coverage_by_horizon},
                                              out_dir / "coverage_by_horizon.png", config.evaluation.nominal_level))
    pit = m.probability_integral_transform(evaluation.actuals, evaluation.sampled.samples)
    paths.append(pit_histogram(pit, out_dir / "pit_histogram.png"))
    return paths


def backtest_forecasts(config: PipelineConfig, model: ForecastModel, panel: Panel, horizon: int) -> pd.DataFrame:
    """Forecasts for the last ``config.window.test_days`` of each series, from origins every
    ``horizon`` days: ``horizon=1`` is the rolling one-day-ahead backtest (no refit),
    ``horizon=test_days`` forecasts all test days from one origin."""
    n_test = config.window.test_days
    if horizon == 1:
        sampled = model.one_step(panel, part_days(panel, config.window, "test"), config.evaluation.num_samples,
                                 seed=config.evaluation.seed)
        return sampled.to_frame(CANDIDATE_VERSION)
    frames = []
    for offset in range(0, n_test, horizon):
        keep = [split_points(s, config.window).test_start + offset for s in panel.series]
        steps = min(horizon, n_test - offset)
        sampled = model.forecast(panel.truncate(keep), steps, config.evaluation.num_samples,
                                 seed=config.evaluation.seed + offset)
        frames.append(sampled.to_frame(CANDIDATE_VERSION))
    return pd.concat(frames, ignore_index=True).sort_values(["series_id", "date"], ignore_index=True)
