"""The training flow end to end on tiny data: MLflow run, artifacts, versions, aliases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_lib import registry
from pipeline_lib.contract import check_forecast_frame
from pipeline_lib.data.features import part_days
from pipeline_lib.data.validate import load_panel

pytestmark = pytest.mark.flows


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_training_flow_registers_champion_then_challenger(prefect_harness, small_config, synthetic_csv):
    from flows.training import training_pipeline

    config = small_config.updated(data={"path": synthetic_csv})
    first = training_pipeline(config, progress=False)
    assert first.version == "1" and set(first.aliases) == {"champion", "challenger"}

    mlflow_client = registry.client()
    run = mlflow_client.get_run(first.run_id)
    for key in ("picp_80", "picp_90", "picp_95", "mpiw_95", "crps", "crps_scaled", "mae", "epistemic_share",
                "peer_seasonal_naive_crps_scaled", "peer_seasonal_naive_picp_95"):
        assert np.isfinite(run.data.metrics[key]), key
    assert 0.0 <= run.data.metrics["picp_95"] <= 1.0
    plots = {a.path for a in mlflow_client.list_artifacts(first.run_id, "plots")}
    assert {"plots/fan_chart.png", "plots/calibration_curve.png", "plots/pit_histogram.png",
            "plots/coverage_by_horizon.png", "plots/sharpness_vs_calibration.png",
            "plots/inventory_service_vs_stock.png"} <= plots
    # The order-policy backtest of the test split is logged with the run.
    for rule in ("a", "b_textbook", "b_tuned", "c"):
        assert 0.0 <= run.data.metrics[f"inventory_{rule}_cycle_service_level"] <= 1.0
        assert run.data.metrics[f"inventory_{rule}_average_inventory"] >= 0.0
    # The run says what it was trained and judged on: two datasets with digest and source.
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "evaluation"}
    assert all(d.digest and str(synthetic_csv) in d.source for d in inputs.values())
    rows = {context: json.loads(d.profile)["num_rows"] for context, d in inputs.items()}
    assert rows == {"training": 4 * 120, "evaluation": 4 * config.window.test_days}
    # Coverage by days ahead from the single origin before the test split (7 test days).
    horizon_keys = sorted(k for k in run.data.metrics if k.startswith("picp_95_h"))
    assert horizon_keys == [f"picp_95_h{h:02d}" for h in range(1, 8)]
    # The Prefect artifact links to the logged pictures (local artifact store: file URIs).
    from urllib.parse import urlparse

    fan = [u for u in first.plot_uris if u.endswith("plots/fan_chart.png")]
    assert len(fan) == 1 and Path(urlparse(fan[0]).path).is_file()
    assert registry.alias_version(config.registry.model_name, "champion") == "1"

    # The second version meets the promotion gate: champion moves only if it passed, and the
    # verdict is recorded on the version either way.
    # Scored on a fixed sample of 3 of the 4 series (a large catalogue's evaluation), the
    # champion too: both are judged on the same series.
    second = training_pipeline(config.updated(evaluation={"max_series": 3}), progress=False)
    assert second.version == "2" and "challenger" in second.aliases
    assert run.data.metrics["scored_series"] == 4
    second_metrics = mlflow_client.get_run(second.run_id).data.metrics
    assert second_metrics["scored_series"] == second_metrics["champion_scored_series"] == 3
    promoted = second.gate.startswith("promoted")
    assert ("champion" in second.aliases) == promoted
    assert registry.alias_version(config.registry.model_name, "champion") == ("2" if promoted else "1")
    assert registry.alias_version(config.registry.model_name, "challenger") == "2"
    tags = mlflow_client.get_model_version(config.registry.model_name, "2").tags
    assert tags["gate.promote"] == str(promoted) and tags["gate.champion_version"] == "1"

    # The champion loads from the registry (rebuilt from code) and forecasts the contract.
    forecaster = registry.require_champion(config.registry.model_name).load()
    panel = load_panel(config.data, config.window)
    frame = forecaster.forecast(panel, horizon=5, num_samples=30, seed=3).to_frame("1")
    check_forecast_frame(frame)
    assert len(frame) == 4 * 5
    assert (frame.groupby("series_id")["date"].min() == pd.Timestamp("2023-05-02")).all()

    # The pyfunc interface itself (what `mlflow models serve` would call).
    import mlflow

    pyfunc = mlflow.pyfunc.load_model(f"models:/{config.registry.model_name}@champion")
    history = panel.to_frame()
    served = pyfunc.predict(history, params={"horizon": 2, "num_samples": 10, "model_version": "1"})
    check_forecast_frame(served)
    assert len(served) == 4 * 2

    # The daily forecast flow says when the orders cannot resolve the service level asked
    # for: 20 sample paths resolve 95% at most (their largest path sum), not 99%.
    import logging

    from flows.forecasting import daily_forecast_flow

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    collected = Collect()
    logging.getLogger("prefect").addHandler(collected)
    try:
        daily_forecast_flow(config.updated(inventory={"service_level": 0.99}))
    finally:
        logging.getLogger("prefect").removeHandler(collected)
    assert any(message.startswith("inventory.service_level 0.99 is above what this model's orders resolve "
                                  "(about 0.95, set by 20 sample paths)") for message in collected.messages), (
        collected.messages)


def test_save_load_round_trip_reproduces_distribution(small_config, synthetic_csv, tmp_path):
    from pipeline_lib import stages
    from pipeline_lib.model.forecast import ForecastModel

    config = small_config.updated(data={"path": synthetic_csv}, train={"epochs": 1})
    panel = load_panel(config.data, config.window)
    trained = stages.train(config, panel, progress=False)
    restored = ForecastModel.load(trained.model.save(tmp_path / "model"))
    days = part_days(panel, config.window, "test")
    before = trained.model.one_step(panel, days, num_samples=25, seed=11).samples
    after = restored.one_step(panel, days, num_samples=25, seed=11).samples
    np.testing.assert_allclose(before, after, rtol=1e-5, atol=1e-6)


def test_the_ingest_task_retries_a_source_that_blinks_but_not_bad_data(prefect_harness, small_config, monkeypatch):
    """A database error is retried (it may pass); a data-contract error is not (it will not)."""
    from prefect import flow

    from flows import common
    from pipeline_lib.errors import DataValidationError

    calls = []

    def failing(error):
        def load(config, for_training=False):
            calls.append(error)
            raise error
        return load

    ingest = common.ingest.with_options(retry_delay_seconds=0)

    @flow
    def read(config):
        return ingest(config)

    for error, attempts in ((DataValidationError("d.csv: negative demand at row 3"), 1),
                            (ConnectionError("database went away"), 3)):
        calls.clear()
        monkeypatch.setattr(common.stages, "load", failing(error))
        with pytest.raises(type(error)):
            read(small_config)
        assert len(calls) == attempts, (error, calls)
