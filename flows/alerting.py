"""Alert delivery shared by the daily flows: the store's outbox sent as a Prefect event plus
the configured notifications (pipeline_lib.monitoring.alerts.deliver_pending)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.events import emit_event

from flows.common import NO_CACHE_TASK
from pipeline_lib.config import PipelineConfig
from pipeline_lib.errors import PipelineError
from pipeline_lib.monitoring.alerts import Alert, Delivery, deliver_pending, notify
from pipeline_lib.store import ForecastStore


def _send(alert: Alert, only: frozenset[str] | None) -> list[str]:
    """A Prefect event (for automations; on the first attempt only) and the configured
    notifications (``only``: a retry's destinations); returns the destinations that failed."""
    if only is None:
        emit_event(event=f"bayes-pipeline.alert.{alert.kind}",
                   resource={"prefect.resource.id": f"bayes-pipeline.monitoring.{alert.day}",
                             "prefect.resource.name": f"coverage {alert.day}"},
                   payload=alert.payload())
    return notify(alert, only)


@task(name="deliver_alerts", **NO_CACHE_TASK)
def deliver_alerts(config: PipelineConfig) -> Delivery:
    """Send the outbox: this run's alerts and any earlier run could not deliver."""
    store = ForecastStore(config.store_url).create()
    try:
        delivery = deliver_pending(store, _send)
    finally:
        store.dispose()
    if delivery.retried or delivery.undeliverable:
        get_run_logger().warning("%d alert(s) not delivered (retried by the next run), %d given up",
                                 len(delivery.retried), len(delivery.undeliverable))
    return delivery


def retry_unless_user_error(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry transient failures, not a broken input or model
    (retrying a corrupt artifact would only repeat the same error, a crash loop in small)."""
    try:
        state.result()
    except PipelineError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True
