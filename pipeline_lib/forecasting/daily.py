"""The daily forecast as plain functions (``flows/forecasting.py`` wraps them).

Forecast day ``D``: from each series' history up to ``D - 1``, forecast ``D .. D + H - 1``
with the champion and store the rows (``run_date = D``) in the forecast store.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, replace

import pandas as pd

from pipeline_lib.config import PipelineConfig
from pipeline_lib.contract import as_day, interval_columns
from pipeline_lib.data.validate import Panel
from pipeline_lib.errors import DataValidationError
from pipeline_lib.forecasting.batch import forecast_frame
from pipeline_lib.model.forecast import ForecastModel
from pipeline_lib.store import ForecastStore

log = logging.getLogger(__name__)

ONE_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class ForecastRun:
    run_date: dt.date
    model_version: str
    horizon: int
    series: int
    rows: int
    skipped: tuple[str, ...]  # series without an actual on the day before ``run_date``
    frame: pd.DataFrame  # the stored rows (output contract)

    def summary_rows(self, level: float) -> list[dict]:
        """A few lines per forecast day for the Prefect table artifact."""
        lower, upper = interval_columns(level)
        grouped = self.frame.groupby("date")
        return [{"date": str(day.date()), "series": len(g), "total mean": round(float(g["mean"].sum()), 1),
                 f"mean {level:.0%} width": round(float((g[upper] - g[lower]).mean()), 2)}
                for day, g in grouped]


def forecastable(panel: Panel, run_date) -> tuple[Panel, tuple[str, ...]]:
    """The series with an actual on the day before ``run_date`` (cut to that day), and the
    ids of the stale ones that are skipped."""
    run_date = as_day(run_date)
    origin = run_date - ONE_DAY
    history = panel.until(origin)
    current = tuple(s for s in history.series if s.dates[-1].date() == origin)
    skipped = tuple(s.series_id for s in history.series if s.dates[-1].date() != origin)
    if not current:
        raise DataValidationError(f"{panel.source}: no series has an actual on {origin}, the day before "
                                  f"forecast day {run_date}; is the source up to date?")
    if skipped:
        log.warning("%d series have no actual on %s and are not forecast: %s", len(skipped), origin,
                    ", ".join(skipped[:5]))
    return replace(history, series=current), skipped


def forecast_chunk(config: PipelineConfig, model: ForecastModel, chunk: Panel, k: int) -> pd.DataFrame:
    """Forecast table of one chunk with seed ``serving.seed + k`` and the order columns,
    so the result depends only on the chunking, not on which worker or runner computes it."""
    return forecast_frame(config, model, chunk, config.serving.horizon, seed=config.serving.seed + k,
                          model_version="pending")


def store_forecasts(config: PipelineConfig, store: ForecastStore, run_date, frames: list[pd.DataFrame],
                    model_version: str, skipped: tuple[str, ...] = ()) -> ForecastRun:
    """Write the chunks' rows for ``run_date`` in one transaction (a rerun replaces them)."""
    frame = pd.concat(frames, ignore_index=True).assign(model_version=str(model_version))
    rows = store.replace_forecasts(as_day(run_date), frame)
    return ForecastRun(as_day(run_date), str(model_version), config.serving.horizon,
                       frame["series_id"].nunique(), rows, tuple(skipped), frame)


def daily_forecast(config: PipelineConfig, store: ForecastStore, panel: Panel, run_date, model: ForecastModel,
                   model_version: str) -> ForecastRun:
    """Forecast ``run_date .. run_date + H - 1`` for every series with an actual on the day
    before ``run_date`` and store the rows in one transaction (in-process, chunk by chunk;
    the flow maps the same chunks over Prefect tasks)."""
    current, skipped = forecastable(panel, run_date)
    frames = [forecast_chunk(config, model, chunk, k)
              for k, chunk in enumerate(current.chunks(config.runtime.chunk_series))]
    return store_forecasts(config, store, run_date, frames, model_version, skipped)
