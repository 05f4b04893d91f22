"""Ingest and validate: the configured source read and checked against the data contract
(:mod:`pipeline_lib.data.validate`) chunk by chunk, and the panel's fingerprint for MLflow."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.ingest import read_table
from pipeline_lib.data.validate import Panel, minimum_series_days, read_panel, validate_table


def ingest(config: PipelineConfig) -> pd.DataFrame:
    """The whole raw table (what the replay rewrites day by day); the flows use :func:`load`."""
    return read_table(config.data)


def load(config: PipelineConfig, for_training: bool = False) -> Panel:
    """The validated panel, read chunk by chunk. ``for_training``: every series must be long
    enough for a training window (:func:`minimum_series_days`); the daily flows take any."""
    return read_panel(config.data, minimum_series_days(config.window) if for_training else 1)


def validate(config: PipelineConfig, raw: pd.DataFrame) -> Panel:
    return validate_table(raw, config.data, minimum_series_days(config.window))


def data_fingerprint(panel: Panel) -> dict:
    """What the model was trained on, to tell datasets apart in MLflow. ``sha256`` covers
    every value, series by series (id, dates as int64 nanoseconds, target and covariates as
    float64), so it costs one pass and no copy of the data at any catalogue size."""
    digest = hashlib.sha256()
    for s in panel.series:
        digest.update(s.series_id.encode() + b"\0")
        digest.update(np.ascontiguousarray(s.dates.asi8, dtype=np.int64))
        digest.update(np.ascontiguousarray(s.target, dtype=np.float64))
        digest.update(np.ascontiguousarray(s.covariates, dtype=np.float64))
    dated = [s for s in panel.series if len(s)]
    return {
        "source": panel.source,
        "sha256": digest.hexdigest(),
        "rows": sum(len(s) for s in panel.series),
        "series": len(panel.series),
        "first_date": str(min(s.dates[0] for s in dated).date()) if dated else None,
        "last_date": str(max(s.dates[-1] for s in dated).date()) if dated else None,
        "covariates": list(panel.covariate_names),
        "filled_days": panel.filled_days,
    }
