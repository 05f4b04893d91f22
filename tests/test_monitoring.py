"""Monitoring without TensorFlow: the store, PIC, the retrain policy, alerts and drift.

Forecasts are written straight into the store here, so every number can be checked by
hand; the flows and the replay are tested end to end in test_replay.py.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import constant_panel, day, forecast_rows, run_concurrently, webhook_receiver

from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.validate import validate_table
from pipeline_lib.monitoring import alerts
from pipeline_lib.monitoring.coverage import BreachRule, daily_coverage
from pipeline_lib.monitoring.daily import monitor_day
from pipeline_lib.monitoring.drift import drift_report
from pipeline_lib.monitoring.policy import retrain_decision
from pipeline_lib.store import TABLES, ForecastStore


@pytest.fixture
def store(tmp_path) -> ForecastStore:
    s = ForecastStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    yield s
    s.dispose()


# --- policy -----------------------------------------------------------------------------
def test_policy_triggers_once_on_the_third_consecutive_breach_day():
    breaches = {day(0): False, day(1): True, day(2): True, day(3): True, day(4): True, day(5): False,
                day(6): True}
    decisions = [retrain_decision(breaches, day(k), 3, set()) for k in range(7)]
    assert [d.retrain for d in decisions] == [False, False, False, True, True, False, False]
    assert decisions[3].streak_start == day(1) and decisions[3].streak_length == 3
    # Once the streak has retrained, neither a rerun nor its later days trigger again.
    assert not retrain_decision(breaches, day(3), 3, {day(1)}).retrain
    assert not retrain_decision(breaches, day(4), 3, {day(1)}).retrain
    # A day back above the threshold ends the streak; a pending day is not a breach.
    assert retrain_decision({**breaches, day(7): True, day(8): True}, day(8), 3, {day(1)}).retrain
    assert not retrain_decision({day(0): True, day(1): None, day(2): True, day(3): True}, day(3), 3, set()).retrain


def test_online_update_first_then_one_retrain_if_the_streak_goes_on():
    breaches = {day(k): True for k in range(9)}
    claimed: set = set()
    responses = []
    for k in range(9):
        decision = retrain_decision(breaches, day(k), 3, claimed, online_update_first=True)
        responses.append(decision.response)
        if decision.retrain:
            claimed.add(decision.claim_key)
    # Day 3 of the streak: the cheap update; 3 more breach days: one retrain; then nothing.
    assert responses == [None, None, "online_update", None, None, "retrain", None, None, None]
    assert claimed == {day(0), day(3)}
    # If the update brings coverage back, the streak ends and there is no retrain.
    recovered = {**{day(k): True for k in range(3)}, day(3): False, day(4): True, day(5): True}
    assert not any(retrain_decision(recovered, day(k), 3, {day(0)}, online_update_first=True).retrain
                   for k in range(3, 6))


# --- coverage ---------------------------------------------------------------------------
def test_daily_coverage_matches_a_hand_count_by_scope():
    series = [f"S{k}" for k in range(10)]
    issued_yesterday = forecast_rows(day(0), series, 1).assign(horizon=1)
    issued_earlier = forecast_rows(day(0), series, 1, center=100.0).assign(horizon=2)  # misses everything
    forecasts = pd.concat([issued_yesterday, issued_earlier])
    actual = np.array([10.0] * 7 + [13.0, 7.5, 10.0])  # 95% interval is [8, 12]: 13 and 7.5 are out
    actuals = pd.DataFrame({"series_id": series, "actual": actual})
    rows = {r["scope"]: r for r in daily_coverage(forecasts, actuals, BreachRule(0.95, 0.9), (10.0, 50.0))}
    assert rows["overall"]["picp"] == pytest.approx(0.8) and rows["overall"]["breach"]
    assert rows["overall"]["mpiw"] == pytest.approx(4.0, abs=1e-6)
    assert rows["h01"]["picp"] == pytest.approx(0.8) and rows["h02"]["picp"] == 0.0
    assert rows["segment:medium"]["n"] == 10 and "segment:slow" not in rows  # mean 10 is 'medium'
    # Missing actuals: partial; none: pending (PIC unknown, not 0%).
    partial = daily_coverage(issued_yesterday, actuals.iloc[:4], BreachRule(0.95, 0.9), (10.0, 50.0))[0]
    assert (partial["status"], partial["n"], partial["expected"], partial["picp"]) == ("partial", 4, 10, 1.0)
    assert partial["breach"] is None  # judged when the rest arrive
    pending = daily_coverage(issued_yesterday, actuals.iloc[:0], BreachRule(0.95, 0.9), (10.0, 50.0))[0]
    assert pending["status"] == "pending" and pending["picp"] is None and pending["breach"] is None


# --- store ------------------------------------------------------------------------------
def test_store_reruns_replace_or_ignore_instead_of_duplicating(store):
    frame = forecast_rows(day(0), ["A", "B"], 3)
    assert store.replace_forecasts(day(0), frame) == 6
    assert store.replace_forecasts(day(0), frame.assign(mean=11.0)) == 6
    stored = store.table("forecasts")
    assert len(stored) == 6 and (stored["mean"] == 11.0).all()
    assert sorted(stored["horizon"].unique()) == [1, 2, 3]

    actuals = pd.DataFrame({"series_id": ["A", "B"], "date": [day(0), day(0)], "actual": [1.0, 2.0]})
    assert store.upsert_actuals(actuals) == [day(0)]
    assert store.upsert_actuals(actuals) == []  # nothing new
    late = pd.DataFrame({"series_id": ["A", "B"], "date": [day(0), day(1)], "actual": [1.5, 3.0]})
    assert store.upsert_actuals(late) == [day(0), day(1)]  # a correction and a new day
    assert len(store.table("actuals")) == 3

    assert store.add_alert(day(0), "breach", "1", "message")
    assert not store.add_alert(day(0), "breach", "1", "message again")
    assert store.claim_retrain(day(0), day(2), "subflow", "1")
    assert not store.claim_retrain(day(0), day(2), "subflow", "1")


def test_concurrent_claims_of_one_streak_retrain_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    ForecastStore(url).create()
    results = []

    def claim():
        s = ForecastStore(url)
        results.append(s.claim_retrain(day(0), day(2), "subflow", "1"))
        s.dispose()

    run_concurrently(claim, 8)
    assert sorted(results) == [False] * 7 + [True]


# --- monitoring a day -------------------------------------------------------------------


def test_a_claim_left_started_by_a_dead_process_is_taken_over_once_it_is_stale(tmp_path):
    """A claim still ``started`` after the timeout was left by a process that died while
    retraining: it stops counting as retrained, and one of eight concurrent claimers takes
    it over. Finished, dispatched and failed claims never go stale, nor do claims without a
    time (made before schema 3)."""
    from pipeline_lib.store.schema import retrain_events

    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = ForecastStore(url).create()
    timeout = dt.timedelta(hours=6)
    claimed = dt.datetime(2026, 1, 1, 8, 0)
    assert store.claim_retrain(day(0), day(2), "subflow", "1", timeout, now=claimed)
    five_hours, seven_hours = claimed + dt.timedelta(hours=5), claimed + dt.timedelta(hours=7)
    assert store.retrained_streaks(timeout, now=five_hours) == {day(0)}
    assert not store.claim_retrain(day(0), day(2), "subflow", "1", timeout, now=five_hours)
    assert store.retrained_streaks(timeout, now=seven_hours) == set()
    assert store.retrained_streaks() == {day(0)}  # without a timeout every claim counts

    results = []

    def claim():
        own = ForecastStore(url)
        results.append(own.claim_retrain(day(0), day(2), "deployment", "2", timeout, now=seven_hours))
        own.dispose()

    run_concurrently(claim, 8)
    assert sorted(results) == [False] * 7 + [True]
    event = store.table("retrain_events").iloc[0]
    assert (event["mode"], event["champion_before"], event["status"]) == ("deployment", "2", "started")
    assert pd.Timestamp(event["claimed_at"]) == seven_hours and "taken over" in event["detail"]

    for key, status in ((day(10), "completed"), (day(20), "dispatched"), (day(30), "failed"), (day(40), None)):
        assert store.claim_retrain(key, key, "subflow", "1", now=claimed)
        if status:
            store.finish_retrain(key, status)
    with store.engine.begin() as conn:
        conn.execute(retrain_events.update().where(retrain_events.c.streak_start == day(40)).values(claimed_at=None))
    a_week_later = claimed + dt.timedelta(days=7)
    assert store.retrained_streaks(timeout, now=a_week_later) == {day(10), day(20), day(30), day(40)}
    assert not any(store.claim_retrain(key, key, "subflow", "1", timeout, now=a_week_later)
                   for key in (day(10), day(20), day(30), day(40)))


def test_pending_day_backfill_and_late_actuals(store, tmp_path):
    config = PipelineConfig(workdir=tmp_path, monitoring={"lookback_days": 3})
    for k in range(3):
        store.replace_forecasts(day(k), forecast_rows(day(k), ["A", "B", "C", "D"], 1))
    # Day 0 without its actuals yet: pending, no breach, no alert.
    run = monitor_day(config, store, constant_panel(actual_days=0), day(0), "1", tmp_path / "reports")
    assert run.headline["status"] == "pending" and not run.alerts and not run.retrain
    # Day 2 is monitored next (day 1's run was missed): days 0 and 1 are evaluated first, in order.
    run = monitor_day(config, store, constant_panel(actual_days=3), day(2), "1", tmp_path / "reports")
    assert run.evaluated == [day(0), day(1), day(2)]
    coverage = store.coverage("overall")
    assert list(coverage["status"]) == ["ok"] * 3 and list(coverage["picp"]) == [1.0] * 3
    # A late correction of day 1 (demand far outside the interval) re-evaluates day 1 only.
    corrected = constant_panel(actual_days=3).to_frame()
    corrected.loc[corrected["date"] == pd.Timestamp(day(1)), "target"] = 50.0
    panel = validate_table(corrected.rename(columns={"target": "units"}), PipelineConfig().data, min_days=1)
    run = monitor_day(config, store, panel, day(2), "1", tmp_path / "reports")
    assert run.evaluated == [day(1), day(2)]
    assert list(store.coverage("overall")["picp"]) == [1.0, 0.0, 1.0]
    assert [a.day for a in run.alerts] == [day(1)] and run.alerts[0].kind == "breach"


def test_the_drift_reads_each_days_interval_from_the_latest_run_that_forecast_it(store):
    """shortest_horizon_intervals: for each series and target day in the window, the
    interval of the run issued closest to it (as a pandas groupby over the whole table
    picks it), one row each; has_forecasts_for sees a day with forecasts and one without."""
    from pipeline_lib.contract import interval_columns

    lower, upper = interval_columns(0.95)
    for k, center in ((0, 10.0), (1, 20.0), (2, 30.0)):
        store.replace_forecasts(day(k), forecast_rows(day(k), ["A", "B"], 3, center=center))
    got = store.shortest_horizon_intervals(day(1), day(3), lower, upper)
    table = store.table("forecasts")
    table = table[(table["date"] >= day(1)) & (table["date"] <= day(3))]
    expected = (table.sort_values("horizon").drop_duplicates(["series_id", "date"])
                .sort_values(["date", "series_id"], ignore_index=True)[["series_id", "date", "horizon", lower, upper]])
    pd.testing.assert_frame_equal(got, expected)
    assert len(got) == 6 and list(got["horizon"]) == [1, 1, 1, 1, 2, 2]  # day 3 only from the run of day 2
    assert store.has_forecasts_for(day(4)) and not store.has_forecasts_for(day(5))


def test_monitoring_deletes_forecasts_past_their_retention_and_nothing_else(store, tmp_path):
    """With forecast_retention_days R, monitoring day D deletes exactly the forecasts issued
    before D - R; actuals and the coverage it computes are unchanged; a retention shorter
    than what the monitoring re-reads is refused."""
    from pipeline_lib.config import parse_config
    from pipeline_lib.errors import ConfigError

    for k in range(-30, 1):
        store.replace_forecasts(day(k), forecast_rows(day(k), ["A", "B"], 2))
    config = PipelineConfig(workdir=tmp_path, monitoring={"forecast_retention_days": 20})
    kept = store.table("forecasts").query("run_date >= @day(-20)")
    run = monitor_day(config, store, constant_panel(actual_days=1, series=("A", "B")), day(0), "1", tmp_path / "r")
    assert run.pruned_forecasts == 10 * 2 * 2
    pd.testing.assert_frame_equal(store.table("forecasts"), kept.reset_index(drop=True))
    assert run.headline["n"] == 2 and len(store.table("actuals")) > 0
    assert store.prune_forecasts(day(-20)) == 0  # idempotent
    with pytest.raises(ConfigError, match="forecast_retention_days 10 would delete"):
        parse_config({"monitoring": {"forecast_retention_days": 10}})


def test_monitoring_a_day_twice_leaves_identical_tables(store, tmp_path):
    config = PipelineConfig(workdir=tmp_path, monitoring={"consecutive_days": 2})
    for k in range(3):
        store.replace_forecasts(day(k), forecast_rows(day(k), ["A", "B", "C", "D"], 2))
    panel = constant_panel(actual_days=3, value=30.0)  # every day breaches
    runs = [monitor_day(config, store, panel, day(k), "1", tmp_path / "reports") for k in range(3)]
    assert [r.retrain is not None for r in runs] == [False, True, False]
    before = {name: store.table(name) for name in TABLES}
    rerun = monitor_day(config, store, panel, day(1), "1", tmp_path / "reports")
    assert rerun.retrain is None and not rerun.alerts
    for name in TABLES:
        pd.testing.assert_frame_equal(store.table(name), before[name], obj=name)
    assert len(before["retrain_events"]) == 1 and len(before["alerts"]) == 3


# --- alerts -----------------------------------------------------------------------------
def test_alert_reaches_a_local_webhook(monkeypatch):
    with webhook_receiver("/hook") as (url, received):
        monkeypatch.setenv(alerts.WEBHOOKS_ENV, f"{url}, http://127.0.0.1:9/unreachable")
        message = alerts.breach_message(day(3), 0.62, 0.95, "below the 90% threshold", 2, 3, "4", "r.html")
        alert = alerts.Alert("breach", day(3), "4", message)
        failed = alerts.notify(alert, timeout=2.0)
    assert failed == ["http://127.0.0.1:9"]  # the dead destination is reported, not raised
    assert len(received) == 1
    body = received[0]
    assert body["kind"] == "breach" and body["day"] == str(day(3)) and body["model_version"] == "4"
    for words in ("62.0%", "95%", "90%", "breach day 2 of 3", "model version 4", "r.html"):
        assert words in body["message"]


# --- drift ------------------------------------------------------------------------------
@pytest.mark.parametrize("factor, drifted", [(1.0, False), (1.8, True)])
def test_evidently_sees_target_drift_only_after_a_shift(tmp_path, factor, drifted):
    rng = np.random.default_rng(3)
    levels = rng.uniform(5, 80, size=50)

    def frame(days, scale, start):
        target = rng.poisson(np.tile(levels * scale, days)).astype(float)
        dates = pd.date_range(start, periods=days, freq="D").repeat(len(levels))
        return pd.DataFrame({"date": dates, "target": target, "price": rng.normal(2.0, 0.1, size=target.size)})

    reference = frame(56, 1.0, "2024-01-01")
    current = frame(7, factor, "2024-02-26").assign(covered=1.0)
    summary = drift_report(reference, current, ("price",), 0.1, tmp_path / "report.html", decision="PIC 91%: ok",
                           day=dt.date(2024, 3, 3), workspace=tmp_path / "workspace")
    assert summary.target_drifted is drifted
    assert summary.drifted_columns == int(drifted)  # the price did not move
    assert summary.coverage == 1.0
    # The snapshot is in the workspace `evidently ui` serves, dated, led by the decision, and
    # small next to the HTML export (the data are not copied into it).
    from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(tmp_path / "workspace"))
    project = next(p for p in workspace.list_projects() if p.name == "bayes-pipeline")
    (run_id,) = workspace.list_runs(project.id)
    snapshot = workspace.get_run(project.id, run_id)
    assert snapshot.metadata["decision"] == "PIC 91%: ok" and snapshot.timestamp.date() == dt.date(2024, 3, 3)
    assert Path(summary.snapshot).stat().st_size < summary.report_path.stat().st_size / 20
    assert summary.report_path.stat().st_size > 10_000 and "<html" in summary.report_path.read_text()[:2000].lower()


@pytest.mark.parametrize("html", [True, False])
def test_the_html_export_of_the_drift_report_is_optional(store, tmp_path, html):
    """monitoring.drift_html: on, a day's drift report is an HTML file that the breach alert
    names; off, no HTML is written and the alert names the snapshot in the Evidently
    workspace, which is written either way."""
    config = PipelineConfig(workdir=tmp_path, monitoring={"drift_html": html, "lookback_days": 0})
    store.replace_forecasts(day(0), forecast_rows(day(0), ["A", "B", "C", "D"], 1, center=30.0))  # misses 10
    run = monitor_day(config, store, constant_panel(actual_days=1), day(0), "1", tmp_path / "reports")
    assert run.drift is not None and run.drift.snapshot is not None and Path(run.drift.snapshot).exists()
    written = sorted(p.name for p in (tmp_path / "reports").glob("*.html"))
    assert written == (["monitoring-2024-03-01.html"] if html else [])
    assert [a.kind for a in run.alerts] == ["breach"]
    assert run.alerts[0].report == run.drift.link == (str(tmp_path / "reports" / written[0]) if html
                                                       else run.drift.snapshot)


OUTBOX_COLUMNS = ("alerts.details", "alerts.status", "alerts.attempts", "alerts.last_error",
                  "retrain_events.attempts", "retrain_events.claimed_by", "retrain_events.dispatched_run")


@pytest.mark.parametrize("dropped", [("forecasts.order_up_to", "forecasts.safety_stock", "retrain_events.claimed_at",
                                      *OUTBOX_COLUMNS),
                                     ("forecasts.safety_stock", "retrain_events.claimed_at", *OUTBOX_COLUMNS)],
                         ids=["version 1", "died half-way through migration 2"])
def test_a_version_1_store_is_migrated_in_place(tmp_path, dropped):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    ForecastStore(url).create().dispose()
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # turn it into what version 1 of the code created
        for column in dropped:
            table, name = column.split(".")
            conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {name}"))
        conn.execute(sa.text("DELETE FROM schema_info"))
        conn.execute(sa.text("INSERT INTO schema_info (version) VALUES (1)"))
    store = ForecastStore(url).create()
    frame = forecast_rows(day(0), ["A"], 3).assign(order_up_to=[30.0, 25.0, float("nan")], safety_stock=1.0)
    store.replace_forecasts(day(0), frame)
    stored = store.table("forecasts")
    assert stored["order_up_to"].tolist()[:2] == [30.0, 25.0] and pd.isna(stored["order_up_to"].iloc[2])
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT version FROM schema_info")).scalars()) == [1, 2, 3, 4, 5]
    assert store.claim_retrain(day(0), day(2), "subflow", "1", dt.timedelta(hours=6))
    assert store.table("retrain_events")["claimed_at"].notna().all()
    assert store.add_alert(day(0), "breach", "1", "m") and len(store.undelivered_alerts()) == 1  # the outbox
    store.dispose()
    engine.dispose()


@pytest.mark.parametrize("interval_level, fires", [(0.95, False), (0.80, True)])
def test_the_default_rule_never_fires_on_calibrated_intervals_and_fires_on_narrow_ones(tmp_path, interval_level,
                                                                                         fires):
    """The three-day rule at its defaults (PIC of the 95% interval below 90% on 3 days in a
    row), driven by the true predictive distribution of synthetic demand: 14 days of honest
    intervals must not trigger a retrain, not even one breach. The same days published with
    the true 80% interval in the 95% columns (a model that is too sure of itself) must."""
    from pipeline_lib.data.synthetic import synthetic_panel
    from pipeline_lib.model.forecast import forecast_table

    n_series, n_days, first = 200, 60, 46
    data = synthetic_panel("smooth", n_series=n_series, n_days=n_days, seed=3)
    panel = validate_table(data.frame, PipelineConfig().data, min_days=1)
    config = PipelineConfig(workdir=tmp_path)
    assert (config.monitoring.pic_threshold, config.monitoring.consecutive_days) == (0.9, 3)  # the defaults
    # The oracle's quantiles on a fine grid act as its samples; a too-sure forecaster's grid
    # is squeezed towards the median, so that its 2.5% / 97.5% sample quantiles are the
    # oracle's 10% / 90% (its "95%" interval is the true 80% one).
    grid = (np.arange(1000) + 0.5) / 1000
    levels = 0.5 + (grid - 0.5) * interval_level / 0.95
    store = ForecastStore(config.store_url).create()
    runs = []
    for t in range(first, n_days):
        run_date = panel.series[0].dates[t].date()
        samples = np.concatenate([data.oracle_quantiles(levels, k, np.array([t])) for k in range(n_series)], axis=1)
        table = forecast_table(samples, [s.series_id for s in panel.series], [run_date] * n_series, "1")
        store.replace_forecasts(run_date, table)
        runs.append(monitor_day(config, store, panel.until(run_date), run_date, "1", tmp_path / "reports"))
    pic = [run.headline["picp"] for run in runs]
    claims = store.table("retrain_events")
    store.dispose()
    if fires:
        assert max(pic) < 0.9 and len(claims) == 1, pic  # one retrain per streak
        assert runs[2].retrain is not None and runs[2].retrain.streak_start == runs[0].day
        # The day's drift snapshot leads with the verdict, streak included.
        decision = json.loads(Path(runs[2].drift.snapshot).read_text())["metadata"]["decision"]
        assert "BREACH, day 3 of 3 before a retrain" in decision and f"{pic[2]:.1%}" in decision
    else:
        assert min(pic) >= 0.9 and claims.empty and not any(run.alerts for run in runs), pic
        assert 0.94 <= np.mean(pic) <= 0.98, np.mean(pic)  # honest, not trivially wide


def test_alerts_wait_in_the_outbox_until_every_destination_took_them(tmp_path, monkeypatch):
    """A breach alert whose webhook is down stays ``pending`` and is resent by each later
    run until it goes through; one that can never be delivered is given up after
    ALERT_MAX_ATTEMPTS runs. Nothing is sent twice."""
    store = ForecastStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    store.add_alert(day(0), "breach", "1", "coverage 80% below 90%", details={"picp": 0.8})

    def status():
        row = store.table("alerts").set_index("kind").loc["breach"]
        return row["status"], row["attempts"]

    with webhook_receiver(failures=2) as (url, received):
        monkeypatch.setenv(alerts.WEBHOOKS_ENV, url)
        first = alerts.deliver_pending(store, alerts.notify)  # the run that raised it: 503
        assert len(first.retried) == 1 and status() == ("pending", 1) and received == []
        alerts.deliver_pending(store, alerts.notify)  # the next day's run: 503 again
        assert status() == ("pending", 2)
        third = alerts.deliver_pending(store, alerts.notify)  # delivered
        assert [a.kind for a in third.sent] == ["breach"] and status() == ("sent", 3)
        assert len(received) == 1 and received[0]["details"] == {"picp": 0.8}
        assert alerts.deliver_pending(store, alerts.notify) == alerts.Delivery()  # nothing left to send
        assert len(received) == 1
    monkeypatch.setenv(alerts.WEBHOOKS_ENV, "http://127.0.0.1:9/down")  # nothing listens on port 9
    store.add_alert(day(1), "retrain", "1", "retraining")
    for _ in range(alerts.ALERT_MAX_ATTEMPTS):
        last = alerts.deliver_pending(store, alerts.notify)
    assert len(last.undeliverable) == 1
    row = store.table("alerts").set_index("kind").loc["retrain"]
    assert row["status"] == "undeliverable" and row["attempts"] == alerts.ALERT_MAX_ATTEMPTS
    assert alerts.deliver_pending(store, alerts.notify) == alerts.Delivery()  # given up for good
    store.dispose()


def test_a_retry_goes_only_to_the_destinations_that_failed(tmp_path, monkeypatch):
    """Two webhooks, one down for two runs: the healthy one gets the alert once, the other
    once when it comes back; the row is ``sent`` only then."""
    store = ForecastStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    store.add_alert(day(0), "breach", "1", "coverage 80% below 90%")
    with webhook_receiver() as (healthy, healthy_got), webhook_receiver(failures=2) as (flaky, flaky_got):
        monkeypatch.setenv(alerts.WEBHOOKS_ENV, f"{healthy},{flaky}")
        runs = [alerts.deliver_pending(store, alerts.notify) for _ in range(3)]
    store.dispose()
    assert [len(run.retried) for run in runs] == [1, 1, 0] and len(runs[2].sent) == 1
    assert len(healthy_got) == 1 and len(flaky_got) == 1


def test_a_malformed_webhook_url_is_a_configuration_error_at_start(monkeypatch):
    from pipeline_lib.errors import ConfigError

    monkeypatch.setenv(alerts.WEBHOOKS_ENV, "https://hooks.example.com/a,hooks.example.com/secret-token")
    with pytest.raises(ConfigError, match=r"URL 2 of 2 is not an http\(s\) URL") as error:
        alerts.check_destinations()
    assert "secret-token" not in str(error.value)
    monkeypatch.setenv(alerts.WEBHOOKS_ENV, "https://hooks.example.com/a")
    alerts.check_destinations()


def test_a_failed_retrain_is_retried_within_its_streak_with_back_off_and_a_bound(tmp_path):
    """A ``failed`` claim stops counting as retrained once its back-off has passed (20 h after
    the first failure, 40 h after the second), one caller takes it over, and after three
    attempts the streak counts as retrained for good."""
    from pipeline_lib.store import RetrainRetry

    store = ForecastStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    retry = RetrainRetry(dt.timedelta(hours=20), max_attempts=3)
    t0 = dt.datetime(2024, 3, 3, 7, 0)

    def claim(at, claimer=None):
        return store.claim_retrain(day(0), day(2), "subflow", "1", dt.timedelta(hours=6), now=at, retry=retry,
                                   claimer=claimer)

    assert claim(t0)
    store.finish_retrain(day(0), "failed", detail="MLflow down")
    assert store.retrained_streaks(retry=retry, now=t0 + dt.timedelta(hours=19)) == {day(0)}  # backing off
    assert not claim(t0 + dt.timedelta(hours=19))
    assert store.retrained_streaks(retry=retry, now=t0 + dt.timedelta(days=1)) == set()  # due again
    results = []
    run_concurrently(lambda: results.append(claim(t0 + dt.timedelta(days=1))), 4)
    assert sorted(results) == [False, False, False, True]  # one taker
    store.finish_retrain(day(0), "failed")
    second = t0 + dt.timedelta(days=1)
    assert not claim(second + dt.timedelta(hours=39))  # twice the back-off now
    assert claim(second + dt.timedelta(hours=41))
    store.finish_retrain(day(0), "failed")
    event = store.table("retrain_events").iloc[0]
    assert event["attempts"] == 3 and event["status"] == "failed"
    later = second + dt.timedelta(days=30)
    assert store.retrained_streaks(retry=retry, now=later) == {day(0)} and not claim(later)  # the bound
    # Without retries (the old behaviour) a failed claim counted as done at once.
    assert store.retrained_streaks(now=t0) == {day(0)}
    store.dispose()


def test_a_retried_monitoring_task_keeps_the_retrain_it_claimed(tmp_path):
    """The monitoring task that claims a retrain is retried by Prefect when it fails later
    on: the retry of the same flow run gets its claim back; another run does not."""
    config = PipelineConfig(workdir=tmp_path, monitoring={"consecutive_days": 2})
    store = ForecastStore(config.store_url).create()
    for k in range(2):
        store.replace_forecasts(day(k), forecast_rows(day(k), ["A", "B", "C", "D"], 1))
    panel = constant_panel(actual_days=2, value=30.0)  # both days breach
    monitor_day(config, store, panel, day(0), "1", tmp_path / "r", claimer="run-1")
    first = monitor_day(config, store, panel, day(1), "1", tmp_path / "r", claimer="run-1")
    assert first.retrain is not None  # claimed ... then the task died before retraining
    retried = monitor_day(config, store, panel, day(1), "1", tmp_path / "r", claimer="run-1")
    assert retried.retrain is not None and retried.retrain.streak_start == first.retrain.streak_start
    other = monitor_day(config, store, panel, day(1), "1", tmp_path / "r", claimer="run-2")
    assert other.retrain is None  # another run finds it taken (not stale yet)
    store.dispose()


def test_a_dispatched_retrain_whose_deployment_run_failed_is_retried(tmp_path):
    from pipeline_lib.monitoring.retrain import settle_dispatched
    from pipeline_lib.store import RetrainRetry

    store = ForecastStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    t0 = dt.datetime(2024, 3, 3, 7, 0)
    for k, run_id in ((0, "run-ok"), (10, "run-failed"), (20, "run-running")):
        store.claim_retrain(day(k), day(k + 2), "deployment", "1", now=t0)
        store.finish_retrain(day(k), "dispatched", detail="started", dispatched_run=run_id)
    states = {"run-ok": "COMPLETED", "run-failed": "CRASHED", "run-running": None}
    assert settle_dispatched(store, states.get) == ["run-failed"]
    events = store.table("retrain_events").set_index("streak_start")
    assert events.loc[day(10), "status"] == "failed" and "ended CRASHED" in events.loc[day(10), "detail"]
    assert (events.loc[[day(0), day(20)], "status"] == "dispatched").all()
    retry = RetrainRetry(dt.timedelta(hours=20), max_attempts=3)
    assert store.retrained_streaks(retry=retry, now=t0 + dt.timedelta(days=1)) == {day(0), day(20)}
    store.dispose()


def test_a_retrain_outcome_and_its_alert_are_written_together(tmp_path):
    """A process that dies while recording a retrain leaves neither its outcome nor its
    alert, never a completed retrain without the alert (the write fails half-way here)."""
    store = ForecastStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    store.claim_retrain(day(0), day(2), "subflow", "1")
    alert = {"day": day(2), "kind": "retrain", "model_version": "1", "message": None}  # NOT NULL: fails
    with pytest.raises(Exception, match="NOT NULL"):
        store.finish_retrain(day(0), "completed", "2", True, "trained version 2", alert=alert)
    assert store.table("retrain_events").iloc[0]["status"] == "started" and store.table("alerts").empty
    alert["message"] = "retraining: trained version 2"
    assert store.finish_retrain(day(0), "completed", "2", True, "trained version 2", alert=alert)
    assert not store.finish_retrain(day(0), "completed", "2", True, "trained version 2", alert=alert)  # a rerun
    assert store.table("retrain_events").iloc[0]["status"] == "completed"
    assert store.undelivered_alerts()["kind"].tolist() == ["retrain"]
    store.dispose()


@pytest.mark.parametrize("rule, level, retrains", [("threshold", 25.0, False), ("protection", 25.0, True),
                                                   ("protection", 35.0, False)])
def test_the_protection_rule_retrains_when_the_orders_fall_short_though_the_intervals_cover(tmp_path, rule, level,
                                                                                            retrains):
    """Demand of 10 a day, one-day 95% intervals 10 +- 2 (they always cover) and order-up-to
    levels of ``level`` for lead time 2 + review 1 days. The one-day rule never acts. Under
    ``breach_rule: protection`` levels of 25 against 30 units of demand per period fail: days 0
    and 1 are pending (no level has met its whole period yet), days 2, 3, 4 breach and day 4,
    the third, claims one retrain; levels of 35 hold and nothing happens."""
    config = PipelineConfig(workdir=tmp_path, monitoring={"breach_rule": rule, "lookback_days": 3})
    assert config.inventory.protection_days == 3  # the defaults: lead time 2, review period 1
    store = ForecastStore(config.store_url).create()
    runs = []
    for k in range(6):
        store.replace_forecasts(day(k), forecast_rows(day(k), ["A", "B", "C", "D"], 3).assign(order_up_to=level))
        runs.append(monitor_day(config, store, constant_panel(actual_days=k + 1), day(k), "1", tmp_path / "reports"))
    overall, protection, claims = store.coverage("overall"), store.coverage("protection"), store.table("retrain_events")
    store.dispose()
    assert list(overall["picp"]) == [1.0] * 6  # the intervals cover every day
    if rule == "threshold":
        assert protection.empty and claims.empty and not any(run.alerts for run in runs)
        return
    assert list(protection["status"]) == ["pending"] * 2 + ["ok"] * 4
    assert list(protection["picp"][2:]) == ([0.0] * 4 if retrains else [1.0] * 4)
    if retrains:
        assert [run.retrain is not None for run in runs] == [False] * 4 + [True, False] and len(claims) == 1
        assert runs[4].retrain.streak_start == day(2)
        assert "order-up-to levels set for 95% service held for 0.0% of the series" in runs[2].alerts[0].message
        assert runs[2].describe().startswith(f"{day(2)}: orders held for 0.0% of 4/4 series")
        # The day's drift snapshot leads with the deciding coverage's verdict, not the intervals'.
        decision = json.loads(Path(runs[4].drift.snapshot).read_text())["metadata"]["decision"]
        assert decision.startswith("orders held for 0.0% of 4 series") and "BREACH, day 3 of 3" in decision
    else:
        assert claims.empty and not any(run.alerts for run in runs)


def test_the_protection_rule_needs_order_levels_for_its_whole_period():
    with pytest.raises(ValueError, match="serving.horizon 2 must cover lead time \\+ review period \\(3 days\\)"):
        PipelineConfig(monitoring={"breach_rule": "protection"}, serving={"horizon": 2})
