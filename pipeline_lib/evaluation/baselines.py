"""Peers evaluated on the same split and days as the Bayesian LSTM."""

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


def auto_ets_samples(panel: Panel, days: dict[int, np.ndarray], fit_end: dict[int, int],
                     period: int = 7, num_samples: int = 1000, non_negative: bool = True,
                     from_origin: bool = False) -> np.ndarray:
    """statsforecast AutoETS, one day ahead or from the origin: see :func:`statsforecast_samples`."""
    from statsforecast.models import AutoETS

    return statsforecast_samples(lambda: AutoETS(season_length=period), panel, days, fit_end, num_samples,
                                 non_negative, from_origin)


def auto_arima_samples(panel: Panel, days: dict[int, np.ndarray], fit_end: dict[int, int],
                       period: int = 7, num_samples: int = 1000, non_negative: bool = True,
                       from_origin: bool = False) -> np.ndarray:
    """statsforecast AutoARIMA, one day ahead or from the origin: see :func:`statsforecast_samples`."""
    from statsforecast.models import AutoARIMA

    return statsforecast_samples(lambda: AutoARIMA(season_length=period), panel, days, fit_end, num_samples,
                                 non_negative, from_origin)


def statsforecast_samples(make_model, panel: Panel, days: dict[int, np.ndarray], fit_end: dict[int, int],
                          num_samples: int = 1000, non_negative: bool = True, from_origin: bool = False) -> np.ndarray:
    """A statsforecast model (``make_model()``) fitted once per series on days
    ``[0, fit_end[k])``, then run forward (no refit) to forecast each day of ``days`` one
    day ahead from the actuals before it, or with ``from_origin`` all of them ahead from
    ``fit_end[k]`` (days ahead ``day - fit_end[k] + 1``, no actual after the origin read).
    Its predictive distribution is Normal; samples ``(num_samples, N)`` are its quantiles at
    evenly spaced levels, clipped at 0 for demand.

    Needs the optional extra ``bench`` (``pip install -e .[bench]``).
    """
    from scipy.stats import norm

    standard = norm.ppf((np.arange(num_samples) + 0.5) / num_samples)[:, None]  # (K, 1)
    z95 = norm.ppf(0.975)
    columns = []
    for k, day_index in days.items():
        y = panel.series[k].target.astype(float)
        model = make_model().fit(y[: fit_end[k]])
        if from_origin:
            ahead = np.asarray(day_index) - fit_end[k]
            if ahead.min() < 0:
                raise ValueError(f"series {k}: a day before its origin {fit_end[k]}")
            forecast = model.predict(h=int(ahead.max()) + 1, level=[95])
            mean, upper = np.asarray(forecast["mean"])[ahead], np.asarray(forecast["hi-95"])[ahead]
        else:
            steps = [model.forward(y=y[:day], h=1, level=[95]) for day in day_index]
            mean = np.array([step["mean"][0] for step in steps])
            upper = np.array([step["hi-95"][0] for step in steps])
        std = np.maximum((upper - mean) / z95, 1e-9)
        samples = mean[None, :] + standard * std[None, :]
        columns.append(np.maximum(samples, 0.0) if non_negative else samples)
    return np.concatenate(columns, axis=1)
