"""The seasonal-naive peer, evaluated on the same split and days as the Bayesian LSTM in
every training run (statsforecast's AutoETS and AutoARIMA peers of the benchmarks live in
:mod:`pipeline_lib.model.statistical`)."""

from __future__ import annotations

import numpy as np

from pipeline_lib.data.validate import Panel


def seasonal_naive_samples(panel: Panel, days: dict[int, np.ndarray], fit_end: dict[int, int],
                           period: int = 7, num_samples: int = 1000, non_negative: bool = True,
                           from_origin: bool = False) -> np.ndarray:
    """Seasonal naive with empirical residual quantiles: ``y(t - period) + r``, where ``r``
    follows the series' in-sample seasonal differences before ``fit_end[k]``. With
    ``from_origin`` every day is forecast from the actuals before ``fit_end[k]`` (a path of
    ``h`` days): ``y(t - m period) + r_m`` with ``m`` the seasons back to the last known
    week and ``r_m`` the in-sample differences over ``m`` seasons.

    Returns samples ``(num_samples, N)`` for the days of ``days`` in order, drawn at the
    evenly spaced levels ``(j + 0.5) / num_samples`` of the residual distribution (a
    deterministic, smooth stand-in for bootstrapping the residuals).
    """
    levels = (np.arange(num_samples) + 0.5) / num_samples
    columns = []
    for k, day_index in days.items():
        y = panel.series[k].target
        history = y[: fit_end[k]]
        day_index = np.asarray(day_index)
        seasons = ((day_index - fit_end[k]) // period + 1) if from_origin else np.ones(len(day_index), dtype=int)
        samples = np.empty((num_samples, len(day_index)))
        for m in np.unique(seasons):
            lag = period * m
            residuals = history[lag:] - history[:-lag] if len(history) > lag else np.zeros(1)
            chosen = seasons == m
            point = y[day_index[chosen] - lag][None, :]  # actuals m seasons back
            samples[:, chosen] = point + np.quantile(residuals, levels)[:, None]
        columns.append(np.maximum(samples, 0.0) if non_negative else samples)
    return np.concatenate(columns, axis=1)
