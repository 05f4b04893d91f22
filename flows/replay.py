"""Replay flow: walk a dataset day by day through the daily forecast and monitoring flows.

Day ``t``: the source holds the actuals up to ``t - 1``; the forecast flow forecasts
``t ..``; then the actuals of ``t`` arrive and the monitoring flow judges the intervals,
alerts, and retrains when the policy says so. With a planted shift (actuals multiplied
by ``shift_factor`` from ``shift_day`` on) a person sees breach -> alert -> retrain ->
new champion -> recovery in a few minutes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import flow

from flows.forecasting import daily_forecast_flow
from flows.monitoring import daily_monitoring_flow
from flows.training import training_pipeline
from pipeline_lib import pipeline, registry
from pipeline_lib.config import PipelineConfig
from pipeline_lib.evaluation.plots import coverage_timeline_plot
from pipeline_lib.monitoring.replay import (
    OBSERVED_FILE,
    ReplaySpec,
    format_timeline,
    observed_config,
    plant_shift,
    timeline,
    write_observed,
)
from pipeline_lib.monitoring.store import ForecastStore


@dataclass(frozen=True)
class ReplayResult:
    timeline: pd.DataFrame
    chart: Path
    text: str
    initial_training: pipeline.TrainingOutcome | None


def _champion_is_usable(config: PipelineConfig, start: dt.date) -> bool:
    """A champion exists and was trained only on data before the replayed days."""
    registry.configure(config.tracking_uri)
    name = config.registry.model_name
    version = registry.alias_version(name, registry.CHAMPION)
    if version is None:
        return False
    last = registry.version_tags(name, version).get("data.last_date")
    return last is not None and dt.date.fromisoformat(last) < start


@flow(name="replay", log_prints=False)
def replay_flow(config: PipelineConfig, spec: ReplaySpec,
                progress: Callable[[str], None] | None = None) -> ReplayResult:
    """Replay ``spec`` (see the module docstring); ``progress`` receives one line per day."""
    progress = progress or print
    raw = plant_shift(pipeline.ingest(config), config.data, spec.shift_day, spec.shift_factor)
    observed = config.workdir / "replay" / OBSERVED_FILE
    daily_config = observed_config(config, observed)

    store = ForecastStore(config.store_url).create()
    store.forget_from(spec.start)
    store.dispose()
    initial = None
    if not _champion_is_usable(config, spec.start):
        progress(f"training the initial champion on data up to {spec.start - dt.timedelta(days=1)}")
        write_observed(raw, config.data, spec.start - dt.timedelta(days=1), observed)
        initial = training_pipeline(daily_config)
        progress(f"  version {initial.version} ({', '.join(initial.aliases)}): test PICP95 "
                 f"{initial.metrics['picp_95']:.3f}, CRPS(scaled) {initial.metrics['crps_scaled']:.3f}")

    for k in range(spec.days):
        day = spec.start + dt.timedelta(days=k)
        write_observed(raw, config.data, day - dt.timedelta(days=1), observed)
        forecast = daily_forecast_flow(daily_config, run_date=day)
        write_observed(raw, config.data, day, observed)
        run = daily_monitoring_flow(daily_config, day=day)
        events = [a.kind for a in run.alerts] + (["retrain"] if run.retrain else [])
        progress(f"[{k + 1}/{spec.days}] {run.describe()} (forecast by v{forecast.model_version})"
                 + (f" -> {', '.join(events)}" if events else ""))

    store = ForecastStore(config.store_url)
    try:
        frame = timeline(store)
    finally:
        store.dispose()
    frame = frame[(frame["day"] >= spec.start) & (frame["day"] <= spec.end)].reset_index(drop=True)
    chart = coverage_timeline_plot(
        frame, config.monitoring.pic_threshold, config.evaluation.nominal_level,
        config.reports_dir / f"replay-{spec.start}-{spec.end}.png", spec.shift_day,
        title=f"Replay {spec.start} .. {spec.end}"
        + (f", demand x{spec.shift_factor:g} from {spec.shift_day}" if spec.shift_day else ""))
    return ReplayResult(frame, chart, format_timeline(frame, config.monitoring.pic_threshold, spec.shift_day),
                        initial)
