"""Daily prediction-interval coverage (PIC) from stored forecasts and actuals. Pure functions.

For a day ``D``, every series may have several forecasts that targeted it (issued 1, 2, ..
days before). The headline ``overall`` PIC uses each series' most recent forecast (the
smallest horizon); ``hNN`` scopes use all forecasts issued ``NN`` days ahead; segment
scopes split the headline forecasts by their mean (slow / medium / fast movers).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline_lib.contract import interval_columns
from pipeline_lib.evaluation.metrics import prediction_interval_coverage

OVERALL = "overall"
OK, PARTIAL, PENDING = "ok", "partial", "pending"


def segment_names(edges: tuple[float, ...]) -> list[str]:
    """``(10, 50)`` -> ``['slow', 'medium', 'fast']``; other edge counts get ``seg0..``."""
    if len(edges) == 2:
        return ["slow", "medium", "fast"]
    return [f"seg{k}" for k in range(len(edges) + 1)]


def segment_of(mean: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Segment name of each forecast mean (units/day); edges are left-closed."""
    names = np.array(segment_names(edges), dtype=object)
    return names[np.searchsorted(np.asarray(edges, dtype=float), np.asarray(mean, dtype=float), side="right")]


def daily_coverage(forecasts: pd.DataFrame, actuals: pd.DataFrame, level: float, threshold: float,
                   segment_edges: tuple[float, ...]) -> list[dict]:
    """Coverage rows of one day.

    ``forecasts``: store rows targeting the day (``series_id, horizon, model_version`` and
    the quantile columns); ``actuals``: ``series_id, actual``. Returns one dict per scope
    with ``scope, level, model_version, status, picp, mpiw, n, expected, breach``. A day
    without any actual is ``pending`` (PIC unknown, not 0); with some missing ``partial``
    (PIC of those present, ``breach`` left open until the rest arrive). Only the
    ``overall`` scope decides breaches; other scopes report ``breach`` for reading.
    """
    if forecasts.empty:
        return []
    lower, upper = interval_columns(level)
    joined = forecasts.merge(actuals[["series_id", "actual"]], on="series_id", how="left")
    latest = joined.sort_values(["series_id", "horizon"]).drop_duplicates("series_id", keep="first")
    rows = [_scope_row(OVERALL, latest, lower, upper, level, threshold)]
    for horizon, group in joined.groupby("horizon", sort=True):
        rows.append(_scope_row(f"h{int(horizon):02d}", group, lower, upper, level, threshold))
    segments = segment_of(latest["mean"].to_numpy(), segment_edges)
    for name in segment_names(segment_edges):
        group = latest[segments == name]
        if len(group):
            rows.append(_scope_row(f"segment:{name}", group, lower, upper, level, threshold))
    return rows


def _scope_row(scope: str, group: pd.DataFrame, lower: str, upper: str, level: float, threshold: float) -> dict:
    observed = group[group["actual"].notna()]
    n, expected = len(observed), len(group)
    status = PENDING if n == 0 else (PARTIAL if n < expected else OK)
    versions = ",".join(sorted(set(group["model_version"].astype(str))))
    picp = mpiw = breach = None
    if n:
        picp = prediction_interval_coverage(observed["actual"], observed[lower], observed[upper])
        mpiw = float((observed[upper] - observed[lower]).mean())
        # A partial day is judged once its actuals are complete (a rerun re-evaluates it):
        # an alert raised on a third of the series could not be taken back.
        breach = bool(picp < threshold) if status == OK else None
    return {"scope": scope, "level": float(level), "model_version": versions, "status": status,
            "picp": picp, "mpiw": mpiw, "n": n, "expected": expected, "breach": breach}
