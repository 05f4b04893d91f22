"""The CLI contract: backtest on foreign data, forecast from the registry."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import synthetic_demand
from typer.testing import CliRunner

from flows.cli import app
from pipeline_lib.contract import QUANTILE_COLUMNS, check_forecast_frame

pytestmark = pytest.mark.model

CONFIG = (
    "window: {context_length: 14, validation_days: 14, test_days: 7, min_train_days: 14}\n"
    "model: {lstm_units: [8, 4]}\n"
    "train: {epochs: 1, batch_size: 64}\n"
    "evaluation: {num_samples: 20}\n"
)


@pytest.fixture
def foreign_data(tmp_path):
    """Other column names, calendar gaps, non-integer targets, unequal series lengths."""
    frame = synthetic_demand(n_series=3, n_days=90, id_col="sku", time_col="day", target_col="kg")
    frame["kg"] = frame["kg"] * 0.37
    frame = frame.drop(index=[20, 21, 150]).iloc[5:]
    path = tmp_path / "foreign.csv.gz"
    frame.to_csv(path, index=False)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    return path, config


@pytest.mark.parametrize("horizon", [1, 7])
def test_backtest_writes_contract_for_every_test_day(foreign_data, tmp_path, horizon):
    path, config = foreign_data
    out = tmp_path / "bt.csv"
    result = CliRunner().invoke(app, [
        "backtest", "--data", str(path), "--id-col", "sku", "--time-col", "day", "--target-col", "kg",
        "--test-days", "7", "--horizon", str(horizon), "--out", str(out), "--config", str(config),
        "--workdir", str(tmp_path / "work"),
    ])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out, parse_dates=["date"], dtype={"series_id": str})
    check_forecast_frame(frame)
    assert set(QUANTILE_COLUMNS) <= set(frame.columns)
    quantiles = frame[list(QUANTILE_COLUMNS)].to_numpy()
    assert (np.diff(quantiles, axis=1) >= 0).all()
    # One row per series per test day: the last 7 days of each series.
    assert len(frame) == 3 * 7 and not frame.duplicated(["series_id", "date"]).any()
    assert (frame.groupby("series_id")["date"].max() == pd.Timestamp("2023-04-01")).all()
    assert (frame.groupby("series_id")["date"].min() == pd.Timestamp("2023-03-26")).all()


def test_forecast_without_a_model_is_a_clear_error(tmp_path, synthetic_csv):
    result = CliRunner().invoke(app, ["forecast", "--horizon", "3", "--out", str(tmp_path / "f.csv"),
                                      "--data", str(synthetic_csv), "--workdir", str(tmp_path / "work")])
    assert result.exit_code == 2
    assert "no version of model" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "f.csv").exists()


def test_backtest_with_rolling_origin_folds(foreign_data, tmp_path):
    path, config = foreign_data
    out = tmp_path / "folds.csv"
    result = CliRunner().invoke(app, [
        "backtest", "--data", str(path), "--id-col", "sku", "--time-col", "day", "--target-col", "kg",
        "--test-days", "7", "--folds", "2", "--out", str(out), "--config", str(config),
    ])
    assert result.exit_code == 0, result.output
    assert "fold 1: PICP80" in result.stderr
    frame = pd.read_csv(out, parse_dates=["date"], dtype={"series_id": str})
    check_forecast_frame(frame)
    assert len(frame) == 3 * 7 * 2 and not frame.duplicated(["series_id", "date"]).any()
    latest, earlier = frame[frame["fold"] == 0], frame[frame["fold"] == 1]
    # Fold 1 is the week right before fold 0, forecast by a model that never saw fold 0.
    assert earlier["date"].max() == latest["date"].min() - pd.Timedelta(days=1)
    assert latest["date"].max() == pd.Timestamp("2023-04-01")


def test_backtest_summary_averages_the_folds(tmp_path):
    from pipeline_lib import stages
    from pipeline_lib.config import PipelineConfig
    from pipeline_lib.data.validate import load_panel

    path = tmp_path / "d.csv"
    synthetic_demand(n_series=3, n_days=100).to_csv(path, index=False)
    config = PipelineConfig(
        data={"path": path},
        window={"context_length": 14, "validation_days": 14, "test_days": 7, "min_train_days": 14},
        model={"lstm_units": (8, 4)}, train={"epochs": 1, "batch_size": 64},
        evaluation={"num_samples": 20, "backtest_folds": 2},
    )
    summary = stages.backtest_summary(config, load_panel(config.data, config.window))
    folds = [summary["backtest_fold0_crps_scaled"], summary["backtest_fold1_crps_scaled"]]
    assert np.isclose(summary["backtest_crps_scaled"], np.mean(folds))
    assert 0 <= summary["backtest_picp_95"] <= 1 and folds[0] != folds[1]


def test_compare_backtests_the_variants_on_foreign_data(foreign_data, tmp_path):
    """The comparison on data with other column names and non-integer targets: one row per
    variant with every column, and the table files; the count heads are skipped (not counts).
    (Every config variant also runs the real pipeline in tests/test_heads.py.)"""
    from pipeline_lib.compare import COLUMNS

    path, config = foreign_data
    workdir = tmp_path / "cmp"
    result = CliRunner().invoke(app, [
        "compare", "--variants", "bayes_normal,head_count,head_count_mixture,distilled,mcmc_output_layer",
        "--data", str(path),
        "--id-col", "sku", "--time-col", "day", "--target-col", "kg", "--config", str(config),
        "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    assert "skipping head_count, head_count_mixture" in result.output
    table = pd.read_csv(workdir / "compare" / "comparison.csv")
    assert list(table["variant"]) == ["bayes_normal", "distilled", "mcmc_output_layer"]
    assert list(table.columns) == list(COLUMNS)
    numeric = table[list(COLUMNS[1:11])]
    assert numeric.notna().all().all() and (numeric[["picp_80", "picp_90", "picp_95"]] <= 1).all().all()
    assert (table["picp_80"] <= table["picp_95"] + 1e-9).all()
    markdown = (workdir / "compare" / "comparison.md").read_text()
    assert "machine:" in markdown and "| mcmc_output_layer |" in markdown


def test_compare_rejects_an_unknown_variant_before_training(foreign_data, tmp_path):
    path, config = foreign_data
    result = CliRunner().invoke(app, ["compare", "--variants", "bayes_normal,lasso", "--data", str(path),
                                      "--id-col", "sku", "--time-col", "day", "--target-col", "kg",
                                      "--config", str(config), "--workdir", str(tmp_path / "cmp")])
    assert result.exit_code == 2 and "unknown variant(s) lasso" in result.output
    assert not (tmp_path / "cmp").exists()


def test_backtest_of_too_short_series_says_how_long_they_must_be(tmp_path):
    """Each fold's served model is trained before its window by a run that holds out its own
    test days: 14 + 14 + 7 + 7 days for one fold of 7, a clear error below that."""
    from pipeline_lib import stages
    from pipeline_lib.config import PipelineConfig
    from pipeline_lib.data.validate import validate_table
    from pipeline_lib.errors import DataValidationError

    config = PipelineConfig(window={"context_length": 14, "validation_days": 14, "test_days": 7,
                                    "min_train_days": 14})
    panel = validate_table(synthetic_demand(n_series=2, n_days=41), config.data, 1)
    with pytest.raises(DataValidationError, match="need series of at least 42 days; the shortest has 41"):
        stages.rolling_origin_backtest(config, panel, folds=1, horizon=1, progress=False)


NATIVE_PROBE = ("import sys, tensorflow as tf\n"
                "tf.constant(1.0) + 1.0\n"
                "print('a pipeline line', file=sys.stderr)\n")


@pytest.mark.parametrize("filtered", [True, False])
def test_native_tensorflow_log_lines_are_filtered_unless_verbose(filtered):
    """What the CLI installs before any command: TensorFlow's C++ start-up lines (written to
    fd 2, past Python) disappear, the pipeline's own stderr lines stay."""
    import subprocess

    from flows.cli import NATIVE_LOG_LINE

    setup = "from flows.cli import _filter_native_stderr; _filter_native_stderr()\n" if filtered else ""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", setup + NATIVE_PROBE], capture_output=True, text=True, env=env,
                            check=True)
    native = [line for line in result.stderr.splitlines() if NATIVE_LOG_LINE.match(line)]
    assert "a pipeline line" in result.stderr
    assert (native == []) if filtered else native, result.stderr  # the control shows there is noise to hide


def test_a_prefect_server_that_does_not_start_is_one_error_line(tmp_path, synthetic_csv):
    import subprocess

    env = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1", "PREFECT_API_URL": ""}
    result = subprocess.run([str(Path(sys.executable).parent / "bayes-pipeline"), "train", "--data",
                             str(synthetic_csv), "--epochs", "1", "--workdir", str(tmp_path / "w")],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did not start within 1 s" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_simulate_compares_policies_on_the_same_days(tmp_path):
    """The closed loop with the real model: a tiny LSTM, a planted shift, three policies on
    the same days, the report, the chart and a clear error for an unknown policy."""
    path = tmp_path / "demand.csv"
    synthetic_demand(n_series=4, n_days=120).to_csv(path, index=False)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG + "serving: {num_samples: 20}\n")
    out = tmp_path / "sim"
    result = CliRunner().invoke(app, [
        "simulate", "--data", str(path), "--config", str(config), "--workdir", str(tmp_path / "work"),
        "--days", "14", "--change-after", "3", "--scenarios", "shift", "--policies", "never,rule,weekly",
        "--retrain-epochs", "1", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    import json

    rows = {r["policy"]: r for r in json.loads((out / "simulation.json").read_text())[0]["rows"]}
    assert set(rows) == {"never", "rule", "weekly"}
    assert rows["never"]["retrains"] == 0 and rows["weekly"]["retrains"] == 2
    # A one-epoch model breaches from the start; the rule needs three breach days per retrain.
    assert rows["rule"]["retrains"] >= 1 and rows["rule"]["breach_days"] >= 3 * rows["rule"]["retrains"]
    assert (out / "simulation-shift.png").stat().st_size > 10_000
    assert "| rule |" in (out / "simulation.md").read_text()
    bad = CliRunner().invoke(app, ["simulate", "--data", str(path), "--config", str(config), "--workdir",
                                   str(tmp_path / "work"), "--days", "14", "--policies", "sometimes"])
    assert bad.exit_code == 2 and "unknown scenario or policy 'sometimes'" in bad.output
    budget = CliRunner().invoke(app, ["simulate", "--data", str(path), "--config", str(config), "--workdir",
                                      str(tmp_path / "work"), "--days", "14", "--retrain-budget", "cold"])
    assert budget.exit_code == 2 and "unknown retrain budget 'cold'; budgets: warm, full" in budget.output
    report = (out / "simulation.md").read_text()
    assert "warm start from the current model" in report and f"{os.cpu_count()} cores, in " in report


def test_a_promotion_plan_in_the_file_reaches_the_forecasts_end_to_end(tmp_path):
    """Train and forecast from the CLI on a file whose rows after the last actual leave the
    target empty and give the planned promotions (``data.known_covariates``): the training
    flow registers a model that knows them, and the forecast of the first planned day reads
    that day's plan (the same file with the plan's promotions cleared forecasts it otherwise)."""
    frame = synthetic_demand(n_series=3, n_days=90)
    rng = np.random.default_rng(1)
    frame["promo"] = (rng.random(len(frame)) < 0.2).astype(float)
    frame.loc[frame["promo"] == 1, "units"] *= 3  # promotions triple demand on their own day
    last = pd.Timestamp(frame["date"].max())
    plan = pd.DataFrame([(sid, (last + pd.Timedelta(days=k)).strftime("%Y-%m-%d"), np.nan, 2.0, 1.0)
                         for sid in frame["series_id"].unique() for k in (1, 2, 3)], columns=frame.columns)
    config = tmp_path / "config.yaml"
    # Orders for 97% service from 20 sample paths ask for more than they resolve: the forecast says so.
    config.write_text(CONFIG + "data: {known_covariates: [promo]}\nserving: {num_samples: 20}\n"
                      "inventory: {service_level: 0.97}\n")
    workdir = str(tmp_path / "work")

    def run(args):
        result = CliRunner().invoke(app, [*args, "--config", str(config), "--workdir", workdir])
        assert result.exit_code == 0, result.output
        return result

    planned = tmp_path / "planned.csv"
    pd.concat([frame, plan]).to_csv(planned, index=False)
    run(["train", "--data", str(planned)])
    forecasts = {}
    for name, promo in (("promotions", 1.0), ("none", 0.0)):
        path = tmp_path / f"{name}.csv"
        pd.concat([frame, plan.assign(promo=promo)]).to_csv(path, index=False)
        result = run(["forecast", "--data", str(path), "--horizon", "3", "--out",
                      str(tmp_path / f"{name}-forecast.csv")])
        assert "warning: inventory.service_level 0.97 is above what this model's orders resolve" in result.output
        forecasts[name] = pd.read_csv(tmp_path / f"{name}-forecast.csv").sort_values(["series_id", "date"])
    with_plan, without = forecasts["promotions"], forecasts["none"]
    assert sorted(with_plan["date"].unique()) == [(last + pd.Timedelta(days=k)).strftime("%Y-%m-%d") for k in (1, 2, 3)]
    # Each planned day's forecast depends on its own day's promotion, from the first day on.
    first = (with_plan["date"] == (last + pd.Timedelta(days=1)).strftime("%Y-%m-%d")).to_numpy()
    assert not np.allclose(with_plan["mean"].to_numpy()[first], without["mean"].to_numpy()[first])


def test_inventory_backtest_runs_from_the_cli_and_warns_about_unresolvable_service(tmp_path):
    """``bayes-pipeline inventory-backtest``: trains before the last test days, simulates the
    three order rules through them, prints and writes the table, and says when the target
    service asks for more than its 20 sample paths resolve (the 99th percentile of 20 path
    sums is their largest, as is the 96th). With ``--days-before-end`` the test days end that
    many days before the data's last day, and ``--windows`` backtests that many windows, each
    the test days before the last, and sums them up; a window that leaves too few days is
    refused before any window trains, run or report exists."""
    data = tmp_path / "demand.csv"
    synthetic_demand(n_series=3, n_days=90).to_csv(data, index=False)  # 2023-01-02 .. 2023-04-01
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    args = ["inventory-backtest", "--data", str(data), "--config", str(config), "--workdir", str(tmp_path / "work")]
    # 90 days, 35 needed: windows ending 7, 14, ..., 56 days before the end; the last leaves 34
    refused = CliRunner().invoke(app, [*args, "--days-before-end", "7", "--windows", "8"])
    assert refused.exit_code != 0 and "56 days before the last day (2023-02-04) leaves series" in refused.output
    assert "fewer than the 35 days each needs" in refused.output, refused.output
    assert not (tmp_path / "work" / "reports").exists() and not (tmp_path / "work" / "mlflow.db").exists()
    inventory = tmp_path / "work" / "reports" / "inventory"
    single = CliRunner().invoke(app, [*args, "--service-level", "0.99"])
    assert single.exit_code == 0, single.output
    assert "[2/3] training on 3 series before the 7 test days up to 2023-04-01" in single.output
    assert ("warning: inventory.service_level 0.99 is above what this model's orders resolve (about 0.95, set by "
            "20 sample paths)") in single.output
    assert "over 1 test windows" not in single.output
    rolling = CliRunner().invoke(app, [*args, "--days-before-end", "7", "--windows", "2"])
    assert rolling.exit_code == 0, rolling.output
    for reports, last_day, output in ((inventory, "2023-04-01", single),
                                      (inventory / "2023-03-25", "2023-03-25", rolling),
                                      (inventory / "2023-03-18", "2023-03-18", rolling)):
        assert f"before the 7 test days up to {last_day}" in output.output
        table = pd.read_csv(reports / "inventory_backtest.csv")
        assert {"(a)", "(b)", "(c)"} <= {p[:3] for p in table["policy"]}
        assert (reports / "inventory_service_vs_stock.png").stat().st_size > 0
    assert "over 2 test windows, stock for exactly 95% (mean +- sd): (a)" in rolling.output
    # One MLflow run per window, each tagged with the window it tested.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'work' / 'mlflow.db').resolve()}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.pipeline = 'inventory-backtest'")
    assert sorted(r.data.tags["test_window_last_day"] for r in runs) == ["2023-03-18", "2023-03-25", "2023-04-01"]
    assert {r.data.tags["test_days"] for r in runs} == {"7"}
