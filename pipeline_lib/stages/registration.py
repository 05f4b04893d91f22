"""Register: one MLflow run with params, metrics, pictures and the model; a new version
with ``challenger`` (and ``champion`` when the gate says so), or nothing at all."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from pipeline_lib import registry
from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.validate import Panel
from pipeline_lib.errors import RegistryUnavailableError
from pipeline_lib.stages.evaluation import Evaluation
from pipeline_lib.stages.ingestion import data_fingerprint
from pipeline_lib.stages.promotion import GateOutcome
from pipeline_lib.stages.training import TrainedModel

log = logging.getLogger(__name__)


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
    # All or nothing (registry.tracked_run); ``champion`` is moved last, so until then the
    # old champion keeps serving.
    with registry.tracked_run(config.registry.experiment_name, config.artifact_root,
                              f"train-{datetime.now(UTC):%Y%m%d-%H%M%S}", tags={"pipeline": "training"}) as run:
        version, aliases, plot_uris = _log_and_register(config, panel, trained, evaluation, plots, gate, run)
    summary = gate.decision.summary()
    if gate.decision.promote and registry.CHAMPION not in aliases:
        summary += "; the champion moved meanwhile: kept as challenger"
    return TrainingOutcome(run.run_id, run.url, config.registry.model_name, version, tuple(aliases),
                           evaluation.metrics, summary, plot_uris)


def _log_and_register(config: PipelineConfig, panel: Panel, trained: TrainedModel, evaluation: Evaluation,
                      plots: list[Path], gate: GateOutcome, run: registry.TrackedRun) -> tuple[str, list[str], tuple]:
    registry.log_params(_flatten(config.model_dump(mode="json", exclude={"workdir"})))
    # The model is logged before any metric: MLflow 3's log_model copies every metric the run
    # already has onto the logged model, one metric-history request per metric name (about 150
    # here, 2 minutes on an authenticated server). The run, the version's tags and its
    # description carry the metrics.
    sample = _input_example(panel)
    model_uri = registry.log_forecaster(trained.model, sample, config.serving.model_dump())
    # Both fits are logged: the evaluation fit (early stopping, holdout metrics) as train_*,
    # the refit that is registered and served as refit_*.
    evaluation_fit = trained.evaluation_fit or trained.training
    registry.log_params({"train.epochs_run": evaluation_fit.epochs_run, "train.best_epoch": evaluation_fit.best_epoch,
                         "model.head_resolved": trained.model.model_config.head,
                         "model.trend_days_resolved": trained.model.spec.trend_days,
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
    # What the served model learned from, and the days it was judged on.
    test = data_fingerprint(panel.tail(config.window.test_days))
    registry.log_dataset(sample, fingerprint["rows"], fingerprint["sha256"], f"{config.registry.model_name}-training",
                         panel.source, "training")
    registry.log_dataset(sample, test["rows"], test["sha256"], f"{config.registry.model_name}-test", panel.source,
                         "evaluation")
    if gate.champion_metrics is not None:
        registry.log_metrics({f"champion_{k}": v for k, v in gate.champion_metrics.items()
                              if k in ("picp_95", "picp_90", "crps_scaled", "mase", "scored_series")})
    name = config.registry.model_name
    version = run.register(model_uri, name,
                           description=f"{_describe(evaluation.metrics)}. Gate: {gate.decision.summary()}").version
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
        now = registry.promote_if_unchanged(name, version, gate.champion_version)
        if now is None:
            aliases.append(registry.CHAMPION)
        else:  # the gate's comparison no longer holds: the new version waits as challenger
            compared = f"v{gate.champion_version}" if gate.champion_version else "no champion"
            why = (f"champion moved from {compared} to v{now} while this version trained; kept as challenger "
                   "(promote it by hand in the MLflow UI if it should serve)")
            log.warning("version %s of %s: %s", version, name, why)
            registry.tag_version(name, version, {"gate.promote": "False", "gate.superseded": why})
            registry.set_tags({"gate.promote": "False", "gate.superseded": why})
    return version, aliases, plot_uris


def _describe(metrics: dict) -> str:
    return (f"Test split, one-day-ahead: PICP95 {metrics.get('picp_95', float('nan')):.3f}, "
            f"PICP90 {metrics.get('picp_90', float('nan')):.3f}, "
            f"CRPS(scaled) {metrics.get('crps_scaled', float('nan')):.3f}, "
            f"MASE {metrics.get('mase', float('nan')):.3f}")


def _input_example(panel: Panel, days: int = 35) -> pd.DataFrame:
    """The last ``days`` days of the first two series, in the long format the model takes."""
    return replace(panel, series=panel.series[:2]).tail(days).to_frame()


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def log_inventory_run(config: PipelineConfig, panel: Panel, report) -> str:
    """A run of its own for ``bayes-pipeline inventory-backtest`` (no model is registered),
    tagged with its test window (``test_window_last_day``, ``test_days``) so the runs of a
    rolling backtest can be told apart in the MLflow UI."""
    registry.configure(config.tracking_uri)
    last_day = f"{panel.last_day:%Y-%m-%d}"
    run_name = f"inventory-backtest-{last_day}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    tags = {"pipeline": "inventory-backtest", "test_window_last_day": last_day,
            "test_days": str(config.window.test_days)}
    with registry.tracked_run(config.registry.experiment_name, config.artifact_root, run_name, tags=tags) as run:
        registry.log_params(_flatten(config.model_dump(mode="json", include={"inventory", "window", "model"})))
        registry.log_metrics(report.metrics())
        registry.log_artifact(report.chart, "inventory")
        registry.log_artifact(report.table_path, "inventory")
        registry.log_dict(data_fingerprint(panel), "data_fingerprint.json")
        return run.url

