"""The monitoring's cheap first response end to end: with ``first_response: online_update``
a breach streak updates the champion's posterior instead of retraining (own file, so
pytest-xdist can run it beside the other replays)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from support import SHIFT_DAY, START, level_following_demand, replay_config

from pipeline_lib import registry
from pipeline_lib.monitoring.replay import ReplaySpec
from pipeline_lib.store import ForecastStore

pytestmark = pytest.mark.flows


def test_online_update_is_the_first_response_to_a_shift(prefect_harness, tmp_path):
    """``first_response: online_update`` without window centring: the third breach day
    updates the champion's posterior on the last days (a new version, tagged) instead of
    retraining; it passes the held-out day check, so the following forecasts come from the
    updated version."""
    from flows.replay import replay_flow

    config = replay_config(tmp_path, "online", level_following_demand(n_series=40, seed=2)).updated(
        model={"level_days": 0}, monitoring={"first_response": "online_update", "online_update_days": 5})
    # The shift breaches from May 16, so the update comes by May 18 and May 19 is forecast after it.
    result = replay_flow(config, ReplaySpec(START, 8, SHIFT_DAY, 1.8), progress=lambda _: None)
    store = ForecastStore(config.store_url)
    events = store.table("retrain_events")
    forecasts = store.table("forecasts")
    alerts = store.table("alerts")
    store.dispose()
    assert len(events) >= 1, result.text
    update = events.iloc[0]
    assert update["mode"] == "online_update" and update["status"] == "completed"
    # Every streak's first response is an update; a retrain only escalates an updated
    # streak, keyed three days after its start.
    updates = set(events.loc[events["mode"] == "online_update", "streak_start"])
    escalations = events.loc[events["mode"] != "online_update", "streak_start"]
    assert all(start - dt.timedelta(days=3) in updates for start in escalations), events
    registry.configure(config.tracking_uri)
    tags = registry.ModelVersion(config.registry.model_name, update["new_version"]).tags()
    assert tags["update.kind"] == "online" and tags["update.parent_version"] == update["champion_before"]
    # promoted because it passed the held-out day check (a spike would leave it challenger)
    assert tags["gate.promote"] == "True" and "held-out last day" in tags["gate.reasons"] and bool(update["promoted"])
    after = forecasts[pd.to_datetime(forecasts["run_date"]).dt.date > update["triggered_on"]]
    assert update["new_version"] in set(after["model_version"])
    message = alerts.loc[(alerts["kind"] == "retrain") & (alerts["day"] == update["triggered_on"]), "message"].iloc[0]
    assert "online update" in message
    assert "online update -> v" in result.text
