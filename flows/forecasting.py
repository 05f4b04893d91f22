"""Daily forecast flow: load the champion, forecast the next H days of every series, store.

Scheduled at 06:00 by ``infra/prefect.yaml``; ``bayes-pipeline replay`` runs it once per
replayed day.
"""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.alerting import retry_unless_user_error, send_alert
from flows.training import NO_CACHE_TASK, ingest
from pipeline_lib import registry
from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.validate import validate_table
from pipeline_lib.errors import ModelLoadError
from pipeline_lib.monitoring.alerts import Alert
from pipeline_lib.monitoring import daily
from pipeline_lib.monitoring.store import ForecastStore


@task(name="load_champion", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error,
      **NO_CACHE_TASK)
def load_champion(config: PipelineConfig):
    registry.configure(config.tracking_uri)
    uri = registry.champion_uri(config.registry.model_name)
    version = registry.resolve_version(uri)
    return registry.load_forecaster(uri), version


@task(name="forecast_and_store", retries=2, retry_delay_seconds=10, **NO_CACHE_TASK)
def forecast_and_store(config: PipelineConfig, panel, run_date: dt.date, model, version: str) -> daily.ForecastRun:
    store = ForecastStore(config.store_url).create()
    try:
        return daily.daily_forecast(config, store, panel, run_date, model, version)
    finally:
        store.dispose()


@flow(name="daily_forecast", log_prints=True)
def daily_forecast_flow(config: PipelineConfig = PipelineConfig(), run_date: dt.date | None = None) -> daily.ForecastRun:
    """Forecast ``run_date`` (default: the day after the data's last day) and the following
    ``monitoring.horizon - 1`` days for every series with the champion model."""
    raw = ingest(config)
    panel = validate_table(raw, config.data, min_days=1)
    if run_date is None:
        run_date = max(s.dates[-1] for s in panel.series).date() + dt.timedelta(days=1)
    try:
        model, version = load_champion(config)
    except ModelLoadError as exc:
        _alert_model_error(config, run_date, exc)
        raise
    run = forecast_and_store(config, panel, run_date, model, version)
    get_run_logger().info("forecast %d series for %s..+%d days with version %s (%d rows stored%s)",
                          run.series, run.run_date, run.horizon - 1, run.model_version, run.rows,
                          f"; {len(run.skipped)} stale series skipped" if run.skipped else "")
    create_table_artifact(key="daily-forecast", table=run.summary_rows(config.evaluation.nominal_level),
                          description=f"Forecasts issued for {run.run_date} by model version {run.model_version}")
    return run


def _alert_model_error(config: PipelineConfig, run_date: dt.date, error: ModelLoadError) -> None:
    """One ``error`` alert per day (a rerun of the day does not repeat it)."""
    message = (f"{run_date}: no forecasts: the champion of {config.registry.model_name} could not be loaded "
               f"({error}); move the champion alias to a healthy version in the MLflow UI")
    store = ForecastStore(config.store_url).create()
    try:
        if store.add_alert(run_date, "error", "champion", message):
            send_alert(Alert("error", run_date, "champion", message))
    finally:
        store.dispose()
