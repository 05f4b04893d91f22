"""Backtest: forecasts of the last test window from rolling or single origins, and the
rolling-origin backtest over consecutive folds, each with its own training run."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.validate import Panel, minimum_series_days
from pipeline_lib.errors import DataValidationError
from pipeline_lib.evaluation.report import score_forecast_table
from pipeline_lib.stages.evaluation import backtest_forecasts
from pipeline_lib.stages.training import backtest_model


def rolling_origin_backtest(config: PipelineConfig, panel: Panel, folds: int, horizon: int,
                            progress: bool = True) -> tuple[pd.DataFrame, list[dict]]:
    """Backtest on ``folds`` consecutive test windows of ``config.window.test_days`` days.

    Fold 0 holds out the last ``test_days`` of each series, fold 1 the ``test_days`` before
    those, and so on; each fold trains its own model on everything before its test days
    (:func:`~pipeline_lib.stages.training.backtest_model`, so no fold sees its own future)
    and forecasts them as :func:`~pipeline_lib.stages.evaluation.backtest_forecasts`.
    Returns the forecast table (with a ``fold`` column when ``folds > 1``) and per-fold
    metrics computed from the table's quantiles.
    """
    n_test = config.window.test_days
    shortest = min(len(s) for s in panel.series)
    # With train.refit each fold's model is trained by a whole training run on the days
    # before its test window, which holds out test_days of its own.
    needed = minimum_series_days(config.window) + (folds - 1 + int(config.train.refit)) * n_test
    if shortest < needed:
        raise DataValidationError(
            f"{panel.source}: {folds} folds of {n_test} test days need series of at least {needed} days; "
            f"the shortest has {shortest}"
        )
    history = panel.to_frame()
    frames, scores = [], []
    for fold in range(folds):
        fold_panel = panel.truncate([len(s) - fold * n_test for s in panel.series])
        trained = backtest_model(config, fold_panel, progress=progress)
        frame = backtest_forecasts(config, trained.model, fold_panel, horizon)
        scores.append({"fold": fold, **score_forecast_table(frame, history)})
        frames.append(frame.assign(fold=fold) if folds > 1 else frame)
    return pd.concat(frames, ignore_index=True), scores


def backtest_summary(config: PipelineConfig, panel: Panel, progress: bool = False) -> dict[str, float]:
    """Rolling-origin metrics of ``config.evaluation.backtest_folds`` one-day-ahead folds:
    ``backtest_<metric>`` (mean over folds) and ``backtest_fold<i>_crps_scaled``."""
    _, scores = rolling_origin_backtest(config, panel, config.evaluation.backtest_folds, horizon=1, progress=progress)
    summary = {f"backtest_{key}": float(np.mean([s[key] for s in scores]))
               for key in scores[0] if key not in ("fold", "n")}
    summary.update({f"backtest_fold{s['fold']}_crps_scaled": s["crps_scaled"] for s in scores})
    return summary

