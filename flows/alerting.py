"""Alert delivery shared by the daily flows: a Prefect event plus the configured notifications."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.events import emit_event

from flows.common import NO_CACHE_TASK
from pipeline_lib.errors import PipelineError
from pipeline_lib.monitoring.alerts import Alert, notify


@task(name="send_alert", retries=1, **NO_CACHE_TASK)
def send_alert(alert: Alert) -> list[str]:
    """A Prefect event (for automations) and the configured notifications."""
    emit_event(event=f"bayes-pipeline.alert.{alert.kind}",
               resource={"prefect.resource.id": f"bayes-pipeline.monitoring.{alert.day}",
                         "prefect.resource.name": f"coverage {alert.day}"},
               payload=alert.payload())
    failed = notify(alert)
    if failed:
        get_run_logger().warning("alert for %s not delivered to %s", alert.day, ", ".join(failed))
    return failed


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
