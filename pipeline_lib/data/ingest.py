"""Read long-format daily data from a file (CSV, CSV.gz, Parquet) or a SQL query.

When the flows run as a service, ``BAYES_PIPELINE_DATA_ROOTS`` (directories separated by
``os.pathsep``) limits which files a flow parameter may name: anything outside them (after
resolving ``..`` and symlinks) is refused before it is opened. The bundled data is always
allowed.
"""

from __future__ import annotations

import os
from pathlib import Path

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
