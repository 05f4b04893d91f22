"""Daily forecast flow: load the champion, forecast the next H days of every series, store.

Scheduled at 06:00 by ``infra/prefect.yaml``; ``bayes-pipeline replay`` runs it once per
replayed day. The series are split into chunks (``runtime.chunk_series``) mapped over
Prefect tasks on the configured task runner: threads in-process by default, or a Dask
cluster (``runtime.task_runner: dask``; LocalCluster unless ``runtime.dask_address``).
Chunk ``k`` always uses seed ``serving.seed + k``: every runner gives the same numbers.
"""

from __future__ import annotations

import datetime as dt
import functools

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_table_artifact

from flows.alerting import deliver_alerts, retry_unless_user_error
from flows.common import NO_CACHE_TASK, ingest
from flows.runners import task_runner
from pipeline_lib import registry
from pipeline_lib.config import PipelineConfig, deployed_config
from pipeline_lib.errors import ModelLoadError
from pipeline_lib.forecasting import daily
from pipeline_lib.forecasting.batch import order_resolution
from pipeline_lib.monitoring.alerts import check_destinations
from pipeline_lib.store import ForecastStore


@task(name="resolve_champion", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error,
      **NO_CACHE_TASK)
def resolve_champion(config: PipelineConfig) -> tuple[str, str]:
    """``models:/<name>/<version>`` of the champion (pinned, so a promotion during the run
    cannot mix versions) and the version; loading it once here fails fast if it is corrupt,
    and warns when its orders cannot resolve ``inventory.service_level``."""
    registry.configure(config.tracking_uri)
    champion = registry.require_champion(config.registry.model_name)
    warning = order_resolution(config, _model(config.tracking_uri, champion.uri))
    if warning:
        get_run_logger().warning(warning)
    return champion.uri, champion.version


@functools.lru_cache(maxsize=2)
def _model(tracking_uri: str, model_uri: str):
    """One load per process (a Dask worker keeps it for all its chunks)."""
    registry.configure(tracking_uri)
    return registry.load_forecaster(model_uri)


@task(name="forecast_chunk", **NO_CACHE_TASK)
def forecast_chunk(config: PipelineConfig, model_uri: str, chunk, k: int):
    return daily.forecast_chunk(config, _model(config.tracking_uri, model_uri), chunk, k)


@flow(name="forecast_chunks")
def forecast_chunks(config: PipelineConfig, model_uri: str, chunks: list) -> list:
    """Map the chunks over tasks (the caller picks the task runner)."""
    futures = forecast_chunk.map(unmapped(config), unmapped(model_uri), chunks, list(range(len(chunks))))
    return [future.result() for future in futures]


@task(name="store_forecasts", retries=2, retry_delay_seconds=10, **NO_CACHE_TASK)
def store_forecasts(config: PipelineConfig, run_date: dt.date, frames: list, version: str,
                    skipped: tuple[str, ...]) -> daily.ForecastRun:
    store = ForecastStore(config.store_url).create()
    try:
        return daily.store_forecasts(config, store, run_date, frames, version, skipped)
    finally:
        store.dispose()


@flow(name="daily_forecast", log_prints=True)
def daily_forecast_flow(config: PipelineConfig | None = None,
                        run_date: dt.date | None = None) -> daily.ForecastRun:
    """Forecast ``run_date`` (default: the day after the data's last day) and the following
    ``serving.horizon - 1`` days for every series with the champion model. ``config``: None
    (the scheduled deployment) reads ``$BAYES_PIPELINE_CONFIG``."""
    config = config or deployed_config()
    check_destinations()
    panel = ingest(config)
    if run_date is None:
        run_date = panel.last_day.date() + dt.timedelta(days=1)
    try:
        model_uri, version = resolve_champion(config)
    except ModelLoadError as exc:
        _alert_model_error(config, run_date, exc)
        raise
    current, skipped = daily.forecastable(panel, run_date)
    parts = current.chunks(config.runtime.chunk_series)
    frames = forecast_chunks.with_options(task_runner=task_runner(config))(config, model_uri, parts)
    run = store_forecasts(config, run_date, frames, version, skipped)
    get_run_logger().info("forecast %d series (%d chunks, %s runner) for %s..+%d days with version %s "
                          "(%d rows stored%s)", run.series, len(parts), config.runtime.task_runner, run.run_date,
                          run.horizon - 1, run.model_version, run.rows,
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
        store.add_alert(run_date, "error", "champion", message)
    finally:
        store.dispose()
    deliver_alerts(config)
