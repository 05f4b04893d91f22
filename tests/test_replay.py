"""The daily loop end to end: replay with a planted demand shift through the real flows.

breach -> alert (store row, webhook) -> exactly one retrain -> new champion through the
gate -> recovery. That the rule stays quiet without a shift is tested with intervals that
are calibrated by construction (test_monitoring.py): a small test model's own noise says
nothing about the rule.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from support import SHIFT_DAY, START, level_following_demand, replay_config, webhook_receiver

from pipeline_lib import registry
from pipeline_lib.monitoring.alerts import WEBHOOKS_ENV
from pipeline_lib.monitoring.replay import ReplaySpec
from pipeline_lib.store import TABLES, ForecastStore

pytestmark = pytest.mark.flows


@pytest.fixture(scope="module")
def webhook():
    with webhook_receiver() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def shifted_replay(prefect_harness, webhook, tmp_path_factory):
    from flows.replay import replay_flow

    url, received = webhook
    tmp_path = tmp_path_factory.mktemp("shifted")
    config = replay_config(tmp_path, "shifted", level_following_demand(n_series=40))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(WEBHOOKS_ENV, url)
        result = replay_flow(config, ReplaySpec(START, 18, SHIFT_DAY, 1.8), progress=lambda _: None)
    return config, result, received


def test_the_simulation_gives_the_numbers_of_the_real_flows(shifted_replay):
    """The closed-loop simulation's library path against the replay through the flows, day
    by day: the same orders, PIC, breaches and retrain day when it starts from the same
    champion (v1) and its retrain yields the version the flows' retrain registered (v2)."""
    from pipeline_lib.data.validate import load_panel
    from pipeline_lib.monitoring.coverage import BreachRule
    from pipeline_lib.monitoring.simulation import (
        SCENARIOS,
        ModelOps,
        SimulationSettings,
        daily_forecast_table,
        run_from_store,
        run_policy,
    )

    config, result, _ = shifted_replay
    days = len(result.timeline)
    registry.configure(config.tracking_uri)
    name = config.registry.model_name
    first, retrained = registry.resolve(f"models:/{name}/1").load(), registry.resolve(f"models:/{name}/2").load()
    panel, changed = SCENARIOS["shift"].plant(load_panel(config.data, config.window), SHIFT_DAY)
    settings = SimulationSettings(days=days, change_day=SHIFT_DAY, breach=BreachRule.of(config))
    ops = ModelOps(daily_forecast_table(config), retrain=lambda model, seen: retrained, update=None)
    library = run_policy("rule", first, panel, START, settings, ops)
    store = ForecastStore(config.store_url)
    flows = run_from_store(store, panel, START, days, "rule", BreachRule.of(config))
    store.dispose()

    assert library.dates == flows.dates and library.actions == flows.actions and len(flows.actions) == 1
    assert library.breach == flows.breach
    np.testing.assert_allclose(library.pic, flows.pic, atol=1e-12)
    np.testing.assert_allclose(np.stack(library.levels), np.stack(flows.levels), rtol=1e-6)
    ours, theirs = library.summary(settings, changed), flows.summary(settings, changed)
    assert {k: v for k, v in ours.items() if k != "upkeep_seconds"} == pytest.approx(
        {k: v for k, v in theirs.items() if k != "upkeep_seconds"}, nan_ok=True)


def test_shift_breaches_retrains_once_and_recovers(shifted_replay):
    config, result, received = shifted_replay
    frame = result.timeline.set_index("day")
    threshold = config.monitoring.pic_threshold
    # The shift takes coverage below the threshold on its first days.
    assert frame.loc[SHIFT_DAY:SHIFT_DAY + dt.timedelta(days=2), "breach"].all()
    assert frame.loc[SHIFT_DAY, "pic"] < 0.5

    store = ForecastStore(config.store_url)
    events = store.table("retrain_events")
    alerts = store.table("alerts")
    store.dispose()
    # Exactly one retrain, on the third consecutive breach day of its streak.
    assert len(events) == 1
    event = events.iloc[0]
    streak = [event["streak_start"] + dt.timedelta(days=k) for k in range(3)]
    assert event["triggered_on"] == streak[-1] and frame.loc[streak, "breach"].all()
    assert SHIFT_DAY <= event["triggered_on"] <= SHIFT_DAY + dt.timedelta(days=2)
    # The retrained version passed the gate and the next forecasts use it.
    assert event["status"] == "completed" and event["new_version"] == "2" and bool(event["promoted"])
    registry.configure(config.tracking_uri)
    assert registry.alias_version(config.registry.model_name, "champion") == "2"
    after = frame.loc[event["triggered_on"] + dt.timedelta(days=1):]
    assert set(after["model"]) == {"2"}
    # Coverage recovers to the threshold while the shift lasts.
    assert after["pic"].max() >= threshold

    # Alerts: one per breach day and one for the retrain, in the table and at the webhook.
    breach_days = set(frame.index[frame["breach"]])
    assert set(alerts.loc[alerts["kind"] == "breach", "day"]) == breach_days
    assert list(alerts.loc[alerts["kind"] == "retrain", "day"]) == [event["triggered_on"]]
    assert sorted((a["kind"], a["day"]) for a in received) == sorted(
        (k, str(d)) for k, d in zip(alerts["kind"], alerts["day"], strict=True))
    retrain_message = alerts.loc[alerts["kind"] == "retrain", "message"].iloc[0]
    assert "trained version 2" in retrain_message and "promoted to champion" in retrain_message
    assert result.chart.stat().st_size > 0
    assert "demand shift starts" in result.text and "retrain -> v2 champion" in result.text


def test_rerunning_a_monitored_day_changes_nothing(shifted_replay):
    from flows.monitoring import daily_monitoring_flow
    from pipeline_lib.monitoring.replay import OBSERVED_FILE, observed_config

    config, _, _ = shifted_replay
    store = ForecastStore(config.store_url)
    before = {name: store.table(name) for name in TABLES}
    daily_config = observed_config(config, config.workdir / "replay" / OBSERVED_FILE)
    # The day that triggered the retrain, with every actual known: no second retrain.
    event_day = before["retrain_events"]["triggered_on"].iloc[0]
    run = daily_monitoring_flow(daily_config, day=event_day)
    assert run.retrain is None and not run.alerts
    for name in TABLES:
        after = store.table(name)
        if name == "coverage_daily":  # the rerun re-derives the same numbers
            after = after.sort_values(["day", "scope"], ignore_index=True)
            expected = before[name].sort_values(["day", "scope"], ignore_index=True)
        else:
            expected = before[name]
        pd.testing.assert_frame_equal(after, expected, obj=name)
    store.dispose()


def test_replay_runs_its_daily_subflows_without_heartbeat_threads(monkeypatch):
    """Each subflow's heartbeat thread was joined at its end (up to 1 s, two flows a day):
    the replay turns them off for its days, and only for them."""
    from prefect.settings import get_current_settings

    import flows.replay as replay
    from pipeline_lib.config import PipelineConfig

    seen = []
    monkeypatch.setattr(replay, "run_replay",
                        lambda *args, **kwargs: seen.append(get_current_settings().flows.heartbeat_frequency))
    monkeypatch.setattr(replay.stages, "ingest", lambda config: None)
    replay.replay_flow.fn(PipelineConfig(), ReplaySpec(START, 1))
    assert seen == [None] and get_current_settings().flows.heartbeat_frequency == 180
