"""Fault injection: each test breaks one thing and checks the guarantee that must survive.

- MLflow unreachable or failing mid-run: clear error, no version kept, champion unchanged.
- Training diverges: nothing registered, a FAILED run says why.
- Forecast store locked: retried; if it stays locked, a clear error and nothing written.
- A crash in the middle of monitoring: the next run completes the days exactly as if
  nothing had happened; two runs of one day at once retrain once; a retrain killed
  mid-training is retried once its claim is stale.
- A corrupt champion: one clear error and one alert per day, no retry loop.
"""

from __future__ import annotations

import datetime as dt
import socket
import sqlite3
import threading
import time

import numpy as np
import pandas as pd
import pytest
from support import constant_panel, day, forecast_rows, run_concurrently

from pipeline_lib import registry, stages
from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.validate import load_panel
from pipeline_lib.errors import (
    ModelLoadError,
    RegistryUnavailableError,
    StoreUnavailableError,
    TrainingDivergedError,
)
from pipeline_lib.evaluation.gate import GateDecision
from pipeline_lib.monitoring import daily
from pipeline_lib.monitoring.daily import monitor_day
from pipeline_lib.store import TABLES, ForecastStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- MLflow -----------------------------------------------------------------------------
def test_unreachable_mlflow_is_a_clear_error_before_training(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # bounded; the default is 3
    uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(RegistryUnavailableError, match="unreachable.*nothing was trained"):
        registry.check_reachable(uri)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A champion (version 1) and everything needed to register a second version; shared
    by the tests below, which each leave the registry as they found it (that is their point)."""
    from support import synthetic_demand

    tmp = tmp_path_factory.mktemp("registered")
    data = tmp / "demand.csv"
    synthetic_demand().to_csv(data, index=False)
    config = PipelineConfig(
        workdir=tmp / "work", data={"path": data},
        window={"context_length": 14, "validation_days": 14, "test_days": 7, "min_train_days": 14},
        model={"lstm_units": (8, 4)}, train={"epochs": 1, "batch_size": 64, "patience": 1, "kl_ramp_epochs": 1},
        evaluation={"num_samples": 20, "fan_chart_series": 2}, inventory={"in_training_run": False},
        registry={"experiment_name": "faults", "model_name": "faults-model"})
    panel = load_panel(config.data, config.window)
    trained = stages.train(config, panel, progress=False)
    evaluation = stages.evaluate(config, trained.model, panel)
    gate = stages.promotion_gate(config, panel, evaluation)
    first = stages.register(config, panel, trained, evaluation, [], gate)
    assert first.version == "1" and "champion" in first.aliases
    return config, panel, trained, evaluation


def _versions(config) -> list[str]:
    found = registry.client().search_model_versions(f"name = '{config.registry.model_name}'")
    return sorted(str(v.version) for v in found)


@pytest.mark.flows
def test_mlflow_failing_mid_registration_keeps_no_version_and_the_champion(registered, monkeypatch):
    import requests

    config, panel, trained, evaluation = registered
    registry.configure(config.tracking_uri)
    promote = stages.GateOutcome(GateDecision(True, ("forced",)), "1", None)

    def connection_lost(*args, **kwargs):
        raise requests.exceptions.ConnectionError("connection reset by peer")

    monkeypatch.setattr(registry, "tag_version", connection_lost)  # after the version exists
    with pytest.raises(RegistryUnavailableError, match="no model version was kept"):
        stages.register(config, panel, trained, evaluation, [], promote)
    assert _versions(config) == ["1"]
    assert registry.alias_version(config.registry.model_name, "champion") == "1"
    runs = registry.client().search_runs([registry.client().get_experiment_by_name(
        config.registry.experiment_name).experiment_id], order_by=["attribute.start_time DESC"])
    assert runs[0].info.status == "FAILED" and runs[1].info.status == "FINISHED"


@pytest.mark.flows
def test_diverging_training_registers_nothing_and_leaves_a_failed_run(registered, monkeypatch):
    config, panel, _, _ = registered
    registry.configure(config.tracking_uri)

    def diverge(*args, **kwargs):
        raise TrainingDivergedError("loss became nan at epoch 3; nothing is registered")

    monkeypatch.setattr(stages.training, "train_model", diverge)
    with pytest.raises(TrainingDivergedError):
        stages.train(config, panel, progress=False)
    assert _versions(config) == ["1"]
    assert registry.alias_version(config.registry.model_name, "champion") == "1"
    experiment = registry.client().get_experiment_by_name(config.registry.experiment_name)
    failed = registry.client().search_runs([experiment.experiment_id], "tags.`failure.stage` = 'train'")
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "nan" in failed[0].data.tags["failure.error"]


# --- the forecast store -----------------------------------------------------------------
def _hold_lock(path, seconds: float, started: threading.Event) -> None:
    conn = sqlite3.connect(path, timeout=0)
    conn.execute("BEGIN EXCLUSIVE")
    started.set()
    time.sleep(seconds)
    conn.rollback()
    conn.close()


def test_locked_store_is_retried_then_written(tmp_path):
    path = tmp_path / "store.db"
    store = ForecastStore(f"sqlite:///{path}", attempts=6, backoff_seconds=0.2, busy_timeout=0.1).create()
    started = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(path, 1.0, started))
    holder.start()
    started.wait()
    assert store.replace_forecasts(day(0), forecast_rows(day(0), ["A", "B"], 3)) == 6
    holder.join()
    assert len(store.table("forecasts")) == 6


def test_store_locked_for_good_is_a_clear_error_and_writes_nothing(tmp_path):
    path = tmp_path / "store.db"
    store = ForecastStore(f"sqlite:///{path}", attempts=2, backoff_seconds=0.1, busy_timeout=0.1).create()
    store.replace_forecasts(day(0), forecast_rows(day(0), ["A", "B"], 3))
    started = threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(path, 2.0, started))
    holder.start()
    started.wait()
    with pytest.raises(StoreUnavailableError, match="replace_forecasts failed after 2 attempts.*nothing"):
        store.replace_forecasts(day(0), forecast_rows(day(0), ["A", "B"], 3, center=99.0))
    holder.join()
    assert (store.table("forecasts")["mean"] == 10.0).all()  # the earlier day is intact


def test_a_day_is_written_whole_or_not_at_all(tmp_path):
    store = ForecastStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    store.replace_forecasts(day(0), forecast_rows(day(0), ["A", "B"], 3))
    broken = forecast_rows(day(0), ["A", "B"], 3, center=50.0)
    broken.loc[4, "mean"] = None  # violates NOT NULL half-way through the insert
    with pytest.raises(Exception, match="NOT NULL"):
        store.replace_forecasts(day(0), broken)
    assert (store.table("forecasts")["mean"] == 10.0).all() and len(store.table("forecasts")) == 6


# --- crashes and concurrency in the monitoring --------------------------------------------
def _breaching_days(store, n_days: int) -> None:
    for k in range(n_days):
        store.replace_forecasts(day(k), forecast_rows(day(k), ["A", "B", "C", "D"], 2))


def _monitor(config, store, days, tmp_path) -> list[dt.date]:
    """Monitor ``days`` in order; returns the days whose run died."""
    crashed = []
    for d in days:
        try:
            monitor_day(config, store, constant_panel(actual_days=len(days), value=30.0), d, "1", tmp_path / "r")
        except RuntimeError as exc:
            assert str(exc) == "killed"
            crashed.append(d)
    return crashed


def test_crash_mid_monitoring_is_completed_by_the_next_run(tmp_path, monkeypatch):
    config = PipelineConfig(workdir=tmp_path, monitoring={"consecutive_days": 3})
    clean = ForecastStore(f"sqlite:///{tmp_path / 'clean.db'}").create()
    _breaching_days(clean, 5)
    assert _monitor(config, clean, [day(k) for k in range(5)], tmp_path) == []

    crashed = ForecastStore(f"sqlite:///{tmp_path / 'crashed.db'}").create()
    _breaching_days(crashed, 5)
    real_drift = daily._drift
    calls = {"n": 0}

    def crash_once(*args, **kwargs):  # dies after the coverage of day 2 was written
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real_drift(*args, **kwargs)

    monkeypatch.setattr(daily, "_drift", crash_once)
    assert _monitor(config, crashed, [day(k) for k in range(5)], tmp_path) == [day(2)]  # the crash did happen
    assert crashed.table("retrain_events")["streak_start"].tolist() == [day(0)]
    for name in TABLES:  # the claim's wall-clock time is the only column allowed to differ
        pd.testing.assert_frame_equal(crashed.table(name).drop(columns="claimed_at", errors="ignore"),
                                      clean.table(name).drop(columns="claimed_at", errors="ignore"), obj=name)


def test_a_retrain_killed_mid_training_is_retried_once_its_claim_is_stale(tmp_path):
    """The run of day 2 claims the retrain and dies while training (the claim stays
    ``started``). Day 3's run, within the timeout, leaves it alone; day 4's run, when the
    claim is older than the timeout, retrains the same streak again."""
    from pipeline_lib.store.schema import retrain_events

    config = PipelineConfig(workdir=tmp_path, monitoring={"consecutive_days": 3, "retrain_claim_timeout_hours": 6})
    store = ForecastStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    _breaching_days(store, 5)
    panel = constant_panel(actual_days=5, value=30.0)
    runs = [monitor_day(config, store, panel, day(k), "1", tmp_path / "r") for k in range(4)]
    assert [run.retrain is not None for run in runs] == [False, False, True, False]
    assert runs[2].retrain.streak_start == day(0)

    with store.engine.begin() as conn:  # six hours and a minute pass without the retrain finishing
        conn.execute(retrain_events.update().values(
            claimed_at=dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=6, minutes=1)))
    retried = monitor_day(config, store, panel, day(4), "1", tmp_path / "r")
    assert retried.retrain is not None and retried.retrain.streak_start == day(0)
    events = store.table("retrain_events")
    assert len(events) == 1 and "taken over" in events["detail"].iloc[0]
    assert monitor_day(config, store, panel, day(4), "1", tmp_path / "r").retrain is None  # fresh again


def test_two_monitoring_runs_of_one_day_at_once_retrain_once(tmp_path):
    config = PipelineConfig(workdir=tmp_path, monitoring={"consecutive_days": 2})
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = ForecastStore(url).create()
    _breaching_days(store, 2)
    monitor_day(config, store, constant_panel(actual_days=2, value=30.0), day(0), "1", tmp_path / "r")
    runs, errors = [], []

    def run():
        own = ForecastStore(url)
        try:
            panel = constant_panel(actual_days=2, value=30.0)
            runs.append(monitor_day(config, own, panel, day(1), "1", tmp_path / "r"))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        own.dispose()

    run_concurrently(run, 2)
    assert not errors
    assert sum(r.retrain is not None for r in runs) == 1
    assert len(store.table("retrain_events")) == 1
    coverage = store.table("coverage_daily")
    assert len(coverage) == len(coverage.drop_duplicates(["day", "scope", "level"]))
    assert set(store.table("alerts")["day"]) == {day(0), day(1)}


# --- a corrupt champion --------------------------------------------------------------------
@pytest.mark.flows
def test_corrupt_champion_is_one_clear_error_and_one_alert(registered):
    from prefect.testing.utilities import prefect_test_harness

    from flows.forecasting import daily_forecast_flow

    config, *_ = registered
    originals = {path: path.read_bytes() for path in config.artifact_root.rglob("weights.npz")}
    for weights in originals:
        weights.write_bytes(b"not a numpy archive")
    try:
        with prefect_test_harness(server_startup_timeout=120):
            for _ in range(2):  # the next day's rerun fails the same way, without a second alert
                with pytest.raises(ModelLoadError, match="model/weights.npz is missing or changed"):
                    daily_forecast_flow(config, run_date=dt.date(2023, 5, 2))
    finally:  # the registry as the other tests of the module found it
        for path, content in originals.items():
            path.write_bytes(content)
    store = ForecastStore(config.store_url)
    alerts = store.table("alerts")
    assert alerts["kind"].tolist() == ["error"] and "could not be loaded" in alerts["message"].iloc[0]
    assert store.table("forecasts").empty
    store.dispose()


@pytest.mark.parametrize("name", ["artifacts/model/weights.npz", "artifacts/model/model.json",
                                  "artifacts/model/scalers.json", "artifacts/serving.json",
                                  "artifacts/manifest.json", "registry_model.py"])
@pytest.mark.parametrize("damage", ["tampered", "deleted"])
def test_every_file_of_a_registered_model_is_verified_before_it_is_loaded(registered, tmp_path, name, damage):
    """A downloaded version whose files changed after registration (corrupted, tampered,
    or gone) is refused with a ModelLoadError naming the file; nothing of it runs."""
    import shutil

    from pipeline_lib import registry

    config, *_ = registered
    registry.configure(config.tracking_uri)
    import mlflow

    local = tmp_path / "version"
    shutil.copytree(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{config.registry.model_name}/1"),
                    local)
    registry.load_model_files(local, "v1")  # intact: loads
    target = local / name
    if damage == "deleted":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:-1] + b"!")
    with pytest.raises(ModelLoadError, match=f"{name.removeprefix('artifacts/')} is (missing|changed|corrupt)"):
        registry.load_model_files(local, "v1")


def test_random_sql_in_series_ids_is_just_data(tmp_path):
    store = ForecastStore(f"sqlite:///{tmp_path / 'store.db'}").create()
    evil = ["x'); DROP TABLE forecasts;--", 'a" OR 1=1 --', "店铺"]
    store.replace_forecasts(day(0), forecast_rows(day(0), evil, 1))
    store.upsert_actuals(pd.DataFrame({"series_id": evil, "date": day(0), "actual": np.ones(3)}))
    assert sorted(store.table("forecasts")["series_id"]) == sorted(evil)
    assert sorted(store.actuals_on(day(0))["series_id"]) == sorted(evil)
