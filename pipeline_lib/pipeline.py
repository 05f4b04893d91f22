"""The stages of the training pipeline as plain functions; ``flows/`` wraps them in Prefect.

ingest -> validate -> train -> evaluate (Monte Carlo, on the test split) -> promotion gate
-> register
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import tf_keras

from pipeline_lib import registry
from pipeline_lib.config import PipelineConfig
from pipeline_lib.contract import interval_columns
from pipeline_lib.data.features import (
    actuals_for,
    build_windows,
    fit_scalers,
    part_days,
    split_points,
)
from pipeline_lib.data.ingest import read_table
from pipeline_lib.data.validate import Panel, Series, minimum_series_days, validate_table
from pipeline_lib.errors import (
    DataValidationError,
    PipelineError,
    RegistryUnavailableError,
    TrainingDivergedError,
)
from pipeline_lib.evaluation import metrics as m
from pipeline_lib.evaluation.baselines import seasonal_naive_samples
from pipeline_lib.evaluation.calibration import PitRecalibration
from pipeline_lib.evaluation.gate import GateDecision, promotion_decision
from pipeline_lib.evaluation.plots import (
    calibration_plot,
    coverage_by_horizon_plot,
    fan_chart,
    pit_histogram,
    sharpness_calibration_scatter,
)
from pipeline_lib.evaluation.report import evaluate_samples, level_key, score_forecast_table
from pipeline_lib.model.distribute import make_strategy
from pipeline_lib.model.forecast import ForecastModel, OneStepForecaster, SampledForecast
from pipeline_lib.model.training import TrainingResult, train_model

log = logging.getLogger(__name__)

CANDIDATE_VERSION = "candidate"


# --- ingest and validate ---------------------------------------------------------------
def ingest(config: PipelineConfig) -> pd.DataFrame:
    return read_table(config.data)


def validate(config: PipelineConfig, raw: pd.DataFrame) -> Panel:
    return validate_table(raw, config.data, minimum_series_days(config.window))


def data_fingerprint(panel: Panel) -> dict:
    """What the model was trained on, to tell datasets apart in MLflow."""
    frame = panel.to_frame()
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()
    return {
        "source": panel.source,
        "sha256": digest,
        "rows": len(frame),
        "series": len(panel.series),
        "first_date": str(frame["date"].min().date()),
        "last_date": str(frame["date"].max().date()),
        "covariates": list(panel.covariate_names),
        "filled_days": panel.filled_days,
    }


# --- train -----------------------------------------------------------------------------
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
    if config.model.head == "count" and fractional is not None:
        raise DataValidationError(f"{panel.source}: series {fractional.series_id!r} has non-integer targets; "
                                  "model.head 'count' needs whole numbers (use normal or student_t)")
    zero_share = float(np.mean(np.concatenate([s.target for s in panel.series]) == 0))
    model_config = config.resolved_model(targets_are_counts=fractional is None, zero_share=zero_share)
    if config.model.head == "auto":
        log.info("head: %s (auto: %s targets, %.0f%% zero days)", model_config.head,
                 "whole-number" if fractional is None else "fractional", 100 * zero_share)
    transform = "log1p" if config.data.non_negative else "none"
    scalers, spec = fit_scalers(panel, config.window, transform, config.model.level_days,
                                weekday_profile=config.model.weekday_profile)
    train_windows = build_windows(panel, scalers, spec, config.window, "train")
    validation_windows = build_windows(panel, scalers, spec, config.window, "validation")
    log.info("training on %d windows, validating on %d", len(train_windows), len(validation_windows))
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
    if config.evaluation.recalibrate:
        model.calibration = fit_recalibration(config, model, panel)
    return TrainedModel(model=model, training=result)


def refit(config: PipelineConfig, panel: Panel, fitted: TrainedModel, progress: bool = True) -> TrainedModel:
    """The model that is served: the evaluation fit's configuration trained on *every* day
    (scalers refitted too) for the number of epochs its early stopping chose, so the
    weights learn the latest weeks, which the evaluation fit held out (scikit-learn's
    ``refit=True``). Its recalibration is fitted on the evaluation fit's out-of-sample
    predictions of the holdout (validation and test days): no refitted model has unseen days
    left to calibrate on. The holdout metrics of ``fitted`` describe this model's procedure.
    """
    transform = "log1p" if config.data.non_negative else "none"
    scalers, spec = fit_scalers(panel, config.window, transform, config.model.level_days, part="all",
                                weekday_profile=config.model.weekday_profile)
    windows = build_windows(panel, scalers, spec, config.window, "all")
    log.info("refitting on all %d windows for %d epochs", len(windows), fitted.training.best_epoch)
    strategy = make_strategy(config.train.distribute, config.train.devices)
    tf_keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():  # the evaluation fit's model config: its resolved head
        model = ForecastModel.create(spec, scalers, fitted.model.model_config)
    try:
        result = train_model(model.network, windows, None, config.train, progress=progress, strategy=strategy,
                             epochs=fitted.training.best_epoch)
    except TrainingDivergedError as exc:
        record_failure(config, "refit", exc)
        raise
    if config.evaluation.recalibrate:
        model.calibration = fit_recalibration(config, fitted.model, panel, part="holdout")
    return TrainedModel(model=model, training=result, evaluation_fit=fitted.training)


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
    known = truncate(panel, {k: len(s) - n_test for k, s in enumerate(panel.series)})
    return fit_served(config, known, progress=progress)


def record_failure(config: PipelineConfig, stage: str, error: BaseException) -> str | None:
    """Leave a FAILED run in MLflow saying which stage stopped and why (nothing registered)."""
    registry.configure(config.tracking_uri)
    return registry.record_failed_run(config.registry.experiment_name, config.artifact_root,
                                      f"failed-{stage}-{datetime.now(UTC):%Y%m%d-%H%M%S}", stage, str(error))


def fit_recalibration(config: PipelineConfig, model: OneStepForecaster, panel: Panel,
                      part: str = "validation") -> PitRecalibration:
    """PIT recalibration from ``model``'s one-day-ahead forecasts of days it never trained
    on: the ``validation`` days (an evaluation fit, which keeps the test days for scoring),
    or the ``holdout`` (validation + test days, for the refit served in its place)."""
    days = part_days(panel, config.window, part)
    sampled = model.one_step(panel, days, config.evaluation.num_samples, seed=config.evaluation.seed + 1,
                             calibrated=False)
    actuals, _ = actuals_for(panel, days)
    return PitRecalibration.fit(m.probability_integral_transform(actuals, sampled.samples))


# --- evaluate --------------------------------------------------------------------------
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


def seasonal_scales(panel: Panel, config: PipelineConfig) -> np.ndarray:
    """Per-series mean absolute seasonal-naive(7) error before the test window."""
    return np.array([
        m.seasonal_naive_scale(s.target[: split_points(s, config.window).test_start]) for s in panel.series
    ])


def evaluation_chunks(config: PipelineConfig, panel: Panel) -> list[Panel]:
    """Consecutive groups of ``runtime.chunk_series`` series: the units of the Monte Carlo
    evaluation that the training flow maps over Prefect tasks."""
    size = config.runtime.chunk_series
    return [replace(panel, series=panel.series[start:start + size]) for start in range(0, len(panel.series), size)]


def sample_test_chunk(config: PipelineConfig, model: OneStepForecaster, chunk: Panel, k: int) -> SampledForecast:
    """Raw (uncalibrated) one-day-ahead samples of every test day of the ``k``-th chunk,
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
    a calibration); ``uncalibrated_*`` describe the raw predictive distribution, side by side.
    """
    if raw is None:
        raw = SampledForecast.concat([sample_test_chunk(config, model, chunk, k)
                                      for k, chunk in enumerate(evaluation_chunks(config, panel))])
    days = part_days(panel, config.window, "test")
    actuals, series_index = actuals_for(panel, days)
    scales = seasonal_scales(panel, config)

    def score(samples):
        return evaluate_samples(actuals, samples, series_index, scales, config.evaluation.coverage_levels)

    served = raw
    metrics = {"epistemic_share": float(np.mean(raw.epistemic_share))}
    if model.calibration is not None:
        served = replace(raw, samples=model.calibration.apply(raw.samples))
        metrics.update({f"uncalibrated_{k}": v for k, v in score(raw.samples).items()})
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


# --- promotion gate --------------------------------------------------------------------
@dataclass(frozen=True)
class GateOutcome:
    decision: GateDecision
    champion_version: str | None
    champion_metrics: dict | None


def promotion_gate(config: PipelineConfig, panel: Panel, evaluation: Evaluation,
                   champion_failing: bool = False) -> GateOutcome:
    """Evaluate the current champion on the challenger's holdout and decide.

    ``champion_failing``: the monitoring retrains because the champion breached its
    coverage threshold (see :func:`promotion_decision`).

    With no champion yet the first version is promoted whatever the gate says (forecasting
    needs a champion); the gate's verdict is still recorded on the version.
    """
    registry.configure(config.tracking_uri)
    name = config.registry.model_name
    champion_version = registry.alias_version(name, registry.CHAMPION)
    champion_metrics = None
    if champion_version is not None:
        try:
            champion = registry.load_forecaster(registry.champion_uri(name))
            champion_metrics = evaluate(config, champion, panel).metrics
        except PipelineError as exc:
            decision = GateDecision(False, (f"champion v{champion_version} could not be evaluated on this "
                                            f"holdout ({exc}); promote by hand in the MLflow UI",))
            return GateOutcome(decision, champion_version, None)
    decision = promotion_decision(evaluation.metrics, champion_metrics, config.evaluation.nominal_level,
                                  config.evaluation.coverage_tolerance, champion_failing,
                                  config.monitoring.failing_crps_tolerance)
    if champion_version is None and not decision.promote:
        decision = GateDecision(True, decision.reasons + ("first version: promoted so forecasting can start",))
    return GateOutcome(decision, champion_version, champion_metrics)


# --- register --------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingOutcome:
    run_id: str
    run_url: str
    model_name: str
    version: str
    aliases: tuple[str, ...]
    metrics: dict
    gate: str = ""
    plot_uris: tuple[str, ...] = ()


def register(config: PipelineConfig, panel: Panel, trained: TrainedModel, evaluation: Evaluation,
             plots: list[Path], gate: GateOutcome) -> TrainingOutcome:
    """Log params, metrics and pictures; log and register the model; set aliases.

    The new version always gets ``challenger``; it gets ``champion`` when ``gate`` says so.
    The decision and its numbers are written on the version (tags and description).
    """
    registry.configure(config.tracking_uri)
    try:
        return _register(config, panel, trained, evaluation, plots, gate)
    except registry.connection_errors() as exc:
        raise RegistryUnavailableError(
            f"MLflow failed while registering ({registry.describe_error(exc)}); the run is marked FAILED, "
            "no model version was kept and the aliases are unchanged") from exc


def _register(config: PipelineConfig, panel: Panel, trained: TrainedModel, evaluation: Evaluation,
              plots: list[Path], gate: GateOutcome) -> TrainingOutcome:
    experiment_id = registry.ensure_experiment(config.registry.experiment_name, config.artifact_root)
    run_name = f"train-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    versions: list[str] = []
    # A failure inside the block marks the run FAILED (MLflow's context manager); a version
    # created before the failure is deleted so no half-described version is left behind.
    # ``champion`` is moved last, so until then the old champion keeps serving.
    with registry.training_run(experiment_id, run_name, tags={"pipeline": "training"}) as run:
        try:
            version, aliases, plot_uris = _log_and_register(config, panel, trained, evaluation, plots, gate, run,
                                                            on_version=versions.append)
        except BaseException:
            for created in versions:
                _delete_quietly(config.registry.model_name, created)
            raise
        url = registry.run_url(run)
    return TrainingOutcome(run.info.run_id, url, config.registry.model_name, version, tuple(aliases),
                           evaluation.metrics, gate.decision.summary(), plot_uris)


def _delete_quietly(model_name: str, version: str) -> None:
    try:
        registry.delete_version(model_name, version)
        log.warning("deleted model version %s of %s after a failure while registering it", version, model_name)
    except registry.connection_errors() as exc:
        log.error("could not delete the half-registered version %s of %s: %s", version, model_name, exc)


def _log_and_register(config: PipelineConfig, panel: Panel, trained: TrainedModel, evaluation: Evaluation,
                      plots: list[Path], gate: GateOutcome, run, on_version) -> tuple[str, list[str], tuple]:
    registry.log_params(_flatten(config.model_dump(mode="json", exclude={"workdir"})))
    # Both fits are logged: the evaluation fit (early stopping, holdout metrics) as train_*,
    # the refit that is registered and served as refit_*.
    evaluation_fit = trained.evaluation_fit or trained.training
    registry.log_params({"train.epochs_run": evaluation_fit.epochs_run, "train.best_epoch": evaluation_fit.best_epoch,
                         "model.head_resolved": trained.model.model_config.head,
                         "served_model": "refit on all days" if trained.evaluation_fit else "evaluation fit"})
    for prefix, fit in (("train", evaluation_fit), ("refit", trained.training if trained.evaluation_fit else None)):
        for record in fit.history if fit is not None else ():
            registry.log_metrics({f"{prefix}_{k}": v for k, v in record.items() if k != "epoch"}, step=record["epoch"])
    registry.log_metrics({**evaluation.metrics, "validation_nll": evaluation_fit.best_validation_nll,
                          "training_seconds": evaluation_fit.seconds
                          + (trained.training.seconds if trained.evaluation_fit else 0.0)})
    plot_uris = tuple(registry.log_artifact(path, "plots") for path in plots)
    registry.log_dict(config.model_dump(mode="json"), "config.json")
    fingerprint = data_fingerprint(panel)
    registry.log_dict(fingerprint, "data_fingerprint.json")
    model_uri = registry.log_forecaster(trained.model, _input_example(panel))
    if gate.champion_metrics is not None:
        registry.log_metrics({f"champion_{k}": v for k, v in gate.champion_metrics.items()
                              if k in ("picp_95", "picp_90", "crps_scaled", "mase")})
    name = config.registry.model_name
    version = registry.register(model_uri, name, run.info.run_id,
                                description=f"{_describe(evaluation.metrics)}. Gate: {gate.decision.summary()}")
    on_version(version)
    tags = {f"metric.{k}": f"{v:.4f}" for k, v in evaluation.metrics.items()
            if k in ("picp_95", "picp_90", "crps_scaled", "mase")}
    tags.update({"gate.promote": str(gate.decision.promote), "gate.reasons": " | ".join(gate.decision.reasons),
                 "gate.champion_version": str(gate.champion_version),
                 # The monitoring's drift reference ends here.
                 "data.last_date": fingerprint["last_date"]})
    registry.tag_version(name, version, tags)
    registry.set_tags({"gate.promote": str(gate.decision.promote)})
    aliases = [registry.CHALLENGER]
    registry.set_alias(name, registry.CHALLENGER, version)
    if gate.decision.promote:
        registry.set_alias(name, registry.CHAMPION, version)
        aliases.append(registry.CHAMPION)
    return version, aliases, plot_uris


def _describe(metrics: dict) -> str:
    return (f"Test split, one-day-ahead: PICP95 {metrics.get('picp_95', float('nan')):.3f}, "
            f"PICP90 {metrics.get('picp_90', float('nan')):.3f}, CRPS(scaled) {metrics.get('crps_scaled', float('nan')):.3f}, "
            f"MASE {metrics.get('mase', float('nan')):.3f}")


def _input_example(panel: Panel, days: int = 35) -> pd.DataFrame:
    frame = panel.to_frame()
    first = frame["series_id"].drop_duplicates().head(2)
    frame = frame[frame["series_id"].isin(first)]
    return frame.groupby("series_id", group_keys=False).tail(days).reset_index(drop=True)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# --- online update (the monitoring's first response) -----------------------------------
def recent_days(panel: Panel, day, n_days: int) -> dict[int, np.ndarray]:
    """Day indices of the ``n_days`` days up to ``day`` of each series that has them (and a
    day before them, for the lag)."""
    last = pd.Timestamp(day)
    first = last - pd.Timedelta(days=n_days - 1)
    days = {}
    for k, s in enumerate(panel.series):
        index = np.nonzero((s.dates >= first) & (s.dates <= last))[0]
        index = index[index >= 1]
        if len(index):
            days[k] = index
    return days


def online_update_champion(config: PipelineConfig, panel: Panel, day) -> TrainingOutcome:
    """Update the champion's posterior on the last ``monitoring.online_update_days`` days up to
    ``day`` (:mod:`pipeline_lib.model.online`) and register the result as a new version
    (tags ``update.kind=online``, ``update.parent_version``) with the ``challenger`` alias.
    It also becomes ``champion`` only if the same update, learned without each series' last
    day, forecasts that day better than the champion (``online.check_on_held_out_day``); the
    old version stays in the registry for a roll-back in the MLflow UI.

    Raises:
        DataValidationError: fewer than two days of actuals in the window (one is held out).
    """
    from pipeline_lib.model.online import check_on_held_out_day, online_update, update_windows

    registry.configure(config.tracking_uri)
    name = config.registry.model_name
    parent = registry.resolve_version(registry.champion_uri(name))
    model = registry.load_forecaster(f"models:/{name}/{parent}")
    days = recent_days(panel, day, config.monitoring.online_update_days)
    if not any(len(d) >= 2 for d in days.values()):
        raise DataValidationError(f"{panel.source}: fewer than two days of actuals in the "
                                  f"{config.monitoring.online_update_days} days up to {day}: an online update "
                                  "needs one day to learn from and one to check it on")
    seed = config.monitoring.seed
    started = datetime.now(UTC)
    check = check_on_held_out_day(model, panel, days, seed=seed, num_samples=config.evaluation.num_samples)
    windows = update_windows(model, panel, days)
    updated = online_update(model, windows, seed=seed)
    seconds = (datetime.now(UTC) - started).total_seconds()
    aliases = (registry.CHALLENGER, registry.CHAMPION) if check.improved else (registry.CHALLENGER,)
    gate = f"{check.describe()}: {'promoted to champion' if check.improved else 'kept as challenger'}"
    metrics = {"update_seconds": seconds, "update.holdout_crps": check.crps_after,
               "update.holdout_crps_champion": check.crps_before}
    experiment_id = registry.ensure_experiment(config.registry.experiment_name, config.artifact_root)
    versions: list[str] = []
    with registry.training_run(experiment_id, f"online-update-{day}", tags={"pipeline": "online-update"}) as run:
        try:
            registry.log_params({"update.parent_version": parent, "update.days": config.monitoring.online_update_days,
                                 "update.windows": len(windows), "update.last_day": str(day)})
            registry.log_metrics(metrics)
            model_uri = registry.log_forecaster(updated, _input_example(panel))
            version = registry.register(model_uri, name, run.info.run_id,
                                        description=f"Online Bayesian update of version {parent} on {len(windows)} "
                                        f"windows of the days up to {day}; {gate}")
            versions.append(version)
            tags = registry.version_tags(name, parent)
            registry.tag_version(name, version, {"update.kind": "online", "update.parent_version": parent,
                                                 "data.last_date": tags.get("data.last_date", str(day)),
                                                 "gate.promote": str(check.improved), "gate.reasons": gate})
            for alias in aliases:  # champion last, as in the training flow
                registry.set_alias(name, alias, version)
        except BaseException:
            for created in versions:
                _delete_quietly(name, created)
            raise
        url = registry.run_url(run)
    return TrainingOutcome(run.info.run_id, url, name, version, aliases, metrics, gate)


def log_inventory_run(config: PipelineConfig, panel: Panel, report) -> str:
    """A run of its own for ``bayes-pipeline inventory-backtest`` (no model is registered)."""
    registry.configure(config.tracking_uri)
    experiment_id = registry.ensure_experiment(config.registry.experiment_name, config.artifact_root)
    run_name = f"inventory-backtest-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with registry.training_run(experiment_id, run_name, tags={"pipeline": "inventory-backtest"}) as run:
        registry.log_params(_flatten(config.model_dump(mode="json", include={"inventory", "window", "model"})))
        registry.log_metrics(report.metrics())
        registry.log_artifact(report.chart, "inventory")
        registry.log_artifact(report.table_path, "inventory")
        registry.log_dict(data_fingerprint(panel), "data_fingerprint.json")
        return registry.run_url(run)


# --- backtest --------------------------------------------------------------------------
def truncate(panel: Panel, keep: dict[int, int]) -> Panel:
    """Each series cut to its first ``keep[k]`` days (what was known at a forecast origin)."""
    series = tuple(
        Series(s.series_id, s.dates[: keep[k]], s.target[: keep[k]], s.covariates[: keep[k]])
        for k, s in enumerate(panel.series)
    )
    return replace(panel, series=series)


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
        keep = {k: split_points(s, config.window).test_start + offset for k, s in enumerate(panel.series)}
        steps = min(horizon, n_test - offset)
        sampled = model.forecast(truncate(panel, keep), steps, config.evaluation.num_samples,
                                 seed=config.evaluation.seed + offset)
        frames.append(sampled.to_frame(CANDIDATE_VERSION))
    return pd.concat(frames, ignore_index=True).sort_values(["series_id", "date"], ignore_index=True)


def rolling_origin_backtest(config: PipelineConfig, panel: Panel, folds: int, horizon: int,
                            progress: bool = True) -> tuple[pd.DataFrame, list[dict]]:
    """Backtest on ``folds`` consecutive test windows of ``config.window.test_days`` days.

    Fold 0 holds out the last ``test_days`` of each series, fold 1 the ``test_days`` before
    those, and so on; each fold trains its own model on everything before its test days
    (:func:`backtest_model`, so no fold sees its own future) and forecasts them as
    :func:`backtest_forecasts`.
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
        fold_panel = truncate(panel, {k: len(s) - fold * n_test for k, s in enumerate(panel.series)})
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
