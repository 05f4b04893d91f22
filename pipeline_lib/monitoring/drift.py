"""Drift and coverage report with Evidently (the only module that imports Evidently).

Evidently 0.7's API (``Report(metrics).run(current, reference)`` returning a snapshot)
replaced the 0.4 API wholesale; keeping it in one file keeps the next change in one file.

The report compares the recent window (``current``) with the training reference:

- target drift: ``ValueDrift`` of the demand column (normed Wasserstein distance; Evidently's
  default test for numerical columns with more than 1,000 reference rows),
- input drift: drift of each covariate and the share of drifted columns,
- coverage: ``MeanValue`` of the 0/1 ``covered`` column (the PIC of the window).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

TARGET = "target"
COVERED = "covered"


@dataclass(frozen=True)
class DriftSummary:
    target_drift: float  # Evidently's drift score of the target (normed Wasserstein distance)
    target_drifted: bool
    drifted_columns: int
    columns: int
    coverage: float | None  # share of covered actuals in the current window
    report_path: Path

    def describe(self) -> str:
        coverage = "n/a" if self.coverage is None else f"{self.coverage:.1%}"
        return (f"target drift {self.target_drift:.3f} ({'drift' if self.target_drifted else 'no drift'}), "
                f"{self.drifted_columns}/{self.columns} columns drifted, window coverage {coverage}")


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, covariates: tuple[str, ...],
                 threshold: float, out_path: Path, title: str = "") -> DriftSummary:
    """Write the HTML report to ``out_path`` and return its headline numbers.

    ``reference``: ``target`` and covariate columns (one row per series and day) from the
    training data; ``current``: the same plus ``covered`` (1.0 inside the nominal
    interval, 0.0 outside, NaN without a forecast) for the recent window.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, MeanValue, ValueDrift

    columns = [TARGET, *covariates]
    definition = DataDefinition(numerical_columns=[*columns, COVERED])
    metrics = [ValueDrift(column=TARGET, threshold=threshold),
               *(ValueDrift(column=c, threshold=threshold) for c in covariates),
               DriftedColumnsCount(columns=columns),
               MeanValue(column=COVERED)]
    reference = reference[columns].assign(**{COVERED: float("nan")})  # coverage is a current-only metric
    current = current[[*columns, COVERED]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN reference coverage column
        snapshot = Report(metrics, metadata={"title": title} if title else None).run(
            Dataset.from_pandas(current.astype(float), data_definition=definition),
            Dataset.from_pandas(reference.astype(float), data_definition=definition),
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(out_path))
    values = [metric["value"] for metric in snapshot.dict()["metrics"]]
    target_drift = float(values[0])
    drifted = values[1 + len(covariates)]
    coverage = values[2 + len(covariates)]
    coverage = None if coverage is None or pd.isna(coverage) else float(coverage)
    return DriftSummary(target_drift, target_drift >= threshold, int(drifted["count"]), len(columns),
                        coverage, out_path)
