"""statsforecast in one place: per-series exponential smoothing (AutoETS) pooled with the
network's forecast, and the AutoETS / AutoARIMA peers of ``benchmarks/quality.py``.

About 330 lines: the volatile dependency stays in one module (fitting, storing, running
forward and simulating ETS, choosing the pool's weight, and the benchmark peers).

The pool: the served distribution is the mixture ``(1 - w) network + w ETS``, with ``w``
chosen on days the network never trained on (``evaluation.pool_with_ets``).

Why: on smooth series with trend and yearly movement, per-series ETS is closer to the limit
than a global network reading 28 days, and on retail demand the two err differently, so
their mixture is sharper than either (benchmarks/RESULTS.md, "Where the bundled gap is
not"; the M5 uncertainty winners combined models). Where ETS adds nothing, the chosen
weight is 0 and nothing of it is computed when serving.

In the served model a fitted ETS is kept as its model string, smoothing parameters, initial
states and residual variance (:class:`EtsSpec`, a few hundred bytes per series), and run
forward over the latest actuals when it forecasts, as statsforecast's ``forward`` does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from pipeline_lib.contract import CRPS_LEVELS, sample_quantiles
from pipeline_lib.data.validate import Panel, Series
from pipeline_lib.evaluation import metrics as m

log = logging.getLogger(__name__)

POOL_FILE = "ets_pool.json"
WEIGHT_GRID: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))  # steps of 0.05
SEASON_LENGTH = 7
# A weight above 0 is kept only if its gain over the network alone is at least this many
# standard errors of the per-series gains (one-sided, about 2.5% by chance).
MIN_GAIN_T = 2.0
MIN_FIT_DAYS = 2 * SEASON_LENGTH + 2  # fewer days than this: no ETS for the series (the network alone)
# ETS is fitted on at most the last three years before its end: a weekly model learns nothing
# more from older days, and its fit costs time in proportion to the days (0.3 s per series for
# two years on one core, twice that for M5's five).
FIT_DAYS = 3 * 364


def _standard_normal_levels(k: int) -> np.ndarray:
    """The standard Normal's quantiles ``(k, 1)`` at the evenly spaced levels ``(j + 1/2) / k``:
    a Normal forecast as ``k`` deterministic samples."""
    return norm.ppf((np.arange(k) + 0.5) / k)[:, None]


def _per_series_crps(actuals: np.ndarray, samples: np.ndarray, series_index: np.ndarray,
                     scales: np.ndarray) -> np.ndarray:
    """Scaled CRPS ``(S,)`` of each series with targets (what :func:`metrics.scaled_crps`
    averages)."""
    per_target = m.crps_from_quantiles(actuals, sample_quantiles(samples, CRPS_LEVELS), CRPS_LEVELS)
    return m.means_by_series(per_target / np.asarray(scales, dtype=float)[series_index], series_index)


def resample(samples: np.ndarray, k: int) -> np.ndarray:
    """``k`` evenly spaced order statistics ``(k, N)`` of ``samples`` ``(K, N)`` per column."""
    return sample_quantiles(samples, (np.arange(k) + 0.5) / k)


def linear_pool(ours: np.ndarray, theirs: np.ndarray, weight: float) -> np.ndarray:
    """The mixture ``(1 - weight) ours + weight theirs`` of two ``(K, N)`` sample sets as
    ``K`` samples: evenly spaced order statistics of each, in proportion."""
    k = ours.shape[0]
    n_ours = int(round(k * (1.0 - weight)))
    if n_ours == k:
        return ours
    return np.concatenate([resample(ours, n_ours), resample(theirs, k - n_ours)], axis=0)


def pool_paths(ours: np.ndarray, theirs: np.ndarray, weight: float) -> np.ndarray:
    """The same mixture for sample paths: whole rows of each (a row of ``(K, N)`` is one
    joint path of every day of every series), so sums over days stay a path's sums. The
    first rows of ``ours`` are kept (its rows are independent draws); ``theirs`` must have
    ``K - round(K (1 - weight))`` rows."""
    n_ours = int(round(ours.shape[0] * (1.0 - weight)))
    if theirs.shape[0] != ours.shape[0] - n_ours:
        raise ValueError(f"{theirs.shape[0]} ETS paths for a pool of {ours.shape[0]} at weight {weight}")
    return np.concatenate([ours[:n_ours], theirs], axis=0)


@dataclass(frozen=True)
class EtsSpec:
    """One series' AutoETS as fitted: statsforecast's components string (error, trend,
    season, damping: ``"ANAN"``), ``par`` (alpha, beta, gamma, phi, then the initial states),
    the one-day residual variance ``sigma2`` (in units, or relative for multiplicative
    errors), and the first date of the history it was fitted on (its initial states belong
    to that day)."""

    components: str
    season_length: int
    par: tuple[float, ...]
    sigma2: float
    n_params: int
    start: str

    @classmethod
    def fit(cls, series: Series, end: int, season_length: int = SEASON_LENGTH) -> EtsSpec | None:
        """AutoETS on ``series``' days ``[end - FIT_DAYS, end)`` (from its first day when
        shorter); None when there are too few days or no model fits (e.g. a series that never
        sold)."""
        from statsforecast.models import AutoETS

        first = max(0, end - FIT_DAYS)
        y = series.target[first:end].astype(float)
        if len(y) < MIN_FIT_DAYS or np.ptp(y) == 0:
            return None
        try:
            fitted = AutoETS(season_length=season_length).fit(y).model_
        except (ValueError, ZeroDivisionError, np.linalg.LinAlgError) as exc:
            log.warning("series %r: no ETS model fits (%s); it is forecast by the network alone",
                        series.series_id, exc)
            return None
        return cls.from_statsforecast(fitted, str(series.dates[first].date()))

    @classmethod
    def from_statsforecast(cls, fitted: dict, start: str) -> EtsSpec:
        """The spec of statsforecast's fitted ETS dictionary (``AutoETS(...).fit(y).model_``)
        whose history starts on ``start`` (``YYYY-MM-DD``)."""
        return cls(str(fitted["components"]), int(fitted["m"]), tuple(float(v) for v in fitted["par"]),
                   float(fitted["sigma2"]), int(fitted["n_params"]), start)

    def _statsforecast_model(self) -> dict:
        return {"m": self.season_length, "components": self.components, "par": np.array(self.par),
                "sigma2": self.sigma2, "n_params": self.n_params, "fit": None}

    def offset_in(self, series: Series) -> int | None:
        """Index of this spec's first day in ``series``; None when the series starts later."""
        offset = int((pd.Timestamp(self.start) - series.dates[0]).days)
        return offset if offset >= 0 else None

    def filtered(self, y: np.ndarray) -> dict:
        """statsforecast's model dictionary after filtering ``y`` (from this spec's first day)
        with the fitted parameters: ``fitted[t]`` is the one-day forecast of ``y[t]`` from the
        days before it, ``states[-1]`` the state after the last day."""
        from statsforecast.ets import forward_ets

        with np.errstate(all="ignore"):
            model = forward_ets(self._statsforecast_model(), y.astype(float))
        model["sigma2"] = self.sigma2  # the fit's variance, not re-estimated on later days
        return model

    def one_day(self, y: np.ndarray, day_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and sd ``(len(day_index),)`` of the one-day forecast of each ``y[day]`` from
        ``y[:day]`` (indices from this spec's first day; a day may be ``len(y)``, the day
        after the last). Normal, as statsforecast's own intervals at one day ahead: sd
        ``sqrt(sigma2)``, times the forecast for multiplicative errors."""
        day_index = np.asarray(day_index)
        last = int(day_index.max())
        # Filtering through `last` needs y[last]; the day after the data reads a placeholder
        # that only moves the states after its own forecast (positive: a multiplicative
        # model's filter stops at a day <= 0).
        placeholder = max(float(np.mean(y[-SEASON_LENGTH:])), 1.0) if len(y) else 1.0
        padded = np.append(y[:last], placeholder) if last >= len(y) else y[: last + 1]
        mean = self.filtered(padded)["fitted"][day_index]
        sd = math.sqrt(self.sigma2) * (np.abs(mean) if self.components[0] == "M" else np.ones_like(mean))
        return mean, sd

    def paths(self, y: np.ndarray, horizon: int, num_paths: int, seed: int) -> np.ndarray:
        """``num_paths`` joint sample paths ``(num_paths, horizon)`` of the days after ``y``."""
        from statsforecast.ets import simulate_ets

        model = self.filtered(y)
        if math.isnan(self.par[3]):
            # An undamped trend is stored with phi NaN, which statsforecast's fit, filter and
            # forecast read as 1 but its simulate_ets (2.1) reads as 0: that would drop the
            # trend from every path and narrow their spread.
            model["par"] = np.array(self.par[:3] + (1.0,) + self.par[4:])
        with np.errstate(all="ignore"):
            return simulate_ets(model, horizon, num_paths, seed=seed, error_distribution="normal")


@dataclass
class EtsPool:
    """Per-series ETS and the weight ``weight`` of its share of the served samples.

    ``specs``: series id -> its fitted ETS (None: the network alone for that series).
    ``whole_units``: samples are rounded to whole units (count targets); ``non_negative``:
    clipped at 0 (demand).
    """

    weight: float
    specs: dict[str, EtsSpec | None]
    whole_units: bool
    non_negative: bool

    @classmethod
    def fit(cls, panel: Panel, ends: list[int], whole_units: bool, non_negative: bool) -> EtsPool:
        """AutoETS per series on its days before ``ends[k]`` (:meth:`EtsSpec.fit`); the weight
        starts at 0 (:meth:`with_weight_chosen` sets it). Logs its progress on long panels."""
        specs = {}
        for k, (series, end) in enumerate(zip(panel.series, ends, strict=True)):
            specs[series.series_id] = EtsSpec.fit(series, end)
            if (k + 1) % 1000 == 0:
                log.info("ETS fitted to %d of %d series", k + 1, len(panel.series))
        missing = sum(spec is None for spec in specs.values())
        log.info("ETS fitted to %d series%s", len(specs) - missing,
                 f" ({missing} without a model: too short or constant)" if missing else "")
        return cls(0.0, specs, whole_units, non_negative)

    @property
    def active(self) -> bool:
        return self.weight > 0

    def _spec_and_history(self, series: Series) -> tuple[EtsSpec | None, np.ndarray, int]:
        """The series' spec, its target from the spec's first day, and that day's index; a
        series unknown to the pool (or starting after its spec) is fitted on its own history."""
        spec = self.specs.get(series.series_id)
        offset = None if spec is None else spec.offset_in(series)
        if offset is None:
            if series.series_id not in self.specs or spec is not None:
                log.warning("series %r: no stored ETS for its history; fitting one", series.series_id)
                spec = EtsSpec.fit(series, len(series))
            offset = 0
        return spec, series.target[offset:], offset

    def _as_demand(self, samples: np.ndarray) -> np.ndarray:
        if self.non_negative:
            samples = np.maximum(samples, 0.0)
        return np.round(samples) if self.whole_units else samples

    def one_day_samples(self, panel: Panel, days: dict[int, np.ndarray], num_samples: int,
                        fallback: np.ndarray) -> np.ndarray:
        """ETS samples ``(num_samples, N)`` of the given day indices of each series (by
        position in ``panel.series``, in the order of :meth:`ForecastModel.one_step`), each
        from the actuals before it: its Normal at evenly spaced levels. A series without an
        ETS takes the columns of ``fallback`` ``(K, N)`` (the network's own samples)."""
        standard = _standard_normal_levels(num_samples)
        columns, start = [], 0
        for k, day_index in days.items():
            stop = start + len(day_index)
            spec, y, offset = self._spec_and_history(panel.series[k])
            if spec is None:
                columns.append(resample(fallback[:, start:stop], num_samples))
            else:
                mean, sd = spec.one_day(y, np.asarray(day_index) - offset)
                columns.append(self._as_demand(mean[None, :] + standard * sd[None, :]))
            start = stop
        return np.concatenate(columns, axis=1)

    def path_samples(self, panel: Panel, horizon: int, num_paths: int, seed: int,
                     fallback: np.ndarray) -> np.ndarray:
        """ETS sample paths ``(num_paths, B * horizon)`` of the ``horizon`` days after each
        series' last day, series-major as :meth:`ForecastModel.forecast`; a series without an
        ETS takes ``fallback``'s last rows, the network's own paths that the pool replaces (so
        it keeps the network's paths)."""
        columns = []
        for b, series in enumerate(panel.series):
            spec, y, _ = self._spec_and_history(series)
            if spec is None:
                columns.append(fallback[fallback.shape[0] - num_paths:, b * horizon:(b + 1) * horizon])
            else:
                columns.append(self._as_demand(spec.paths(y, horizon, num_paths, seed + b)))
        return np.concatenate(columns, axis=1)

    def with_weight_chosen(self, ours: np.ndarray, theirs: np.ndarray, actuals: np.ndarray,
                           series_index: np.ndarray, scales: np.ndarray, min_t: float = MIN_GAIN_T) -> EtsPool:
        """This pool with the weight of :data:`WEIGHT_GRID` whose mixture of ``ours`` (the
        network's served samples) and ``theirs`` (ETS's) ``(K, N)`` has the lowest scaled
        CRPS on ``actuals`` ``(N,)`` (per series ``scales``, as the evaluation scores), if its
        gain over the network alone holds across series: the mean of the per-series gains at
        least ``min_t`` standard errors above 0; else weight 0 (a weight fitted to noise
        costs its ETS share of every sample path for nothing)."""
        per_series = np.stack([_per_series_crps(actuals, linear_pool(ours, theirs, w), series_index, scales)
                               for w in WEIGHT_GRID])  # (W, S)
        scores = per_series.mean(axis=1)
        best = int(np.argmin(scores))
        gains = per_series[0] - per_series[best]
        spread = gains.std(ddof=1) / math.sqrt(len(gains)) if len(gains) > 1 else math.inf
        t = gains.mean() / spread if spread > 0 else (math.inf if gains.mean() > 0 else 0.0)
        weight = float(WEIGHT_GRID[best]) if best > 0 and t >= min_t else 0.0
        log.info("ETS pool weight %.2f (best %.2f: scaled CRPS %.4f, its gain %.1f standard errors over %d series; "
                 "the network alone %.4f, ETS alone %.4f) on %d days", weight, WEIGHT_GRID[best], scores[best],
                 t if best > 0 else 0.0, len(gains), scores[0], scores[-1], len(actuals))
        return EtsPool(weight, self.specs, self.whole_units, self.non_negative)

    def to_dict(self) -> dict:
        return {"weight": self.weight, "whole_units": self.whole_units, "non_negative": self.non_negative,
                "specs": {sid: None if spec is None else asdict(spec) for sid, spec in self.specs.items()}}

    @classmethod
    def from_dict(cls, raw: dict) -> EtsPool:
        specs = {sid: None if spec is None else EtsSpec(**{**spec, "par": tuple(spec["par"])})
                 for sid, spec in raw["specs"].items()}
        return cls(float(raw["weight"]), specs, bool(raw["whole_units"]), bool(raw["non_negative"]))


# --- the statistical peers of the benchmarks -------------------------------------------
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

    """
    standard = _standard_normal_levels(num_samples)
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
