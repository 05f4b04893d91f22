"""A trained forecaster with its scalers, saved and loaded as plain files, producing
forecast tables in the output contract (units, not model space).

About 400 lines: ``ForecastModel`` is the one object that is served, so saving, loading,
one-day-ahead samples and sample paths (recalibrated, pooled with ETS) share its scalers
and feature spec here.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from pipeline_lib.config import ModelConfig
from pipeline_lib.contract import (
    FORECAST_COLUMNS,
    QUANTILE_COLUMNS,
    QUANTILE_LEVELS,
    sample_quantiles,
)
from pipeline_lib.data.features import (
    FeatureSpec,
    SeriesScaler,
    calendar_features,
    center_windows,
    epoch_day,
    feature_rows,
    fit_scaler,
    inverse_transform,
    target_offsets,
    window_context,
    windows_for_days,
)
from pipeline_lib.data.validate import Panel, Series
from pipeline_lib.errors import DataValidationError, ModelLoadError
from pipeline_lib.evaluation.calibration import HorizonRecalibration, PitRecalibration
from pipeline_lib.model.heads import UNITS_SPACE
from pipeline_lib.model.network import BayesianForecaster
from pipeline_lib.model.predict import sample_one_step, sample_paths
from pipeline_lib.model.quantize import dequantize, quantize
from pipeline_lib.model.statistical import POOL_FILE, EtsPool, linear_pool, pool_paths

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.npz"
QUANTIZED_WEIGHTS_FILE = "weights.int8.npz"  # instead of WEIGHTS_FILE: see pipeline_lib.model.quantize
CONFIG_FILE = "model.json"
SCALERS_FILE = "scalers.json"
CALIBRATION_FILE = "calibration.json"
PATH_CALIBRATION_FILE = "path_calibration.json"


@dataclass(frozen=True)
class SampledForecast:
    """Predictive samples in units for ``N`` (series, day) pairs.

    ``samples``: ``(K, N)``; ``series_ids``/``dates``: ``(N,)``; ``epistemic_share``: share
    of the model-space predictive variance due to weight uncertainty, ``(N,)`` (NaN for
    multi-day paths, where the split is not defined per day).
    """

    samples: np.ndarray
    series_ids: np.ndarray
    dates: np.ndarray
    epistemic_share: np.ndarray

    def to_frame(self, model_version: str) -> pd.DataFrame:
        return forecast_table(self.samples, self.series_ids, self.dates, model_version)

    @classmethod
    def concat(cls, parts: list[SampledForecast]) -> SampledForecast:
        """The forecasts of consecutive chunks of series as one (columns in chunk order)."""
        return cls(samples=np.concatenate([p.samples for p in parts], axis=1),
                   series_ids=np.concatenate([p.series_ids for p in parts]),
                   dates=np.concatenate([p.dates for p in parts]),
                   epistemic_share=np.concatenate([p.epistemic_share for p in parts]))


def pooled_one_step(model: OneStepForecaster, served: SampledForecast, panel: Panel,
                    days: dict[int, np.ndarray]) -> SampledForecast:
    """``served`` (the calibrated one-day samples of ``days``) mixed with ``model``'s pool of
    per-series ETS at its weight; unchanged without one (or at weight 0)."""
    if model.pool is None or not model.pool.active:
        return served
    ets = model.pool.one_day_samples(panel, days, served.samples.shape[0], served.samples)
    return replace(served, samples=linear_pool(served.samples, ets, model.pool.weight))


def forecast_table(samples: np.ndarray, series_ids, dates, model_version: str) -> pd.DataFrame:
    """Samples ``(K, N)`` -> one contract row per column of ``samples``."""
    quantiles = sample_quantiles(samples, QUANTILE_LEVELS)  # (Q, N), monotone in level
    frame = pd.DataFrame({
        "series_id": np.asarray(series_ids, dtype=str),
        "date": pd.to_datetime(np.asarray(dates)),
        "mean": samples.mean(axis=0),
        "std": samples.std(axis=0),
        "model_version": str(model_version),
    })
    quantile_frame = pd.DataFrame(quantiles.T, columns=list(QUANTILE_COLUMNS))
    return pd.concat([frame, quantile_frame], axis=1)[list(FORECAST_COLUMNS)]


class OneStepForecaster(Protocol):
    """What the evaluation needs of a model: one-day-ahead samples, an optional
    recalibration and an optional pool with per-series ETS (a :class:`ForecastModel`, a
    distilled student, an MCMC output layer)."""

    calibration: PitRecalibration | None
    pool: EtsPool | None

    def one_step(self, panel: Panel, days: dict[int, np.ndarray], num_samples: int,
                 samples_per_draw: int = 10, seed: int = 0, calibrated: bool = True) -> SampledForecast: ...


@dataclass(frozen=True)
class OneStepInputs:
    """Centred windows ``(N, T, F)`` and, per window ``(N,)``: its level, its series' scaler
    location and scale, series id and target date."""

    windows: np.ndarray
    levels: np.ndarray
    locs: np.ndarray
    scales: np.ndarray
    series_ids: np.ndarray
    dates: np.ndarray
    ceilings: np.ndarray  # (N,) largest sample allowed, units (SeriesScaler.sample_ceiling)
    shifts: np.ndarray  # (N,) the target day's weekday offset, part of ``levels``

    @property
    def context(self) -> np.ndarray:
        return window_context(self.locs, self.scales, self.levels - self.shifts, self.shifts)


@dataclass(frozen=True)
class ModelFiles:
    """A saved :class:`ForecastModel` as bytes (a few hundred kB), so a model that is not
    registered yet can be shipped to task-runner workers in other processes or on other
    hosts. Hashable, so workers can cache the loaded model per content."""

    files: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, model: ForecastModel) -> ModelFiles:
        with tempfile.TemporaryDirectory() as tmp:
            model.save(Path(tmp))
            return cls(tuple(sorted((p.name, p.read_bytes()) for p in Path(tmp).iterdir())))

    def load(self) -> ForecastModel:
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in self.files:
                (Path(tmp) / name).write_bytes(content)
            return ForecastModel.load(Path(tmp))


@dataclass
class ForecastModel:
    """The network plus everything needed to turn raw history into its inputs and back.

    ``calibration`` (fitted after training on the validation days) remaps the predictive
    samples so their quantiles are calibrated; ``None`` serves the raw distribution.
    ``path_calibration`` does the same for the days 2.. of sample paths, by days ahead
    (without it they take ``calibration`` too).
    ``quantized``: the weights are an 8-bit posterior's (:meth:`quantized_copy`) and are
    saved as such.
    ``pool``: per-series ETS mixed into the calibrated forecast at its weight
    (:mod:`pipeline_lib.model.statistical`); ``None`` or weight 0 serves the network alone.
    """

    network: BayesianForecaster
    spec: FeatureSpec
    scalers: dict[str, SeriesScaler]
    model_config: ModelConfig
    calibration: PitRecalibration | None = None
    quantized: bool = False
    path_calibration: HorizonRecalibration | None = None
    pool: EtsPool | None = None

    @classmethod
    def create(cls, spec: FeatureSpec, scalers: dict[str, SeriesScaler], model_config: ModelConfig) -> ForecastModel:
        network = BayesianForecaster(spec.num_features, model_config).build_for(spec.context_length)
        return cls(network, spec, scalers, model_config)

    # --- persistence -------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.quantized:
            np.savez(directory / QUANTIZED_WEIGHTS_FILE, **self._quantized_weights())
        else:
            np.savez(directory / WEIGHTS_FILE, *self.network.get_weights())
        (directory / CONFIG_FILE).write_text(json.dumps(
            {"model_config": self.model_config.model_dump(mode="json"), "feature_spec": self.spec.to_dict()},
            indent=2))
        (directory / SCALERS_FILE).write_text(json.dumps(
            {sid: vars(sc) for sid, sc in self.scalers.items()}, indent=1))
        if self.calibration is not None:
            (directory / CALIBRATION_FILE).write_text(json.dumps(vars(self.calibration)))
        if self.path_calibration is not None:
            (directory / PATH_CALIBRATION_FILE).write_text(json.dumps(self.path_calibration.to_dict()))
        if self.pool is not None:
            (directory / POOL_FILE).write_text(json.dumps(self.pool.to_dict()))
        return directory

    @classmethod
    def load(cls, directory: Path) -> ForecastModel:
        directory = Path(directory)
        try:
            meta = json.loads((directory / CONFIG_FILE).read_text())
            scalers = {
                sid: SeriesScaler(**{**raw, "covariate_loc": tuple(raw["covariate_loc"]),
                                     "covariate_scale": tuple(raw["covariate_scale"]),
                                     "weekday_profile": tuple(raw.get("weekday_profile", ()))})
                for sid, raw in json.loads((directory / SCALERS_FILE).read_text()).items()
            }
            quantized = (directory / QUANTIZED_WEIGHTS_FILE).exists()
            if quantized:
                with np.load(directory / QUANTIZED_WEIGHTS_FILE) as stored:
                    weights = dequantize(stored)
            else:
                with np.load(directory / WEIGHTS_FILE) as stored:
                    weights = [stored[f"arr_{i}"] for i in range(len(stored.files))]
            model = cls.create(FeatureSpec.from_dict(meta["feature_spec"]), scalers,
                               ModelConfig.model_validate(meta["model_config"]))
            model.network.set_weights(weights)
            model.quantized = quantized
            if (directory / CALIBRATION_FILE).exists():
                raw = json.loads((directory / CALIBRATION_FILE).read_text())
                model.calibration = PitRecalibration.from_dict(raw)
            if (directory / PATH_CALIBRATION_FILE).exists():
                model.path_calibration = HorizonRecalibration.from_dict(
                    json.loads((directory / PATH_CALIBRATION_FILE).read_text()))
            if (directory / POOL_FILE).exists():
                model.pool = EtsPool.from_dict(json.loads((directory / POOL_FILE).read_text()))
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise ModelLoadError(
                f"{directory}: model files missing or corrupt ({exc.__class__.__name__}: {exc})") from None
        return model

    def _quantized_weights(self) -> dict[str, np.ndarray]:
        return quantize([w.name for w in self.network.weights], self.network.get_weights())

    def quantized_copy(self) -> ForecastModel:
        """This model with its posterior means and scales rounded to what 8 bits store
        (:mod:`pipeline_lib.model.quantize`): it forecasts as the saved and reloaded quantized
        model will (saving quantizes again; the weights agree to float32 rounding), and saves
        in 8 bits."""
        copy = ForecastModel.create(self.spec, self.scalers, self.model_config)
        copy.network.set_weights(dequantize(self._quantized_weights()))
        copy.calibration, copy.path_calibration, copy.quantized = self.calibration, self.path_calibration, True
        copy.pool = self.pool
        return copy

    # --- inputs --------------------------------------------------------------------------
    def scaler_for(self, series: Series) -> SeriesScaler:
        """The training scaler; a series unseen in training is scaled on its own history."""
        scaler = self.scalers.get(series.series_id)
        if scaler is None:
            log.warning("series %r was not in the training data; scaling it on its own history", series.series_id)
            scaler = fit_scaler(series, len(series), self.spec.transform, self.spec.weekday_profile)
        return scaler

    def _check_covariates(self, panel: Panel) -> None:
        if tuple(panel.covariate_names) != tuple(self.spec.covariate_names):
            raise DataValidationError(
                f"{panel.source}: covariates {list(panel.covariate_names)} differ from the model's "
                f"{list(self.spec.covariate_names)}"
            )
        if tuple(panel.known_covariates) != tuple(self.spec.known_covariates):
            raise DataValidationError(
                f"{panel.source}: the model reads {list(self.spec.known_covariates)} as known in advance, the data "
                f"declares {list(panel.known_covariates)}; set data.known_covariates as in training"
            )

    # --- forecasting ---------------------------------------------------------------------
    def one_step_inputs(self, panel: Panel, days: dict[int, np.ndarray]) -> OneStepInputs:
        """The centred windows of the given day indices of each series (by position in
        ``panel.series``), each ending the day before its target day, and how to map the
        head's samples for them back to units."""
        self._check_covariates(panel)
        inputs, offsets, locs, scales, ceilings, ids, dates = [], [], [], [], [], [], []
        for k, day_index in days.items():
            series = panel.series[k]
            scaler = self.scaler_for(series)
            rows = feature_rows(series, scaler, self.spec)
            inputs.append(windows_for_days(rows, day_index, self.spec.context_length))
            offsets.append(target_offsets(scaler, self.spec, series, day_index))
            locs.append(np.full(len(day_index), scaler.loc))
            scales.append(np.full(len(day_index), scaler.scale))
            ceilings.append(np.full(len(day_index), scaler.sample_ceiling))
            ids.append(np.full(len(day_index), series.series_id, dtype=object))
            dates.append(series.dates[0] + pd.to_timedelta(day_index, unit="D"))
        centred, levels, _ = center_windows(np.concatenate(inputs), self.spec.level_days, self.spec.trend_days,
                                            self.spec.trend_column)
        offsets = np.concatenate(offsets).astype(np.float32)
        return OneStepInputs(centred, levels + offsets, np.concatenate(locs), np.concatenate(scales),
                             np.concatenate(ids), np.concatenate([np.asarray(d) for d in dates]),
                             np.concatenate(ceilings), offsets)

    def one_step(self, panel: Panel, days: dict[int, np.ndarray], num_samples: int,
                 samples_per_draw: int = 10, seed: int = 0, calibrated: bool = True) -> SampledForecast:
        """One-day-ahead forecasts for the given day indices of each series (by position in
        ``panel.series``), each using the actuals up to the day before (rolling origin).
        ``calibrated=False`` returns the raw predictive samples even if a calibration (or a
        pool with ETS) exists."""
        inputs = self.one_step_inputs(panel, days)
        draws = sample_one_step(self.network, inputs.windows, num_samples, samples_per_draw, seed,
                                context=inputs.context)
        total = draws.epistemic_variance + draws.aleatoric_variance
        sampled = self.sampled_forecast(inputs, draws.samples, draws.epistemic_variance / np.maximum(total, 1e-12),
                                        self.calibration if calibrated else None)
        return pooled_one_step(self, sampled, panel, days) if calibrated else sampled

    def sampled_forecast(self, inputs: OneStepInputs, samples: np.ndarray, epistemic_share: np.ndarray,
                         calibration: PitRecalibration | None) -> SampledForecast:
        """Head-space samples ``(K, N)`` for ``inputs`` -> a forecast in units, recalibrated by
        ``calibration`` when given (also used by models that reuse these inputs: the
        distilled student, the MCMC output layer)."""
        units = self._to_units(samples, inputs.levels, inputs.locs, inputs.scales, inputs.ceilings)
        return SampledForecast(samples=units if calibration is None else calibration.apply(units, inputs.series_ids),
                               series_ids=inputs.series_ids, dates=inputs.dates, epistemic_share=epistemic_share)

    def forecast(self, panel: Panel, horizon: int, num_samples: int, seed: int = 0,
                 calibrated: bool = True) -> SampledForecast:
        """Joint sample paths for the ``horizon`` days after each series' last day (the
        calibration remaps each day's marginal and keeps every path's ranks)."""
        self._check_covariates(panel)
        L = self.spec.context_length
        inputs, future, offsets, locs, scales, ceilings, ids, dates = [], [], [], [], [], [], [], []
        for series in panel.series:
            scaler = self.scaler_for(series)
            ceilings.append(np.full(horizon, scaler.sample_ceiling))
            n = len(series)
            offsets.append(target_offsets(scaler, self.spec, series, n + np.arange(horizon)))
            rows = feature_rows(series, scaler, self.spec)
            inputs.append(windows_for_days(rows, np.array([n]), L)[0])
            # Known parts of the rows of days n+1 .. n+horizon: lagged covariates stay at their
            # last value, those known in advance follow the plan, the calendar advances, the
            # lagged target is filled in by sampling.
            template = np.repeat(rows[-1:], horizon, axis=0)
            template[:, self.spec.calendar_columns] = calendar_features(
                epoch_day(series.dates[-1]) + 2 + np.arange(horizon), self.spec)
            known = self.spec.known_covariate_index
            if known:
                planned = scaler.scale_covariates(series.plan(horizon + 1)[1:])
                template[:, self.spec.known_covariate_columns] = planned[:, known]
            future.append(template)
            locs.append(np.full(horizon, scaler.loc))
            scales.append(np.full(horizon, scaler.scale))
            ids.append(np.full(horizon, series.series_id, dtype=object))
            dates.append(np.asarray(series.dates[-1] + pd.to_timedelta(np.arange(1, horizon + 1), unit="D")))
        # Paths run in the centred space of their origin window (one level per series, kept
        # for every day of the path, so fed-back samples stay comparable with the lags).
        # The weekday offsets of each day come on top (a path's sampled value, net of them,
        # is exactly the lag the next day reads).
        # With a trend, day h's centre moves (h - 1) slopes on from day 1's.
        centred, first_levels, slopes = center_windows(np.stack(inputs), self.spec.level_days, self.spec.trend_days,
                                                       self.spec.trend_column)
        levels = first_levels[:, None] + slopes[:, None] * np.arange(horizon, dtype=np.float32)  # (B, H)
        future = np.stack(future, axis=1)  # (H, B, F)
        if self.spec.trend_column is not None:  # every day of a path reads its origin's slope
            future[:, :, self.spec.trend_column] = (slopes * L)[None, :]
        offsets = np.stack(offsets)  # (B, H)
        day_levels = levels + offsets
        locs, scales = np.concatenate(locs), np.concatenate(scales)  # (B * H,), constant per series
        context = np.stack([window_context(locs[::horizon], scales[::horizon], levels[:, h], offsets[:, h])
                            for h in range(horizon)])  # (H, B, 3)
        paths = sample_paths(self.network, centred, future, num_samples, seed, context=context)
        flat = paths.reshape(num_samples, -1)  # (K, B * H), series-major like ids/dates
        units = self._to_units(flat, day_levels.reshape(-1), locs, scales, np.concatenate(ceilings))
        ids = np.concatenate(ids)
        samples = self._calibrate_paths(units, np.tile(np.arange(1, horizon + 1), len(panel.series)), ids, calibrated)
        if calibrated and self.pool is not None and self.pool.active:
            n_ets = num_samples - int(round(num_samples * (1.0 - self.pool.weight)))
            samples = pool_paths(samples, self.pool.path_samples(panel, horizon, n_ets, seed, samples),
                                 self.pool.weight)
        return SampledForecast(
            samples=samples,
            series_ids=ids,
            dates=np.concatenate(dates),
            epistemic_share=np.full(flat.shape[1], np.nan),
        )

    def _calibrate_paths(self, samples: np.ndarray, days_ahead: np.ndarray, series_ids: np.ndarray,
                         calibrated: bool) -> np.ndarray:
        """Path samples ``(K, N)`` recalibrated: day 1 by ``calibration`` (its series' map, if
        it has maps by series), later days by ``path_calibration`` when there is one (else by
        ``calibration`` as well)."""
        if not calibrated:
            return samples
        if self.path_calibration is None:
            return samples if self.calibration is None else self.calibration.apply(samples, series_ids)
        out = self.path_calibration.apply(samples, days_ahead)
        first = self.path_calibration.bucket_of(days_ahead) < 0
        if self.calibration is not None and first.any():
            out[:, first] = self.calibration.apply(samples[:, first], series_ids[first])
        return out

    def _to_units(self, samples: np.ndarray, levels: np.ndarray, locs: np.ndarray, scales: np.ndarray,
                  ceilings: np.ndarray) -> np.ndarray:
        """Head samples ``(K, N)`` -> units, at most ``ceilings`` ``(N,)``: a model-space head's
        samples are centred on each window's ``levels`` and standardised; a units head's
        samples already are counts."""
        if self.network.head.space == UNITS_SPACE:
            units = samples.astype(float)
        else:
            units = inverse_transform(samples + levels[None, :], locs[None, :], scales[None, :], self.spec.transform)
        return np.minimum(units, ceilings[None, :])
