"""Replay a dataset day by day as if it arrived live, optionally with a planted demand shift.

The flow ``flows/replay.py`` drives the loop; this module holds the plain parts: planting
the shift, writing what was "known" on each day as the data source, and the timeline.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_lib.config import DataConfig, PipelineConfig, parse_config
from pipeline_lib.errors import ConfigError, DataValidationError
from pipeline_lib.monitoring.coverage import OVERALL
from pipeline_lib.monitoring.policy import ONLINE_UPDATE
from pipeline_lib.monitoring.store import ForecastStore

OBSERVED_FILE = "observed.parquet"


@dataclass(frozen=True)
class ReplaySpec:
    start: dt.date
    days: int
    shift_day: dt.date | None = None
    shift_factor: float = 1.0

    @property
    def end(self) -> dt.date:
        return self.start + dt.timedelta(days=self.days - 1)

    def check(self, first_day: dt.date, last_day: dt.date, source: str) -> None:
        """The replayed days must lie inside the data, after some history."""
        if self.days < 1:
            raise ConfigError(f"--days must be at least 1, got {self.days}")
        if self.start <= first_day or self.end > last_day:
            raise DataValidationError(f"{source}: replay {self.start}..{self.end} must lie after {first_day} and "
                                      f"end by the last day of the data, {last_day}")
        if self.shift_factor <= 0:
            raise ConfigError(f"--shift-factor must be positive, got {self.shift_factor}")


def default_spec(last_day: dt.date, days: int, shift_after: int | None, shift_factor: float) -> ReplaySpec:
    """The last ``days`` days of the data, shifted from day ``shift_after`` of the replay."""
    start = last_day - dt.timedelta(days=days - 1)
    shift_day = start + dt.timedelta(days=shift_after) if shift_after is not None else None
    return ReplaySpec(start, days, shift_day, shift_factor)


def plant_shift(raw: pd.DataFrame, data: DataConfig, shift_day: dt.date | None, factor: float) -> pd.DataFrame:
    """Multiply the target by ``factor`` from ``shift_day`` on (integer targets stay integer)."""
    if shift_day is None or factor == 1.0:
        return raw
    shifted = raw.copy()
    dates = pd.to_datetime(shifted[data.time_col], utc=True, format="mixed").dt.date
    target = shifted[data.target_col].astype(float)
    after = dates >= shift_day
    values = target.where(~after, target * factor)
    integer = np.allclose(target.dropna(), np.round(target.dropna()))
    shifted[data.target_col] = np.round(values) if integer else values
    return shifted


def write_observed(raw: pd.DataFrame, data: DataConfig, through: dt.date, path: Path) -> Path:
    """The rows dated up to ``through`` as a Parquet file (written atomically)."""
    dates = pd.to_datetime(raw[data.time_col], utc=True, format="mixed").dt.date
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    raw[dates <= through].to_parquet(partial, index=False)
    partial.replace(path)
    return path


def observed_config(config: PipelineConfig, path: Path) -> PipelineConfig:
    """``config`` reading its data from the replay's observed file (same column names)."""
    dump = config.model_dump(mode="json")
    dump["data"].update(path=str(path), sql_url=None, sql_query=None)
    return parse_config(dump)


def timeline(store: ForecastStore) -> pd.DataFrame:
    """One row per monitored day: PIC, breach, alerts and retrains."""
    coverage = store.coverage(OVERALL)
    if coverage.empty:
        return pd.DataFrame(columns=["day", "model", "status", "pic", "mpiw", "breach", "alerts", "retrain"])
    alerts = store.table("alerts")
    retrains = store.table("retrain_events")
    rows = []
    for _, row in coverage.iterrows():
        day = row["day"]
        kinds = sorted(alerts.loc[alerts["day"] == day, "kind"]) if not alerts.empty else []
        event = retrains[retrains["triggered_on"] == day] if not retrains.empty else retrains
        retrain = ""
        if len(event):
            e = event.iloc[0]
            retrain = (f"v{e['new_version']} {'champion' if e['promoted'] else 'challenger'}"
                       if e["new_version"] else e["status"])
            if e["mode"] == ONLINE_UPDATE:
                retrain = f"online update: {retrain}"
        rows.append({"day": day, "model": row["model_version"], "status": row["status"], "pic": row["picp"],
                     "mpiw": row["mpiw"], "breach": bool(row["breach"]), "alerts": ",".join(kinds),
                     "retrain": retrain})
    return pd.DataFrame(rows)


def format_timeline(frame: pd.DataFrame, threshold: float, shift_day: dt.date | None) -> str:
    lines = [f"{'day':<11} {'model':>5} {'PIC':>6} {'width':>7}  events"]
    for _, r in frame.iterrows():
        pic = "pending" if r["pic"] is None or pd.isna(r["pic"]) else f"{r['pic']:.0%}"
        events = []
        if shift_day is not None and r["day"] == shift_day:
            events.append("demand shift starts")
        if r["breach"]:
            events.append(f"BREACH (< {threshold:.0%})")
        if r["alerts"]:
            events.append(f"alert: {r['alerts']}")
        if r["retrain"].startswith("online update: "):
            events.append(f"online update -> {r['retrain'].removeprefix('online update: ')}")
        elif r["retrain"]:
            events.append(f"retrain -> {r['retrain']}")
        width = "" if pd.isna(r["mpiw"]) else f"{r['mpiw']:.1f}"
        lines.append(f"{r['day']!s:<11} {'v' + str(r['model']):>5} {pic:>6} {width:>7}  {'; '.join(events)}")
    return "\n".join(lines)
