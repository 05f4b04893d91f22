"""The daily monitoring step as plain functions (``flows/monitoring.py`` wraps them).

Monitor day ``D``: load actuals of ``D`` and of the ``lookback_days`` before it from the
source, re-evaluate every day of that window that is new, missed, still pending/partial
or has new (late) actuals, in date order, apply the retrain policy to each, and return
the alerts to send and at most one retrain to start.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline_lib.config import PipelineConfig
from pipeline_lib.contract import as_day, interval_columns
from pipeline_lib.data.validate import Panel
from pipeline_lib.monitoring.alerts import Alert, breach_message
from pipeline_lib.monitoring.coverage import (
    OVERALL,
    PENDING,
    PROTECTION,
    BreachRule,
    daily_coverage,
    protection_coverage,
)
from pipeline_lib.monitoring.drift import (
    CURRENT_WINDOW_DAYS,
    DriftSummary,
    drift_reference_days,
    drift_report,
    drift_windows,
)
from pipeline_lib.monitoring.policy import ONLINE_UPDATE, RETRAIN, PolicyDecision, retrain_decision
from pipeline_lib.store import ForecastStore, RetrainRetry

log = logging.getLogger(__name__)

ONE_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class RetrainRequest:
    streak_start: dt.date  # the claim key: the streak's first day (its escalation: N days later)
    day: dt.date
    champion_version: str
    response: str = RETRAIN  # or ONLINE_UPDATE


@dataclass
class MonitoringRun:
    day: dt.date
    evaluated: list[dt.date]
    coverage: dict[dt.date, dict]  # day -> its overall coverage row
    decisions: list[PolicyDecision]
    alerts: list[Alert] = field(default_factory=list)  # new alerts (not sent before)
    retrain: RetrainRequest | None = None
    drift: DriftSummary | None = None
    pruned_forecasts: int = 0  # rows past monitoring.forecast_retention_days, deleted by this run

    @property
    def headline(self) -> dict | None:
        return self.coverage.get(self.day)

    def describe(self) -> str:
        row = self.headline
        if row is None:
            return f"{self.day}: no forecasts targeted this day"
        if row["status"] == PENDING:
            return f"{self.day}: pending (no actuals yet for {row['expected']} forecasts)"
        if row["scope"] == PROTECTION:
            text = (f"{self.day}: orders held for {row['picp']:.1%} of {row['n']}/{row['expected']} series, "
                    f"model {row['model_version']}")
        else:
            text = (f"{self.day}: PIC {row['picp']:.1%} over {row['n']}/{row['expected']} series, "
                    f"mean width {row['mpiw']:.1f}, model {row['model_version']}")
        return text + (" BREACH" if row["breach"] else "")


def actual_rows(panel: Panel, first: dt.date, last: dt.date) -> pd.DataFrame:
    """``series_id, date, actual`` of the panel between two days (inclusive)."""
    frame = panel.between(first, last).to_frame()
    return frame.rename(columns={"target": "actual"})[["series_id", "date", "actual"]]


def days_to_evaluate(store: ForecastStore, day: dt.date, lookback_days: int, changed: list[dt.date],
                     scope: str = OVERALL, reach_days: int = 1) -> list[dt.date]:
    """``day``, plus window days that were missed, are not final in ``scope``, or whose rows
    read new actuals (a day's actual is read by the rows of the ``reach_days`` days from it:
    1 for the one-day coverage, lead time + review period for the orders' coverage)."""
    first = day - dt.timedelta(days=lookback_days)
    changed = sorted({c + dt.timedelta(days=k) for c in changed for k in range(reach_days)})
    coverage = store.coverage(scope)
    final = set()
    if not coverage.empty:
        ok = coverage[coverage["status"] == "ok"]
        final = {as_day(d) for d in ok["day"]}
    window = [first + dt.timedelta(days=k) for k in range(lookback_days)]
    with_forecasts = [d for d in window if d not in final and store.has_forecasts_for(d)]
    return sorted({day, *with_forecasts, *(d for d in changed if first <= d <= day)})


def monitor_day(config: PipelineConfig, store: ForecastStore, panel: Panel, day, champion_version: str,
                report_dir: Path, reference_end: dt.date | None = None, claimer: str | None = None) -> MonitoringRun:
    """Evaluate ``day`` (and the window days that need it), apply the policy, collect alerts.

    ``panel``: the source data (actuals up to at least ``day`` when they have arrived);
    ``reference_end``: last day of the champion's training data (drift reference);
    ``claimer``: who claims a retrain (the flow run id): a retried call with the same claimer
    gets its own claim back instead of finding it taken.
    Writes coverage rows, alert rows and at most one claimed retrain event; a failed retrain
    of an earlier run is claimed again when ``monitoring.retrain_max_attempts`` and its
    back-off allow. Last, deletes the forecasts issued more than
    ``monitoring.forecast_retention_days`` before ``day``.
    """
    day = as_day(day)
    mon = config.monitoring
    rule = BreachRule.of(config)
    changed = store.upsert_actuals(actual_rows(panel, day - dt.timedelta(days=mon.lookback_days), day))
    reach = config.inventory.protection_days if rule.deciding_scope == PROTECTION else 1
    evaluated = days_to_evaluate(store, day, mon.lookback_days, changed, rule.deciding_scope, reach)
    coverage = {}
    for d in evaluated:
        rows = daily_coverage(store.forecasts_for(d), store.actuals_on(d), rule, mon.segment_edges)
        if rows and rule.deciding_scope == PROTECTION:
            rows.append(_protection_row(config, store, d, rule))
        store.replace_coverage(d, rows)
        for row in rows:
            if row["scope"] == rule.deciding_scope:
                coverage[d] = row

    drift = _drift(config, store, panel, day, reference_end, report_dir)
    history = store.coverage(rule.deciding_scope)
    rows_by_day = {as_day(r["day"]): r for r in history.to_dict("records")}
    breaches = {d: r["breach"] for d, r in rows_by_day.items()}
    already_alerted = store.alert_days("breach")
    run = MonitoringRun(day, evaluated, coverage, decisions=[], drift=drift)
    # The policy and the alerts run over the whole window, not only over the days evaluated
    # now: a run that died after writing a day's coverage left that day's alert and retrain
    # undone, and this run must finish them exactly as the dead run would have.
    window = [d for d in sorted(rows_by_day) if day - dt.timedelta(days=mon.lookback_days) <= d <= day]
    stale_after = dt.timedelta(hours=mon.retrain_claim_timeout_hours)
    retry = RetrainRetry(dt.timedelta(hours=mon.retrain_retry_after_hours), mon.retrain_max_attempts)
    for d in window:
        retrained = store.retrained_streaks(stale_after, retry=retry, claimer=claimer)
        decision = retrain_decision(breaches, d, mon.consecutive_days, retrained,
                                    online_update_first=mon.first_response == ONLINE_UPDATE)
        if d in evaluated:
            run.decisions.append(decision)
        if decision.breach and d not in already_alerted:
            row = rows_by_day[d]
            report = _report_for(config, store, panel, d, day, drift, reference_end, report_dir)
            message = breach_message(d, row["picp"], row["level"], rule.describe(), decision.streak_length,
                                     mon.consecutive_days, row["model_version"], report, row["scope"])
            details = {"picp": row["picp"], "threshold": mon.pic_threshold, "streak": decision.streak_length}
            if store.add_alert(d, "breach", row["model_version"], message, report, details):
                run.alerts.append(Alert("breach", d, row["model_version"], message, report, details))
        if decision.retrain and run.retrain is None and mon.retrain != "off":
            # Keyed by the policy's claim key and dated on the key's N-th day, whichever run
            # gets here first (both are the same for a run of any later day).
            trigger_day = decision.claim_key + dt.timedelta(days=mon.consecutive_days - 1)
            mode = ONLINE_UPDATE if decision.response == ONLINE_UPDATE else mon.retrain
            if store.claim_retrain(decision.claim_key, trigger_day, mode, champion_version, stale_after,
                                   retry=retry, claimer=claimer):
                run.retrain = RetrainRequest(decision.claim_key, trigger_day, champion_version, decision.response)
    if mon.forecast_retention_days is not None:
        run.pruned_forecasts = store.prune_forecasts(day - dt.timedelta(days=mon.forecast_retention_days))
    return run


def _protection_row(config: PipelineConfig, store: ForecastStore, day: dt.date, rule: BreachRule) -> dict:
    """Day ``day``'s ``protection`` row: the order levels set ``P - 1`` days before it (the
    most recent forecast of that day, as the order was placed from) against the demand of
    the ``P`` days since. Before any level was set the row is pending, so the rule waits."""
    period = config.inventory.protection_days
    first = day - dt.timedelta(days=period - 1)
    issued = store.forecasts_for(first)
    orders = (issued.sort_values(["series_id", "horizon"]).drop_duplicates("series_id")
              if not issued.empty else issued)
    demand = pd.concat([store.actuals_on(first + dt.timedelta(days=k)) for k in range(period)], ignore_index=True)
    row = protection_coverage(orders, demand, period, config.inventory.service_level, rule) if len(orders) else None
    return row or {"scope": PROTECTION, "level": float(config.inventory.service_level), "model_version": "",
                   "status": PENDING, "picp": None, "mpiw": None, "n": 0, "expected": 0, "breach": None}


def _report_for(config: PipelineConfig, store: ForecastStore, panel: Panel, d: dt.date, today: dt.date,
                drift: DriftSummary | None, reference_end: dt.date | None, report_dir: Path) -> str | None:
    """Where day ``d``'s drift report is, writing its HTML export if an earlier run did not.
    Without the HTML export an earlier day's breach names no report: its snapshot is in the
    workspace already (written by that day's run), and another would only duplicate it."""
    if d == today:
        return drift.link if drift else None
    if not config.monitoring.drift_html:
        return None
    path = Path(report_dir) / f"monitoring-{d}.html"
    if not path.exists():
        summary = _drift(config, store, panel, d, reference_end, report_dir)
        return summary.link if summary else None
    return str(path)


def _drift(config: PipelineConfig, store: ForecastStore, panel: Panel, day: dt.date,
           reference_end: dt.date | None, report_dir: Path) -> DriftSummary | None:
    """Evidently report of the last week up to ``day`` against the training reference, led by
    the day's coverage verdict; also a snapshot in the Evidently workspace."""
    lower, upper = interval_columns(config.evaluation.nominal_level)
    first = day - dt.timedelta(days=CURRENT_WINDOW_DAYS - 1)
    intervals = store.shortest_horizon_intervals(first, day, lower, upper)
    reference_first = drift_reference_days(day, CURRENT_WINDOW_DAYS, reference_end,
                                           config.monitoring.drift_reference_days)[0]
    reference, current = drift_windows(panel.between(reference_first, day).to_frame(), intervals, lower, upper, day,
                                       CURRENT_WINDOW_DAYS, reference_end, config.monitoring.drift_reference_days)
    if current.empty or reference.empty:
        log.info("no drift report for %s: %s window is empty", day, "current" if current.empty else "reference")
        return None
    return drift_report(reference, current, tuple(panel.covariate_names), config.monitoring.drift_threshold,
                        Path(report_dir) / f"monitoring-{day}.html" if config.monitoring.drift_html else None,
                        title=f"Demand drift and coverage, {day}",
                        decision=_verdict(store, day, config), day=day, workspace=config.evidently_workspace)


def _verdict(store: ForecastStore, day: dt.date, config: PipelineConfig) -> str:
    """The day's verdict as one line (what a planner reads first), on the coverage that
    decides breaches (``BreachRule.deciding_scope``: the one-day intervals, or the order
    levels under ``breach_rule: protection``)."""
    scope = BreachRule.of(config).deciding_scope
    coverage = store.coverage(scope)
    rows = coverage[coverage["day"].map(as_day) == day] if not coverage.empty else coverage
    if rows.empty or rows.iloc[0]["picp"] is None or pd.isna(rows.iloc[0]["picp"]):
        return "coverage pending (no actuals yet)"
    row = rows.iloc[0]
    verdict = "ok"
    if row["breach"]:
        breached = {as_day(d) for d, b in zip(coverage["day"], coverage["breach"], strict=True) if b}
        streak = next(k for k in range(len(breached) + 1) if day - dt.timedelta(days=k) not in breached)
        verdict = f"BREACH, day {streak} of {config.monitoring.consecutive_days} before a retrain"
    threshold = f"threshold {config.monitoring.pic_threshold:.0%}"
    if scope == PROTECTION:
        return (f"orders held for {row['picp']:.1%} of {row['n']} series (order-up-to levels for "
                f"{config.inventory.service_level:.0%} service, {threshold}): {verdict}")
    return (f"PIC {row['picp']:.1%} of the {config.evaluation.nominal_level:.0%} interval over {row['n']} series "
            f"({threshold}): {verdict}")


def retrain_alert(request: RetrainRequest, outcome_text: str, consecutive_days: int) -> Alert:
    action = "online update" if request.response == ONLINE_UPDATE else "retraining"
    message = (f"{request.day}: coverage breached on {consecutive_days} consecutive days since "
               f"{request.streak_start}; {action} (champion was version {request.champion_version}): "
               f"{outcome_text}")
    return Alert("retrain", request.day, request.champion_version, message, None,
                 {"streak_start": str(request.streak_start)})
