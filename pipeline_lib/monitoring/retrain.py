"""Carrying out a claimed retrain: the response the policy chose, its outcome recorded on
the claim and announced as an alert.

The flow supplies the two orchestrator-specific ways to retrain (start the training
deployment, or run the training flow here); everything else is decided and recorded here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.validate import Panel
from pipeline_lib.monitoring.alerts import Alert
from pipeline_lib.monitoring.daily import RetrainRequest, retrain_alert
from pipeline_lib.monitoring.policy import ONLINE_UPDATE
from pipeline_lib.store import ForecastStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainResult:
    """What a response did: ``new_version`` None when it was only dispatched (the
    deployment's run registers it later); ``promoted`` None when not known yet."""

    text: str
    new_version: str | None = None
    promoted: bool | None = None
    dispatched_run: str | None = None  # the training deployment's flow run id


@dataclass(frozen=True)
class RetrainRecord:
    alert: Alert
    alert_is_new: bool  # False when a rerun of the day already recorded it (do not send twice)
    failure: Exception | None  # the response's error, recorded and alerted; the caller re-raises


def respond(config: PipelineConfig, request: RetrainRequest, panel: Panel,
            dispatch: Callable[[], str] | None, train_here: Callable[[], object]) -> RetrainResult:
    """Carry out ``request``: an online update of the champion, or a retrain through
    ``dispatch`` (starts the training deployment, returns the id of its flow run) when
    there is one, else ``train_here`` (the training flow in this process; returns a
    :class:`~pipeline_lib.stages.TrainingOutcome`)."""
    if request.response == ONLINE_UPDATE:
        from pipeline_lib.stages import online_update_champion

        outcome = online_update_champion(config, panel, request.day)
        return RetrainResult(f"online update in {outcome.metrics['update_seconds']:.0f} s: version "
                             f"{outcome.version} ({outcome.gate}); a full retrain follows if the breaches go on",
                             outcome.version, "champion" in outcome.aliases)
    if dispatch is not None:
        run_id = dispatch()
        return RetrainResult(f"started deployment {config.monitoring.training_deployment} (flow run {run_id})",
                             dispatched_run=run_id)
    outcome = train_here()
    return RetrainResult(f"trained version {outcome.version}: {outcome.gate}", outcome.version,
                         "champion" in outcome.aliases)


def respond_and_record(config: PipelineConfig, store: ForecastStore, request: RetrainRequest, panel: Panel,
                       dispatch: Callable[[], str] | None, train_here: Callable[[], object]) -> RetrainRecord:
    """:func:`respond`, then the outcome on the claimed retrain event (``completed``,
    ``dispatched`` or ``failed``) and the day's retrain alert in the store. A failed
    response is recorded and alerted too, and returned for the caller to raise."""
    failure = None
    try:
        result = respond(config, request, panel, dispatch, train_here)
        status = "completed" if result.new_version else "dispatched"
    except Exception as exc:  # noqa: BLE001 - recorded and alerted, then re-raised by the caller
        failure, status = exc, "failed"
        result = RetrainResult(f"retraining failed ({exc.__class__.__name__}: {exc}); the champion is unchanged")
    alert = retrain_alert(request, result.text, config.monitoring.consecutive_days)
    # The outcome and its alert in one transaction: no retrain recorded without its alert.
    is_new = store.finish_retrain(request.streak_start, status, result.new_version, result.promoted, result.text,
                                  result.dispatched_run, alert=asdict(alert))
    return RetrainRecord(alert, is_new, failure)


def settle_dispatched(store: ForecastStore, final_state: Callable[[str], str | None]) -> list[str]:
    """Retrains handed to the training deployment whose flow run ended without success are
    marked ``failed``, so that the policy retries them (``monitoring.retrain_max_attempts``).
    ``final_state(run_id)``: the run's final state name (``COMPLETED``, ``FAILED``, ...), or
    None while it runs. Returns the run ids marked failed."""
    failed = []
    for row in store.dispatched_retrains().to_dict("records"):
        run_id = row["dispatched_run"]
        state = final_state(run_id) if run_id else None
        if state is not None and state != "COMPLETED":
            store.finish_retrain(row["streak_start"], "failed",
                                 detail=f"the training deployment's flow run {run_id} ended {state}")
            failed.append(run_id)
    return failed
