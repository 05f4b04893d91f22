"""Train: the evaluation fit (test days unseen), the refit on every day that is served,
and the PIT recalibration fitted on days the model never trained on."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import tf_keras

from pipeline_lib import registry
from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.features import (
    LazyWindows,
    actuals_for,
    fit_scalers,
    part_days,
    split_points,
    target_transform,
)
from pipeline_lib.data.validate import Panel
from pipeline_lib.errors import DataValidationError, TrainingDivergedError
from pipeline_lib.evaluation import metrics as m
from pipeline_lib.evaluation.calibration import HorizonRecalibration, PitRecalibration, recalibration_pit
from pipeline_lib.model.distribute import is_chief, make_strategy
from pipeline_lib.model.forecast import ForecastModel, OneStepForecaster, SampledForecast
from pipeline_lib.model.heads import HEADS
from pipeline_lib.model.statistical import EtsPool
from pipeline_lib.model.training import TrainingResult, train_model
from pipeline_lib.stages.evaluation import scored_panel

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """A trained model and how it was trained. ``evaluation_fit``: for a refit (the served
    model), the training of the evaluation fit whose epoch count and holdout it reuses."""

    model: ForecastModel
    training: TrainingResult
    evaluation_fit: TrainingResult | None = None


def train(config: PipelineConfig, panel: Panel, progress: bool = True) -> TrainedModel:
    """The evaluation fit: scalers fitted on each series' training part, then the Bayesian
    LSTM (ELBO, early stopping on the validation days); the test days stay unseen, so its
    holdout metrics measure the training procedure (see :func:`refit`)."""
    fractional = next((s for s in panel.series if not np.array_equal(s.target, np.round(s.target))), None)
    head = HEADS.get(config.model.head)  # None for "auto", resolved from the data below
    if head is not None and head.needs_counts and fractional is not None:
        raise DataValidationError(f"{panel.source}: series {fractional.series_id!r} has non-integer targets; "
                                  f"model.head {config.model.head!r} needs whole numbers (use normal or student_t)")
    zero_share = float(np.mean(np.concatenate([s.target for s in panel.series]) == 0))
    model_config = config.resolved_model(targets_are_counts=fractional is None, zero_share=zero_share)
    if config.model.head == "auto" or config.model.trend_days is None:
        log.info("head: %s, trend over %d days (auto: %s targets, %.0f%% zero days)", model_config.head,
                 model_config.trend_days, "whole-number" if fractional is None else "fractional", 100 * zero_share)
    scalers, spec = fit_scalers(panel, config.window, target_transform(config.data.non_negative),
                                config.model.level_days,
                                weekday_profile=config.model.weekday_profile,
                                yearly_features=config.model.yearly_features,
                                trend_days=model_config.trend_days)
    train_windows = LazyWindows(panel, scalers, spec, config.window, "train")
    validation_windows = train_windows.for_part(panel, config.window, "validation")
    log.info("training on %d windows (%s per epoch), validating on %s of %d", len(train_windows),
             _at_most(config.train.windows_per_epoch, len(train_windows)),
             _at_most(config.train.validation_windows, len(validation_windows)), len(validation_windows))
    strategy = make_strategy(config.train.distribute, config.train.devices)
    # Python's, NumPy's and TensorFlow's generators: tf_keras draws the seeds of unseeded
    # initializers from Python's `random`, so TensorFlow's seed alone leaves the initial
    # weights different in every process.
    tf_keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():  # the network's variables must live on the strategy's devices
        model = ForecastModel.create(spec, scalers, model_config)
    try:
        result = train_model(model.network, train_windows, validation_windows, config.train, progress=progress,
                             strategy=strategy)
    except TrainingDivergedError as exc:
        record_failure(config, "train", exc)
        raise
    model = _as_served(config, model)
    # One Monte Carlo pass over the validation days serves the recalibration and the pool.
    needs_raw = config.evaluation.recalibrate or config.evaluation.pool_with_ets
    raw = calibration_days_forecast(config, model, panel, "validation") if needs_raw else None
    if config.evaluation.recalibrate:
        model.calibration = fit_recalibration(config, model, panel, raw=raw)
    if config.evaluation.recalibrate_paths:
        model.path_calibration = fit_path_recalibration(config, model, panel)
    if config.evaluation.pool_with_ets:
        # ETS fitted on the days before the validation days, so its forecasts of them are
        # out of sample like the network's; the refit chooses its weight on the holdout with
        # it. Only the scored series need one, unless this evaluation fit is what is served.
        fit_panel = scored_panel(config, panel) if config.train.refit else panel
        ends = [split_points(s, config.window).validation_start for s in fit_panel.series]
        bank = EtsPool.fit(fit_panel, ends, whole_units=HEADS[model_config.head].needs_counts,
                           non_negative=config.data.non_negative)
        model.pool = choose_pool_weight(config, model, model.calibration, bank, panel, "validation", raw=raw)
    return TrainedModel(model=model, training=result)


def _at_most(limit: int | None, available: int) -> str:
    return "all" if limit is None or limit >= available else str(limit)


def _as_served(config: PipelineConfig, model: ForecastModel) -> ForecastModel:
    """The weights as the registry will store them (8-bit with ``serving.quantized_posterior``),
    so recalibration, evaluation and the gate judge the model that is served."""
    return model.quantized_copy() if config.serving.quantized_posterior else model


def refit(config: PipelineConfig, panel: Panel, fitted: TrainedModel, progress: bool = True) -> TrainedModel:
    """The model that is served: the evaluation fit's configuration trained on *every* day
    (scalers refitted too) for the number of epochs its early stopping chose, so the
    weights learn the latest weeks, which the evaluation fit held out (scikit-learn's
    ``refit=True``). Its recalibration is fitted on the evaluation fit's out-of-sample
    predictions of the holdout (validation and test days): no refitted model has unseen days
    left to calibrate on. The holdout metrics of ``fitted`` describe this model's procedure.
    """
    # The evaluation fit's model config: its resolved head.
    model, result = _fit_on_every_day(config, panel, fitted.model, fitted.training.best_epoch, progress,
                                      warm_start=False)
    needs_raw = config.evaluation.recalibrate or fitted.model.pool is not None
    raw = calibration_days_forecast(config, fitted.model, panel, "holdout") if needs_raw else None
    if config.evaluation.recalibrate:
        model.calibration = fit_recalibration(config, fitted.model, panel, part="holdout", raw=raw)
    if config.evaluation.recalibrate_paths:
        model.path_calibration = fit_path_recalibration(config, fitted.model, panel, part="holdout")
    if fitted.model.pool is not None:
        # The weight from the evaluation fit's forecasts of the holdout and those of the ETS it
        # carries (fitted before the holdout); the ETS served is refitted on every day, like
        # the network (not at all when the weight is 0: nothing of it would be served).
        chosen = choose_pool_weight(config, fitted.model, model.calibration, fitted.model.pool, panel, "holdout",
                                    raw=raw)
        model.pool = replace(chosen, specs={})
        if chosen.active:
            refitted = EtsPool.fit(panel, [len(s) for s in panel.series], chosen.whole_units, chosen.non_negative)
            model.pool = replace(refitted, weight=chosen.weight)
    return TrainedModel(model=model, training=result, evaluation_fit=fitted.training)


def warm_refit(config: PipelineConfig, panel: Panel, start_from: ForecastModel, epochs: int,
               progress: bool = False) -> ForecastModel:
    """A retrain on a fixed budget: ``epochs`` epochs on every day of ``panel``, starting
    from ``start_from``'s weights and keeping its scalers, so the weights see inputs scaled
    as they were trained on (each window is centred on its own last week, which absorbs a
    level shift anyway). Refitting the scalers on every day instead cost 4-10% more emergency
    replenishments in the bundled simulation (benchmarks/RESULTS.md). Its recalibration is
    carried over (no unseen days are left to fit one on). What the closed-loop simulation
    gives every policy's retrain (:mod:`pipeline_lib.monitoring.simulation`); nothing is
    logged or registered."""
    # The posterior it starts from was trained at the full KL weight: a ramp from a tenth of
    # it would let the first epochs shrink the weight uncertainty unchecked.
    steady = config.updated(train={"kl_annealing": "none"})
    model, _ = _fit_on_every_day(steady, panel, start_from, epochs, progress, warm_start=True)
    model.calibration, model.path_calibration = start_from.calibration, start_from.path_calibration
    model.pool = start_from.pool  # its ETS runs forward over the new days with the parameters it has
    return model


def _fit_on_every_day(config: PipelineConfig, panel: Panel, base: ForecastModel, epochs: int, progress: bool,
                      warm_start: bool) -> tuple[ForecastModel, TrainingResult]:
    """``base``'s model config trained on every day of ``panel`` for ``epochs`` epochs: cold,
    with scalers fitted on every day (a divergence is recorded in MLflow), or, with
    ``warm_start``, from ``base``'s weights and scalers."""
    if warm_start:
        scalers, spec = base.scalers, base.spec
        unknown = [s.series_id for s in panel.series if s.series_id not in scalers]
        if unknown:
            raise ValueError(f"a warm refit keeps the model's scalers, and {len(unknown)} series have none "
                             f"(first: {unknown[0]!r}); train from scratch to add series")
    else:
        scalers, spec = fit_scalers(panel, config.window, target_transform(config.data.non_negative),
                                    config.model.level_days, part="all",
                                    weekday_profile=config.model.weekday_profile,
                                    yearly_features=config.model.yearly_features,
                                    trend_days=base.model_config.trend_days)
    windows = LazyWindows(panel, scalers, spec, config.window, "all")
    log.info("refitting on all %d windows (%s per epoch) for %d epochs%s", len(windows),
             _at_most(config.train.windows_per_epoch, len(windows)), epochs,
             " from the current weights" if warm_start else "")
    strategy = make_strategy(config.train.distribute, config.train.devices)
    tf_keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        model = ForecastModel.create(spec, scalers, base.model_config)
    if warm_start:
        model.network.set_weights(base.network.get_weights())
    try:
        result = train_model(model.network, windows, None, config.train, progress=progress, strategy=strategy,
                             epochs=epochs)
    except TrainingDivergedError as exc:
        if not warm_start:
            record_failure(config, "refit", exc)
        raise
    return _as_served(config, model), result


def fit_served(config: PipelineConfig, panel: Panel, progress: bool = True) -> TrainedModel:
    """What a training run serves for ``panel``: the refit on every day (``train.refit``),
    else the evaluation fit itself."""
    fitted = train(config, panel, progress=progress)
    return refit(config, panel, fitted, progress=progress) if config.train.refit else fitted


def backtest_model(config: PipelineConfig, panel: Panel, progress: bool = True) -> TrainedModel:
    """The model a backtest of ``panel``'s test days judges: with ``train.refit``, the served
    model trained (evaluation fit + refit) on every day before them, as a training run on
    that day would have made it; without, the evaluation fit of ``panel`` itself (trained on
    its training part, early-stopped on its validation days)."""
    if not config.train.refit:
        return train(config, panel, progress=progress)
    n_test = config.window.test_days
    known = panel.truncate([len(s) - n_test for s in panel.series])
    return fit_served(config, known, progress=progress)


def record_failure(config: PipelineConfig, stage: str, error: BaseException) -> str | None:
    """Leave a FAILED run in MLflow saying which stage stopped and why (nothing registered);
    the chief's to leave, in a multi-worker training."""
    if not is_chief(config.train.distribute):
        return None
    registry.configure(config.tracking_uri)
    return registry.record_failed_run(config.registry.experiment_name, config.artifact_root,
                                      f"failed-{stage}-{datetime.now(UTC):%Y%m%d-%H%M%S}", stage, str(error))


def fit_path_recalibration(config: PipelineConfig, model: ForecastModel, panel: Panel,
                           part: str = "validation") -> HorizonRecalibration | None:
    """Recalibration of sample paths by days ahead (:class:`HorizonRecalibration`) from
    ``model``'s raw paths over days it never trained on: from the first day of the
    ``validation`` days through all of them, or for the ``holdout`` also from the first test
    day through the test days; the series a training run scores. None when too few points."""
    panel = scored_panel(config, panel)
    blocks = [(lambda p: p.validation_start, config.window.validation_days)]
    if part == "holdout":
        blocks.append((lambda p: p.test_start, config.window.test_days))
    pits, days_ahead = [], []
    for block, (origin, steps) in enumerate(blocks):
        keep = [origin(split_points(s, config.window)) for s in panel.series]
        sampled = model.forecast(panel.truncate(keep), steps, config.evaluation.num_samples,
                                 seed=config.evaluation.seed + 2 + block, calibrated=False)
        actuals = np.concatenate([s.target[k:k + steps] for s, k in zip(panel.series, keep, strict=True)])
        pits.append(recalibration_pit(actuals, sampled.samples, config.evaluation.recalibrate_tails))
        days_ahead.append(np.tile(np.arange(1, steps + 1), len(panel.series)))
    return HorizonRecalibration.fit(np.concatenate(pits), np.concatenate(days_ahead),
                                    tails=config.evaluation.recalibrate_tails)


def calibration_days_forecast(config: PipelineConfig, model: OneStepForecaster, panel: Panel,
                              part: str) -> SampledForecast:
    """``model``'s raw one-day forecasts of the ``part`` days (``validation`` or ``holdout``)
    of the series a training run scores (:func:`scored_panel`), seed ``evaluation.seed + 1``:
    what the recalibration and the pool's weight are fitted on."""
    panel = scored_panel(config, panel)
    return model.one_step(panel, part_days(panel, config.window, part), config.evaluation.num_samples,
                          seed=config.evaluation.seed + 1, calibrated=False)


def choose_pool_weight(config: PipelineConfig, model: ForecastModel, calibration: PitRecalibration | None,
                       pool: EtsPool, panel: Panel, part: str, raw: SampledForecast | None = None) -> EtsPool:
    """``pool`` with the weight whose mixture with ``model``'s one-day forecasts (recalibrated
    by ``calibration``, as served) scores best on the ``part`` days (``validation`` or
    ``holdout``) of the series a training run scores; ``pool``'s ETS must have been fitted
    before those days, as ``model`` was. ``raw``: :func:`calibration_days_forecast`, if
    already computed."""
    raw = raw if raw is not None else calibration_days_forecast(config, model, panel, part)
    panel = scored_panel(config, panel)
    days = part_days(panel, config.window, part)
    ours = raw.samples if calibration is None else calibration.apply(raw.samples, raw.series_ids)
    theirs = pool.one_day_samples(panel, days, ours.shape[0], ours)
    actuals, series_index = actuals_for(panel, days)
    scales = m.seasonal_naive_scales([s.target for s in panel.series], [int(d[0]) for d in days.values()])
    return pool.with_weight_chosen(ours, theirs, actuals, series_index, scales)


def fit_recalibration(config: PipelineConfig, model: OneStepForecaster, panel: Panel,
                      part: str = "validation", raw: SampledForecast | None = None) -> PitRecalibration:
    """PIT recalibration from ``model``'s one-day-ahead forecasts of days it never trained
    on: the ``validation`` days (an evaluation fit, which keeps the test days for scoring),
    or the ``holdout`` (validation + test days, for the refit served in its place), of the
    series a training run scores (:func:`scored_panel`); with ``recalibrate_by_series``
    each of them also gets its own map, shrunk towards the global one. ``raw``:
    :func:`calibration_days_forecast`, if already computed."""
    sampled = raw if raw is not None else calibration_days_forecast(config, model, panel, part)
    panel = scored_panel(config, panel)
    actuals, _ = actuals_for(panel, part_days(panel, config.window, part))
    tails = config.evaluation.recalibrate_tails
    return PitRecalibration.fit(recalibration_pit(actuals, sampled.samples, tails), tails=tails,
                                series_ids=sampled.series_ids if config.evaluation.recalibrate_by_series else None)

