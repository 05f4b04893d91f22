"""Daily monitoring flow: coverage of yesterday's intervals, the retrain policy, alerts, drift.

Scheduled at 07:00 by ``infra/prefect.yaml`` (after the 06:00 forecast). For day ``D``:
store the actuals, compute PIC (overall, by horizon, by segment) for ``D`` and for any
missed / pending / late-actual day of the look-back window, write an Evidently report,
alert on every breach day, and retrain once per breach streak of
``monitoring.consecutive_days`` days: the training deployment when a Prefect server has
it, else the training flow as a subflow (local mode). With ``monitoring.first_response:
online_update`` the streak's first response is an online update of the champion (seconds),
and the retrain follows only if the streak goes on for another ``consecutive_days`` days.
"""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.alerting import deliver_alerts
from flows.common import NO_CACHE_TASK, ingest
from flows.training import training_pipeline
from pipeline_lib import registry
from pipeline_lib.config import PipelineConfig, deployed_config
from pipeline_lib.monitoring import daily
from pipeline_lib.monitoring.alerts import Alert, check_destinations
from pipeline_lib.monitoring.retrain import respond_and_record, settle_dispatched
from pipeline_lib.store import ForecastStore


@task(name="champion_version", retries=2, retry_delay_seconds=5, **NO_CACHE_TASK)
def champion_version(config: PipelineConfig) -> tuple[str, dt.date | None]:
    """The champion's version and the last day of its training data (drift reference)."""
    registry.configure(config.tracking_uri)
    champion = registry.require_champion(config.registry.model_name)
    return champion.version, champion.last_data_day()


@task(name="evaluate_coverage", retries=2, retry_delay_seconds=10, **NO_CACHE_TASK)
def evaluate_coverage(config: PipelineConfig, panel, day: dt.date, version: str,
                      reference_end: dt.date | None) -> daily.MonitoringRun:
    from prefect.runtime import flow_run

    store = ForecastStore(config.store_url).create()
    try:
        # The flow run claims a retrain, so this task's retries keep the claim they made.
        return daily.monitor_day(config, store, panel, day, version, config.reports_dir, reference_end,
                                 claimer=flow_run.id)
    finally:
        store.dispose()


@task(name="settle_dispatched_retrains", retries=2, retry_delay_seconds=5, **NO_CACHE_TASK)
def settle_dispatched_retrains(config: PipelineConfig) -> list[str]:
    """Mark retrains whose training-deployment run failed as failed (retried by the policy)."""
    if not _prefect_server():
        return []
    from prefect.client.orchestration import get_client

    def final_state(run_id: str) -> str | None:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state
        return state.type.value if state is not None and state.is_final() else None

    store = ForecastStore(config.store_url).create()
    try:
        return settle_dispatched(store, final_state)
    finally:
        store.dispose()


@task(name="log_monitoring", retries=2, retry_delay_seconds=5, **NO_CACHE_TASK)
def log_monitoring(config: PipelineConfig, run: daily.MonitoringRun) -> str | None:
    row = run.headline
    if row is None:
        return None
    registry.configure(config.tracking_uri)
    share = "orders_held" if row["scope"] == "protection" else "pic"  # the coverage that decides breaches
    metrics = {share: row["picp"], "mpiw": row["mpiw"], "n": row["n"], "breach": float(bool(row["breach"]))}
    files = []
    if run.drift is not None:
        metrics.update({"target_drift": run.drift.target_drift, "drifted_columns": run.drift.drifted_columns})
        if run.drift.report_path is not None:
            files.append(run.drift.report_path)
    return registry.log_monitoring_day(config.registry.experiment_name, config.artifact_root, str(run.day),
                                       metrics, files)


def _prefect_server() -> bool:
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def _deployment_available(name: str) -> bool:
    """True when a Prefect server is configured and has the training deployment."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    if not _prefect_server():
        return False
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(name)
        return True
    except ObjectNotFound:
        return False


def _dispatcher(config: PipelineConfig, request: daily.RetrainRequest):
    """Starts the training deployment when ``monitoring.retrain`` asks for it (``auto``: when
    a Prefect server has it); None: train in this process."""
    mode = config.monitoring.retrain
    if mode not in ("auto", "deployment") or (mode == "auto"
                                               and not _deployment_available(config.monitoring.training_deployment)):
        return None

    def dispatch() -> str:
        from prefect.deployments import run_deployment

        flow_run = run_deployment(config.monitoring.training_deployment,
                                  parameters={"config": config.model_dump(mode="json"), "champion_failing": True},
                                  timeout=0, idempotency_key=f"retrain-{request.streak_start}")
        return str(flow_run.id)

    return dispatch


def _retrain_and_record(config: PipelineConfig, request: daily.RetrainRequest, panel) -> Alert:
    """Retrain (:func:`pipeline_lib.monitoring.retrain.respond_and_record`; its alert goes into
    the outbox); a failed retrain is recorded and alerted too, then fails the flow."""
    store = ForecastStore(config.store_url).create()
    try:
        record = respond_and_record(config, store, request, panel, _dispatcher(config, request),
                                    lambda: training_pipeline(config, progress=False, champion_failing=True))
    finally:
        store.dispose()
    if record.failure is not None:
        raise record.failure
    return record.alert


@flow(name="daily_monitoring", log_prints=True)
def daily_monitoring_flow(config: PipelineConfig | None = None, day: dt.date | None = None) -> daily.MonitoringRun:
    """Monitor ``day`` (default: yesterday). ``config``: None (the scheduled deployment)
    reads ``$BAYES_PIPELINE_CONFIG``."""
    config = config or deployed_config()
    logger = get_run_logger()
    check_destinations()
    day = day or dt.date.today() - dt.timedelta(days=1)
    panel = ingest(config)
    version, reference_end = champion_version(config)
    settle_dispatched_retrains(config)
    run = evaluate_coverage(config, panel, day, version, reference_end)
    logger.info(run.describe())
    for decision in run.decisions:
        logger.info(decision.describe(config.monitoring.consecutive_days))
    if run.drift is not None:
        logger.info("drift: %s (%s)", run.drift.describe(), run.drift.link)
    try:
        if run.retrain is not None:
            logger.info(_retrain_and_record(config, run.retrain, panel).message)
    finally:  # the day's alerts, the retrain's (even a failed one) and any left undelivered
        deliver_alerts(config)
    link = log_monitoring(config, run)
    _publish(config, run, link)
    return run


def _publish(config: PipelineConfig, run: daily.MonitoringRun, link: str | None) -> None:
    create_table_artifact(
        key="daily-coverage",
        table=[{"day": str(d), "status": r["status"], "PIC": None if r["picp"] is None else round(r["picp"], 3),
                "MPIW": None if r["mpiw"] is None else round(r["mpiw"], 2), "n": r["n"], "breach": r["breach"],
                "model": r["model_version"]} for d, r in sorted(run.coverage.items())],
        description=f"Coverage of the {config.evaluation.nominal_level:.0%} interval "
                    f"(threshold {config.monitoring.pic_threshold:.0%})",
    )
    lines = [f"## Monitoring {run.day}", "", f"* {run.describe()}"]
    lines += [f"* alert: {a.message}" for a in run.alerts]
    if run.retrain is not None:
        lines.append(f"* retrain triggered (streak since {run.retrain.streak_start})")
    if run.drift is not None:
        where = run.drift.report_path
        lines.append(f"* drift: {run.drift.describe()}; "
                     + (f"report: [{where.name}]({where.resolve().as_uri()})" if where is not None
                        else f"snapshot: {run.drift.snapshot}"))
    if link:
        lines.append(f"* MLflow: {link}")
    create_markdown_artifact(key="daily-monitoring", markdown="\n".join(lines),
                             description="Coverage, alerts, retrain and drift of the day")
