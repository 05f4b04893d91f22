"""Read long-format daily data from a file (CSV, CSV.gz, Parquet), a directory of Parquet
files (e.g. partitioned by series, ``series_id=A/part-0.parquet``) or a SQL query.

Two ways in: :func:`read_table` returns the whole table (what the replay rewrites day by
day); :func:`read_blocks` streams it in blocks of rows and :func:`whole_series` regroups
those into chunks that each hold every row of their series, so the loader
(:func:`pipeline_lib.data.validate.read_panel`) can validate a catalogue chunk by chunk
without the whole table in memory. A SQL source is read in series order (the query is
wrapped in ``ORDER BY`` the id column, on the server side of a streaming cursor); a file is
read in its own order, and when that is not grouped by series the loader says so and reads
it whole.

When the flows run as a service, ``BAYES_PIPELINE_DATA_ROOTS`` (directories separated by
``os.pathsep``) limits which files a flow parameter may name: anything outside them (after
resolving ``..`` and symlinks) is refused before it is opened. The bundled data is always
allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_lib.config import DataConfig
from pipeline_lib.errors import DataValidationError

_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def read_table(data: DataConfig) -> pd.DataFrame:
    """Return the raw table, ids read as strings so codes like ``'00123'`` survive."""
    if data.uses_sql:
        return _read_sql(data)
    return read_file(data.resolved_path(), id_col=data.id_col)


class NotGroupedBySeries(Exception):
    """A streamed source has a series' rows in more than one place (``rows``: the first row
    of each, 1-based), so it cannot be validated chunk by chunk."""

    def __init__(self, series_id: str, rows: tuple[int, int]):
        super().__init__(f"series {series_id!r} at rows {rows[0]} and {rows[1]}")
        self.series_id, self.rows = series_id, rows


def read_blocks(data: DataConfig, rows: int) -> Iterator[pd.DataFrame]:
    """The source's rows in blocks of at most ``rows`` rows, in source order; each block's
    index is its rows' 0-based position in the whole source. Ids come as strings.

    Raises:
        DataValidationError: the source cannot be found, opened or parsed (at any block).
    """
    if data.uses_sql:
        blocks = _sql_blocks(data, rows)
    else:
        path = data.resolved_path()
        check_allowed(path)
        if path.is_dir() or path.name.lower().endswith(_PARQUET_SUFFIXES):
            blocks = _parquet_blocks(path, data, rows)
        elif path.is_file():
            blocks = _csv_blocks(path, data, rows)
        else:
            read_file(path, data.id_col)  # raises the located error (not found, wrong type)
            return
    offset = 0
    try:
        for block in blocks:
            block.index = pd.RangeIndex(offset, offset + len(block))
            offset += len(block)
            if data.id_col in block.columns:
                block[data.id_col] = block[data.id_col].astype("string")
            yield block
    except DataValidationError:
        raise
    except Exception as exc:  # pandas, pyarrow and database drivers raise many classes
        message = str(exc).splitlines()[0] if str(exc) else ""
        what = "query failed" if data.uses_sql else "cannot be read"
        raise DataValidationError(f"{data.source_name()}: {what} after row {offset} "
                                  f"({exc.__class__.__name__}: {message})") from None


def whole_series(blocks: Iterable[pd.DataFrame], id_col: str, rows: int) -> Iterator[pd.DataFrame]:
    """Regroup a stream of blocks (as :func:`read_blocks` yields) into chunks of about
    ``rows`` rows, each holding every row of its series and the rows of the stream between
    its first and last (so row numbers stay contiguous). A block without ``id_col`` passes
    through as it is, for the validator to name the missing column.

    Raises:
        NotGroupedBySeries: a series' rows come in two places of the stream.
    """
    finished: dict[str, int] = {}  # series id -> its first row, once another series followed it
    ready: list[pd.DataFrame] = []  # blocks of finished series, in stream order
    ready_rows = 0
    open_rows: list[pd.DataFrame] = []  # the rows of the series still being read
    open_id: str | None = None
    open_first = 0
    for block in blocks:
        if id_col not in block.columns:
            yield block
            return
        if not len(block):
            continue
        ids = block[id_col].fillna("\0missing").to_numpy(dtype=object)
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        for begin, end in zip(starts, [*starts[1:], len(ids)], strict=True):
            series_id = ids[begin]
            if series_id == open_id:
                open_rows.append(block.iloc[begin:end])
                continue
            if series_id in finished:
                raise NotGroupedBySeries(str(series_id), (finished[series_id] + 1, int(block.index[begin]) + 1))
            if open_id is not None:
                finished[open_id] = open_first
                ready.extend(open_rows)
                ready_rows += sum(len(r) for r in open_rows)
            if ready_rows >= rows:
                yield pd.concat(ready)
                ready, ready_rows = [], 0
            open_id, open_first, open_rows = series_id, int(block.index[begin]), [block.iloc[begin:end]]
    ready.extend(open_rows)
    if ready:
        yield pd.concat(ready)


def _csv_blocks(path: Path, data: DataConfig, rows: int) -> Iterator[pd.DataFrame]:
    try:
        yield from pd.read_csv(path, dtype={data.id_col: str}, chunksize=rows, low_memory=False)
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{path}: file is empty") from None


def _parquet_blocks(path: Path, data: DataConfig, rows: int) -> Iterator[pd.DataFrame]:
    """Only the columns the contract reads (id, date, target, covariates): a wide table's
    other columns are never loaded. Partition keys of a directory (``series_id=A/``) come as
    strings, never re-typed (``00123`` stays ``00123``)."""
    import pyarrow.dataset as ds
    import pyarrow.types as pat

    partitioning = ds.HivePartitioning.discover(infer_dictionary=True) if path.is_dir() else None
    dataset = ds.dataset(path, format="parquet", partitioning=partitioning)
    reserved = (data.id_col, data.time_col, data.target_col)
    if data.covariate_cols is None:
        covariates = [f.name for f in dataset.schema if f.name not in reserved
                      and (pat.is_integer(f.type) or pat.is_floating(f.type) or pat.is_decimal(f.type))]
    else:
        covariates = list(data.covariate_cols)
    present = set(dataset.schema.names)
    columns = [c for c in (*reserved, *covariates) if c in present]
    for batch in dataset.to_batches(columns=columns, batch_size=rows):
        frame = batch.to_pandas()
        for name in frame.columns:
            if isinstance(frame[name].dtype, pd.CategoricalDtype):  # partition keys arrive as dictionaries
                frame[name] = frame[name].astype(object)
        yield frame


def _sql_blocks(data: DataConfig, rows: int) -> Iterator[pd.DataFrame]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(data.resolved_sql_url())
    try:
        quote = engine.dialect.identifier_preparer.quote
        query = (f"SELECT * FROM ({data.sql_query.strip().rstrip(';')}) AS source "
                 f"ORDER BY {quote(data.id_col)}, {quote(data.time_col)}")
        with engine.connect().execution_options(stream_results=True) as connection:
            yield from pd.read_sql_query(sqlalchemy.text(query), connection, chunksize=rows)
    finally:
        engine.dispose()


DATA_ROOTS_ENV = "BAYES_PIPELINE_DATA_ROOTS"


def check_allowed(path: Path) -> None:
    """Refuse a file outside ``$BAYES_PIPELINE_DATA_ROOTS`` (when that is set)."""
    roots = [r for r in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if r.strip()]
    if not roots:
        return
    from pipeline_lib.config import bundled_dataset_path

    resolved = Path(path).resolve()
    allowed = [Path(r).resolve() for r in roots] + [bundled_dataset_path().resolve().parent]
    if not any(resolved.is_relative_to(root) for root in allowed):
        raise DataValidationError(f"{path}: outside the allowed data directories ({DATA_ROOTS_ENV})")


def read_file(path: Path, id_col: str) -> pd.DataFrame:
    path = Path(path)
    check_allowed(path)
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found")
    name = path.name.lower()
    try:
        if name.endswith(_PARQUET_SUFFIXES):
            frame = pd.read_parquet(path)
        elif name.endswith(_CSV_SUFFIXES):
            frame = pd.read_csv(path, dtype={id_col: str}, low_memory=False)
        else:
            raise DataValidationError(
                f"{path}: unsupported file type (expected one of "
                f"{', '.join(_CSV_SUFFIXES + _PARQUET_SUFFIXES)})"
            )
    except DataValidationError:
        raise
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{path}: file is empty") from None
    except Exception as exc:  # parser errors of pandas/pyarrow come in many classes
        raise DataValidationError(f"{path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
    if id_col in frame.columns:
        frame[id_col] = frame[id_col].astype("string")
    return frame


def _read_sql(data: DataConfig) -> pd.DataFrame:
    import sqlalchemy

    url = data.resolved_sql_url()
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:
            frame = pd.read_sql_query(sqlalchemy.text(data.sql_query), connection)
    except Exception as exc:
        raise DataValidationError(
            f"{data.source_name()}: query failed ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
        ) from None
    finally:
        if "engine" in locals():
            engine.dispose()
    if data.id_col in frame.columns:
        frame[data.id_col] = frame[data.id_col].astype("string")
    return frame
