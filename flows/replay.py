"""Replay flow: walk a dataset day by day through the daily forecast and monitoring flows.

Day ``t``: the source holds the actuals up to ``t - 1``; the forecast flow forecasts
``t ..``; then the actuals of ``t`` arrive and the monitoring flow judges the intervals,
alerts, and retrains when the policy says so. With a planted shift (actuals multiplied
by ``shift_factor`` from ``shift_day`` on) a person sees breach -> alert -> retrain ->
new champion -> recovery in a few minutes. The loop is
:func:`pipeline_lib.monitoring.replay.run_replay`.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from flows.forecasting import daily_forecast_flow
from flows.monitoring import daily_monitoring_flow
from flows.training import training_pipeline
from pipeline_lib import stages
from pipeline_lib.config import PipelineConfig
from pipeline_lib.monitoring.replay import ReplayResult, ReplaySpec, run_replay


@flow(name="replay", log_prints=False)
def replay_flow(config: PipelineConfig, spec: ReplaySpec,
                progress: Callable[[str], None] | None = None) -> ReplayResult:
    """Replay ``spec`` (see the module docstring); ``progress`` receives one line per day."""
    # The daily flows run as subflows here, two a day: Prefect's per-flow-run heartbeat thread
    # sleeps in 1 s steps and is joined when each ends, up to a second of waiting per flow
    # (a quarter of a replayed day at 50 series: benchmarks/RESULTS.md). This flow's own
    # heartbeat keeps reporting that the process is alive.
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return run_replay(config, spec, stages.ingest(config), train=training_pipeline,
                          forecast_day=lambda cfg, day: daily_forecast_flow(cfg, run_date=day),
                          monitor_day=lambda cfg, day: daily_monitoring_flow(cfg, day=day),
                          progress=progress or print)
