"""Ingest and validate: the raw table from the configured source, checked against the
data contract (:mod:`pipeline_lib.data.validate`), and its fingerprint for MLflow."""

from __future__ import annotations

import hashlib

import pandas as pd

from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.ingest import read_table
from pipeline_lib.data.validate import Panel, minimum_series_days, validate_table


def ingest(config: PipelineConfig) -> pd.DataFrame:
    return read_table(config.data)


def validate(config: PipelineConfig, raw: pd.DataFrame) -> Panel:
    return validate_table(raw, config.data, minimum_series_days(config.window))


def data_fingerprint(panel: Panel) -> dict:
    """What the model was trained on, to tell datasets apart in MLflow."""
    frame = panel.to_frame()
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()
    return {
        "source": panel.source,
        "sha256": digest,
        "rows": len(frame),
        "series": len(panel.series),
        "first_date": str(frame["date"].min().date()),
        "last_date": str(frame["date"].max().date()),
        "covariates": list(panel.covariate_names),
        "filled_days": panel.filled_days,
    }

