"""Serve the three deployments with their schedules from this process (no work pool).

For users without docker: run a Prefect server in one terminal and this in another::

    prefect server start                                  # terminal 1 (UI on :4200)
    PREFECT_API_URL=http://127.0.0.1:4200/api bayes-pipeline serve   # terminal 2

The names and schedules are the ones of ``infra/prefect.yaml`` (a test keeps them equal).
"""

from __future__ import annotations

from prefect import serve

from flows.forecasting import daily_forecast_flow
from flows.monitoring import daily_monitoring_flow
from flows.training import training_pipeline
from pipeline_lib.config import PipelineConfig

# name -> (flow, cron or None for manual / triggered runs)
DEPLOYMENTS = {
    "training-pipeline": (training_pipeline, None),
    "daily-forecast": (daily_forecast_flow, "0 6 * * *"),
    "daily-monitoring": (daily_monitoring_flow, "0 7 * * *"),
}


def deployments(config: PipelineConfig) -> list:
    """The three deployments, each with ``config`` as its default parameter."""
    built = []
    for name, (flow, cron) in DEPLOYMENTS.items():
        parameters = {"config": config.model_dump(mode="json")}
        if flow is training_pipeline:
            parameters["progress"] = False
        built.append(flow.to_deployment(name=name, cron=cron, parameters=parameters,
                                        tags=["training"] if cron is None else ["daily"],
                                        # one training at a time, as infra/prefect.yaml
                                        concurrency_limit=1 if flow is training_pipeline else None))
    return built


def serve_all(config: PipelineConfig) -> None:
    """Block, running scheduled and triggered runs until interrupted."""
    serve(*deployments(config))
