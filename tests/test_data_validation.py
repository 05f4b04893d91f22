"""Every bad input of the data contract is rejected with a located, one-line error,
and nothing is written (no work directory, no MLflow run, no model version)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import synthetic_demand
from typer.testing import CliRunner

from flows.cli import USER_ERROR_EXIT, app
from pipeline_lib.config import DataConfig, WindowConfig
from pipeline_lib.data.validate import minimum_series_days, validate_table
from pipeline_lib.errors import DataValidationError

WINDOW = WindowConfig(context_length=14, validation_days=14, test_days=7, min_train_days=14)


def _break(kind: str) -> pd.DataFrame:
    frame = synthetic_demand(n_series=2, n_days=60)
    if kind == "missing_column":
        return frame.drop(columns=["units"])
    if kind == "bad_date":
        frame.loc[5, "date"] = "2023-02-30x"
        return frame
    if kind == "non_numeric":
        frame["units"] = frame["units"].astype(object)
        frame.loc[7, "units"] = "many"
        return frame
    if kind == "infinite":
        frame["units"] = frame["units"].astype(float)
        frame.loc[9, "units"] = np.inf
        return frame
    if kind == "duplicate":
        return pd.concat([frame, frame.iloc[[3]]], ignore_index=True)
    if kind == "negative":
        frame.loc[11, "units"] = -4
        return frame
    if kind == "missing_target":  # the last row of S0: a plan row only with known covariates declared
        frame["units"] = frame["units"].astype(float)
        frame.loc[59, "units"] = np.nan
        return frame
    if kind == "empty":
        return frame.iloc[0:0]
    if kind == "too_short":
        return frame[frame["date"] < "2023-01-20"]
    if kind == "gap_rejected":
        return frame.drop(index=[10, 11])
    raise AssertionError(kind)


# kind -> words the message must contain (problem and location)
EXPECTED = {
    "missing_column": ["missing column", "'units'"],
    "bad_date": ["unparseable date", "'date'", "row 6", "2023-02-30x"],
    "non_numeric": ["non-numeric", "'units'", "row 8", "many"],
    "infinite": ["infinite", "'units'", "row 10"],
    "duplicate": ["duplicate", "rows 4, 121", "'S0'", "2023-01-05"],
    "negative": ["negative demand", "row 12", "'S0'"],
    "missing_target": ["missing value in target column", "'units'", "row 60"],
    "empty": ["no rows"],
    "too_short": ["too short", "'S0'", f"{minimum_series_days(WINDOW)} days"],
    "gap_rejected": ["missing day", "'S0'", "2023-01-12"],
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_validator_names_problem_and_location(kind):
    data = DataConfig(path=Path("demand.csv"), gap_policy="reject" if kind == "gap_rejected" else "zero")
    with pytest.raises(DataValidationError) as info:
        validate_table(_break(kind), data, minimum_series_days(WINDOW))
    message = str(info.value)
    assert "\n" not in message
    for word in EXPECTED[kind]:
        assert word in message, (word, message)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_cli_rejects_bad_input_without_writing_anything(kind, tmp_path):
    path = tmp_path / "bad.csv"
    _break(kind).to_csv(path, index=False)
    config = tmp_path / "config.yaml"
    config.write_text(
        "window: {context_length: 14, validation_days: 14, test_days: 7, min_train_days: 14}\n"
        + ("data: {gap_policy: reject}\n" if kind == "gap_rejected" else "")
    )
    workdir = tmp_path / "work"
    result = CliRunner().invoke(app, ["train", "--data", str(path), "--config", str(config), "--workdir", str(workdir)])
    assert result.exit_code == USER_ERROR_EXIT, result.output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert EXPECTED[kind][0] in error_lines[0]
    # Nothing written: no MLflow store, no Prefect state, no model.
    assert not workdir.exists()


def test_unreadable_and_missing_files(tmp_path):
    from pipeline_lib.data.ingest import read_file

    with pytest.raises(DataValidationError, match="file not found"):
        read_file(tmp_path / "nope.csv", "series_id")
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(DataValidationError, match="unsupported file type"):
        read_file(odd, "series_id")


def test_gaps_are_filled_by_policy_and_reported():
    frame = synthetic_demand(n_series=1, n_days=60).drop(index=[10, 11])
    panel = validate_table(frame, DataConfig(gap_policy="zero"), 1)
    series = panel.series[0]
    assert len(series) == 60 and panel.filled_days == 2
    assert series.target[10] == 0 and series.target[11] == 0
    # Covariates carry their last value into the gap, never shift the calendar.
    assert series.covariates[10, 0] == series.covariates[9, 0]
    assert series.dates[12] == pd.Timestamp("2023-01-14")
    ffilled = validate_table(frame, DataConfig(gap_policy="ffill"), 1).series[0]
    assert ffilled.target[10] == ffilled.target[9]


def test_ids_stay_strings_and_input_order_does_not_matter(tmp_path):
    frame = synthetic_demand(n_series=2, n_days=40)
    frame["series_id"] = frame["series_id"].map({"S0": "00123", "S1": "123"})
    path = tmp_path / "ids.csv"
    frame.sample(frac=1.0, random_state=1).to_csv(path, index=False)
    from pipeline_lib.data.ingest import read_file

    panel = validate_table(read_file(path, "series_id"), DataConfig(path=path), 1)
    assert panel.series_ids == ["00123", "123"]
    assert (np.diff(panel.series[0].dates.values).astype("timedelta64[D]").astype(int) == 1).all()


def test_parquet_and_sql_sources(tmp_path):
    import sqlalchemy

    frame = synthetic_demand(n_series=2, n_days=40, id_col="sku", time_col="day", target_col="qty")
    parquet = tmp_path / "d.parquet"
    frame.to_parquet(parquet)
    from pipeline_lib.data.ingest import read_table

    data = DataConfig(path=parquet, id_col="sku", time_col="day", target_col="qty")
    assert len(validate_table(read_table(data), data, 1).series) == 2
    url = f"sqlite:///{tmp_path / 'd.db'}"
    engine = sqlalchemy.create_engine(url)
    frame.to_sql("sales", engine, index=False)
    engine.dispose()
    sql = DataConfig(sql_url=url, sql_query="SELECT sku, day, qty, price FROM sales", id_col="sku",
                     time_col="day", target_col="qty")
    panel = validate_table(read_table(sql), sql, 1)
    assert panel.covariate_names == ("price",) and len(panel.series[0]) == 40


def _with_plan(frame: pd.DataFrame, series_id: str, days: int) -> pd.DataFrame:
    """``frame`` with the target of ``series_id``'s last ``days`` rows emptied: its plan rows."""
    frame = frame.copy()
    frame["units"] = frame["units"].astype(float)
    last = frame.index[frame["series_id"] == series_id][-days:]
    frame.loc[last, "units"] = np.nan
    return frame


def test_plan_rows_after_the_last_actual_carry_the_known_covariates():
    """With ``known_covariates``, rows after a series' last actual that leave the target empty
    are its plan: the series ends at its last actual and keeps the planned values."""
    frame = _with_plan(synthetic_demand(n_series=2, n_days=60), "S0", days=5)
    panel = validate_table(frame, DataConfig(known_covariates=("price",)), minimum_series_days(WINDOW))
    s0, s1 = panel.series
    assert panel.known_covariates == ("price",)
    assert len(s0) == 55 and str(s0.dates[-1].date()) == "2023-02-25" and not np.isnan(s0.target).any()
    np.testing.assert_allclose(s0.future_covariates[:, 0], frame["price"].to_numpy()[55:60])
    planned = frame["price"].to_numpy()[55:60]
    np.testing.assert_allclose(s0.plan(7)[:, 0], [*planned, planned[-1], planned[-1]])  # then carried forward
    assert len(s1) == 60 and s1.future_covariates is None
    np.testing.assert_allclose(s1.plan(2)[:, 0], [frame["price"].iloc[119]] * 2)  # no plan: the last day's value


def _plan_problem(kind: str) -> pd.DataFrame:
    frame = _with_plan(synthetic_demand(n_series=2, n_days=60), "S0", days=5)
    if kind == "empty_target_before_an_actual":
        frame.loc[30, "units"] = np.nan
    elif kind == "plan_without_the_known_value":
        frame.loc[57, "price"] = np.nan
    elif kind == "plan_with_a_gap":
        frame = frame.drop(index=[57])
    elif kind == "plan_without_actuals":
        frame.loc[frame["series_id"] == "S1", "units"] = np.nan
    return frame


PLAN_PROBLEMS = {
    "empty_target_before_an_actual": ["missing value in target column", "row 31", "only rows after"],
    "plan_without_the_known_value": ["known covariate 'price' is empty on plan rows", "row 58"],
    "plan_with_a_gap": ["'S0' has no plan row for 2023-02-28"],
    "plan_without_actuals": ["'S1'", "no actuals"],
}


@pytest.mark.parametrize("kind", sorted(PLAN_PROBLEMS))
def test_bad_plan_rows_are_named(kind):
    data = DataConfig(path=Path("demand.csv"), known_covariates=("price",))
    with pytest.raises(DataValidationError) as info:
        validate_table(_plan_problem(kind), data, minimum_series_days(WINDOW))
    for word in PLAN_PROBLEMS[kind]:
        assert word in str(info.value), (word, str(info.value))


def test_known_covariates_must_be_covariates():
    with pytest.raises(DataValidationError, match=r"known_covariates \['promo'\] are not among"):
        validate_table(synthetic_demand(n_series=2, n_days=60), DataConfig(known_covariates=("promo",)))
    with pytest.raises(ValueError, match="not among covariate_cols"):
        DataConfig(covariate_cols=("price",), known_covariates=("promo",))
