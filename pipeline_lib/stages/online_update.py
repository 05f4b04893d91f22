"""Online update: the monitoring's cheap first response, the champion's posterior
updated on the recent days and registered as a new version."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from pipeline_lib import registry
from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.validate import Panel
from pipeline_lib.errors import DataValidationError
from pipeline_lib.stages.registration import TrainingOutcome, _input_example


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
    champion = registry.require_champion(name)
    parent = champion.version
    model = champion.load()
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
    with registry.tracked_run(config.registry.experiment_name, config.artifact_root, f"online-update-{day}",
                              tags={"pipeline": "online-update"}) as run:
        registry.log_params({"update.parent_version": parent, "update.days": config.monitoring.online_update_days,
                             "update.windows": len(windows), "update.last_day": str(day)})
        registry.log_metrics(metrics)
        model_uri = registry.log_forecaster(updated, _input_example(panel), config.serving.model_dump())
        version = run.register(model_uri, name, description=f"Online Bayesian update of version {parent} on "
                               f"{len(windows)} windows of the days up to {day}; {gate}").version
        last_day = champion.last_data_day() or day
        registry.tag_version(name, version, {"update.kind": "online", "update.parent_version": parent,
                                             "data.last_date": str(last_day),
                                             "gate.promote": str(check.improved), "gate.reasons": gate})
        for alias in aliases:  # champion last, as in the training flow
            registry.set_alias(name, alias, version)
    return TrainingOutcome(run.run_id, run.url, name, version, aliases, metrics, gate)

