"""A large catalogue is read and validated chunk by chunk (``data.read_chunk_rows`` rows,
whole series each): every kind of source gives the same panel as validating the whole
table at once, no chunk holds more than the limit plus one series, errors name the row
in the whole source, and a source not grouped by series is read whole with a note."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support import synthetic_demand

from pipeline_lib.config import DataConfig
from pipeline_lib.data import validate as validation
from pipeline_lib.data.validate import read_panel, validate_table
from pipeline_lib.errors import DataValidationError

N_DAYS = 40
CHUNK_ROWS = 50  # less than two series: every series spans blocks, every chunk holds one or two


def _catalogue() -> pd.DataFrame:
    """Seven series in series order, one id that only a string keeps (``00123``)."""
    frame = synthetic_demand(n_series=7, n_days=N_DAYS, seed=3)
    return frame.assign(series_id=frame["series_id"].replace({"S0": "00123"}))


def _same_panel(panel, expected) -> None:
    assert panel.series_ids == expected.series_ids
    assert panel.covariate_names == expected.covariate_names
    for got, want in zip(panel.series, expected.series, strict=True):
        assert got.dates.equals(want.dates)
        np.testing.assert_array_equal(got.target, want.target)
        np.testing.assert_array_equal(got.covariates, want.covariates)


def _record_chunks(monkeypatch) -> list[int]:
    sizes: list[int] = []
    whole = validation.validate_table

    def recording(raw, *args, **kwargs):
        sizes.append(len(raw))
        return whole(raw, *args, **kwargs)

    monkeypatch.setattr(validation, "validate_table", recording)
    return sizes


@pytest.mark.parametrize("kind", ["csv", "parquet_file", "parquet_partitioned", "sql"])
def test_every_source_streams_to_the_panel_of_a_whole_read(kind, tmp_path, monkeypatch):
    frame = _catalogue()
    if kind == "csv":
        frame.to_csv(tmp_path / "d.csv", index=False)
        frame = pd.read_csv(tmp_path / "d.csv", dtype={"series_id": str})  # the values as written
        data = DataConfig(path=tmp_path / "d.csv", read_chunk_rows=CHUNK_ROWS)
    elif kind == "parquet_file":
        frame.to_parquet(tmp_path / "d.parquet")
        data = DataConfig(path=tmp_path / "d.parquet", read_chunk_rows=CHUNK_ROWS)
    elif kind == "parquet_partitioned":  # series_id=00123/..., the id a directory name
        frame.to_parquet(tmp_path / "sales", partition_cols=["series_id"])
        data = DataConfig(path=tmp_path / "sales", read_chunk_rows=CHUNK_ROWS)
    else:  # rows stored day by day: the query is read in series order all the same
        import sqlalchemy

        url = f"sqlite:///{tmp_path / 'd.db'}"
        engine = sqlalchemy.create_engine(url)
        frame.sort_values(["date", "series_id"]).to_sql("sales", engine, index=False)
        engine.dispose()
        data = DataConfig(sql_url=url, sql_query="SELECT * FROM sales;", read_chunk_rows=CHUNK_ROWS)
    expected = validate_table(frame, DataConfig(), 1)
    sizes = _record_chunks(monkeypatch)

    panel = read_panel(data, min_days=N_DAYS)

    _same_panel(panel, expected)
    assert panel.notes == ()  # streamed, not read whole
    assert len(sizes) >= 3 and max(sizes) <= CHUNK_ROWS + N_DAYS, sizes


def test_errors_in_a_later_chunk_name_the_row_of_the_whole_source(tmp_path):
    frame = _catalogue()
    frame.loc[249, "units"] = -4  # row 250 of the file, series S6, in the last chunk
    frame.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataValidationError, match=r"negative demand .* at row 250 \(series 'S6'\)"):
        read_panel(DataConfig(path=tmp_path / "d.csv", read_chunk_rows=CHUNK_ROWS))


def test_covariates_chosen_in_the_first_chunk_are_required_in_every_later_one(tmp_path):
    frame = _catalogue()
    frame["price"] = frame["price"].astype(object)
    frame.loc[frame["series_id"] == "S5", "price"] = "ask"  # a later series' covariate turns to text
    frame.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataValidationError, match=r"non-numeric value in covariate column 'price' at rows 201, 202"):
        read_panel(DataConfig(path=tmp_path / "d.csv", read_chunk_rows=CHUNK_ROWS))


def test_a_source_not_grouped_by_series_is_read_whole_and_says_so(tmp_path, monkeypatch):
    shuffled = _catalogue().sample(frac=1.0, random_state=0)
    shuffled.to_csv(tmp_path / "d.csv", index=False)
    expected = validate_table(pd.read_csv(tmp_path / "d.csv", dtype={"series_id": str}), DataConfig(), 1)
    sizes = _record_chunks(monkeypatch)

    panel = read_panel(DataConfig(path=tmp_path / "d.csv", read_chunk_rows=CHUNK_ROWS))

    _same_panel(panel, expected)
    assert sizes[-1] == len(shuffled)
    assert len(panel.notes) == 1 and "not grouped by series" in panel.notes[0] and "sort by series_id" in panel.notes[0]


def test_a_parquet_directory_not_grouped_by_series_is_read_whole_too(tmp_path):
    """Two files each holding half of every series' days (as a job partitioned by date would
    write them)."""
    frame = _catalogue()
    (tmp_path / "sales").mkdir()
    early = frame["date"] < "2023-01-22"
    frame[early].to_parquet(tmp_path / "sales" / "part-0.parquet")
    frame[~early].to_parquet(tmp_path / "sales" / "part-1.parquet")

    panel = read_panel(DataConfig(path=tmp_path / "sales", read_chunk_rows=CHUNK_ROWS))

    _same_panel(panel, validate_table(frame, DataConfig(), 1))
    assert "not grouped by series" in panel.notes[0]


def test_an_empty_source_is_refused(tmp_path):
    _catalogue().iloc[0:0].to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataValidationError, match="no rows"):
        read_panel(DataConfig(path=tmp_path / "d.csv"))
