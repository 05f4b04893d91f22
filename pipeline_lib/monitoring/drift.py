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

import datetime as dt
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_lib.evaluation.metrics import inside_interval

log = logging.getLogger(__name__)

TARGET = "target"
COVERED = "covered"
DATE = "date"
WORKSPACE_PROJECT = "bayes-pipeline"  # the Evidently project the daily snapshots go to
CURRENT_WINDOW_DAYS = 7  # the recent window of a report: the last week


@dataclass(frozen=True)
class DriftSummary:
    target_drift: float  # Evidently's drift score of the target (normed Wasserstein distance)
    target_drifted: bool
    drifted_columns: int
    columns: int
    coverage: float | None  # share of covered actuals in the current window
    report_path: Path | None  # the HTML export (None when monitoring.drift_html is off)
    snapshot: str | None = None  # where the snapshot is in the Evidently workspace, if one was given

    @property
    def link(self) -> str | None:
        """Where a reader finds the report: the HTML export, else the workspace snapshot."""
        return str(self.report_path) if self.report_path is not None else self.snapshot

    def describe(self) -> str:
        coverage = "n/a" if self.coverage is None else f"{self.coverage:.1%}"
        return (f"target drift {self.target_drift:.3f} ({'drift' if self.target_drifted else 'no drift'}), "
                f"{self.drifted_columns}/{self.columns} columns drifted, window coverage {coverage}")


def drift_reference_days(day: dt.date, current_days: int, reference_end: dt.date | None,
                         reference_days: int) -> tuple[dt.date, dt.date]:
    """First and last day of the drift reference: the ``reference_days`` days up to
    ``reference_end`` (the champion's last training day), ending before the current window
    of ``current_days`` days up to ``day``."""
    before_window = day - dt.timedelta(days=current_days)
    end = min(reference_end or before_window, before_window)
    return end - dt.timedelta(days=reference_days - 1), end


def drift_windows(history: pd.DataFrame, intervals: pd.DataFrame, lower: str, upper: str, day: dt.date,
                  current_days: int, reference_end: dt.date | None, reference_days: int,
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``reference`` and ``current`` frames of :func:`drift_report` for ``day``.

    ``history``: the source in long format (``series_id, date, target, <covariates>``);
    ``intervals``: ``series_id, date, <lower>, <upper>`` of the shortest-horizon forecast
    issued for each series and day of the current window
    (:meth:`~pipeline_lib.store.ForecastStore.shortest_horizon_intervals`). The current
    window is the ``current_days`` days up to ``day``, each actual marked ``covered`` by its
    interval (NaN without one); the reference is the ``reference_days`` days up to
    ``reference_end`` (the champion's last training day), never overlapping the window.
    """
    first = day - dt.timedelta(days=current_days - 1)
    start, end = drift_reference_days(day, current_days, reference_end, reference_days)
    dates = history["date"].dt.date
    current = history[(dates >= first) & (dates <= day)].rename(columns={"target": TARGET})
    reference = history[(dates >= start) & (dates <= end)]
    if not intervals.empty:
        bounds = intervals[["series_id", "date", lower, upper]].assign(date=lambda f: pd.to_datetime(f["date"]))
        current = current.merge(bounds, on=["series_id", "date"], how="left")
        covered = inside_interval(current[TARGET], current[lower], current[upper]).astype(float)
        current[COVERED] = np.where(current[lower].isna(), np.nan, covered)
    else:
        current = current.assign(**{COVERED: np.nan})
    return reference, current


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, covariates: tuple[str, ...],
                 threshold: float, out_path: Path | None, title: str = "", decision: str = "",
                 day: dt.date | None = None, workspace: Path | None = None,
                 project: str = WORKSPACE_PROJECT) -> DriftSummary:
    """Write the HTML report to ``out_path`` (None: no HTML export) and, with ``workspace``,
    the snapshot into that Evidently workspace's ``project``, which ``evidently ui`` serves,
    dated ``day``; return its headline numbers.

    ``reference``: ``date``, ``target`` and covariate columns (one row per series and day)
    from the training data; ``current``: the same plus ``covered`` (1.0 inside the nominal
    interval, 0.0 outside, NaN without a forecast) for the recent window. ``decision``: what
    the monitoring decided that day (PIC, breach, streak), the report's first line.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, MeanValue, ValueDrift

    columns = [TARGET, *covariates]
    # The date as the timestamp: Evidently then plots over days, not over row index bins.
    definition = DataDefinition(timestamp=DATE, numerical_columns=[*columns, COVERED])
    metrics = [ValueDrift(column=TARGET, threshold=threshold),
               *(ValueDrift(column=c, threshold=threshold) for c in covariates),
               DriftedColumnsCount(columns=columns),
               MeanValue(column=COVERED)]
    reference = _typed(reference[[DATE, *columns]].assign(**{COVERED: float("nan")}))  # current-only metric
    current = _typed(current[[DATE, *columns, COVERED]])
    metadata = {key: value for key, value in (("decision", decision), ("title", title)) if value}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN reference coverage column
        snapshot = Report(metrics, metadata=metadata or None).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
            timestamp=dt.datetime.combine(day, dt.time()) if day else None,
            name=f"{day}: {decision}" if day and decision else None,
        )
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(out_path))
    where = _add_to_workspace(Path(workspace), project, snapshot) if workspace is not None else None
    values = [metric["value"] for metric in snapshot.dict()["metrics"]]
    target_drift = float(values[0])
    drifted = values[1 + len(covariates)]
    coverage = values[2 + len(covariates)]
    coverage = None if coverage is None or pd.isna(coverage) else float(coverage)
    return DriftSummary(target_drift, target_drift >= threshold, int(drifted["count"]), len(columns),
                        coverage, out_path, where)


def _add_to_workspace(workspace: Path, project: str, snapshot) -> str | None:
    """Add ``snapshot`` to ``project`` of the workspace; returns where it went. Runs of
    several processes take turns (an exclusive lock file): Evidently's file workspace reads
    and writes its project files without one. The workspace is what the UI shows; a failure
    here is logged and does not stop the monitoring (the HTML report and the metrics stand)."""
    import fcntl

    from evidently.ui.workspace import Workspace

    workspace.mkdir(parents=True, exist_ok=True)
    with open(workspace / ".bayes-pipeline.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        try:
            store = Workspace.create(str(workspace))
            found = [p for p in store.search_project(project) if p.name == project]
            target = found[0] if found else store.create_project(project, description="daily demand drift and coverage")
            return str(store.add_run(target.id, snapshot, include_data=False).url)
        except (OSError, ValueError) as exc:
            log.warning("drift snapshot not added to the Evidently workspace %s: %s", workspace, exc)
            return None


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers as floats, the date as a timestamp."""
    numbers = frame.drop(columns=[DATE]).astype(float)
    return numbers.assign(**{DATE: pd.to_datetime(frame[DATE])})
