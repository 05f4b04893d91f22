"""Replay a dataset day by day as if it arrived live, optionally with a planted demand shift.

:func:`run_replay` is the loop; ``flows/replay.py`` hands it the daily flows. The parts:
planting the shift, writing what was "known" on each day as the data source, the timeline.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_lib.config import DataConfig, PipelineConfig, parse_config
from pipeline_lib.errors import ConfigError, DataValidationError
from pipeline_lib.evaluation.plots import coverage_timeline_plot
from pipeline_lib.monitoring.coverage import OVERALL
from pipeline_lib.monitoring.policy import ONLINE_UPDATE
from pipeline_lib.store import ForecastStore

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


def replay_spec(first_day: dt.date, last_day: dt.date, source: str, days: int, start: str | None = None,
                shift_day: str | None = None, shift_factor: float = 1.0) -> ReplaySpec:
    """The spec of ``bayes-pipeline replay``: ``days`` days from ``start`` (YYYY-MM-DD;
    default: the last ``days`` days of the data), the shift from ``shift_day`` (default with
    a ``shift_factor``: the 8th replayed day), checked against the data's first and last day.

    Raises:
        ConfigError: a date that is not YYYY-MM-DD, a non-positive factor or day count.
        DataValidationError: replayed days outside the data.
    """
    shifted = shift_factor != 1.0
    try:
        begin = dt.date.fromisoformat(start) if start else last_day - dt.timedelta(days=days - 1)
        shift = dt.date.fromisoformat(shift_day) if shift_day else None
    except ValueError as exc:
        raise ConfigError(f"replay dates must be YYYY-MM-DD ({exc})") from None
    if shift is None and shifted:
        shift = begin + dt.timedelta(days=7)
    spec = ReplaySpec(begin, days, shift, shift_factor)
    spec.check(first_day, last_day, source)
    return spec


def planted(target: np.ndarray, days_since: np.ndarray, factor: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``target`` multiplied by ``factor(days_since)`` where ``days_since >= 0`` (the change's
    days), unchanged before; integer targets stay integer (rounded). NaN stays NaN. The one
    definition of a planted demand change: the replay's shift and the simulation's scenarios."""
    original = np.asarray(target, dtype=float)
    days_since = np.asarray(days_since)
    after = days_since >= 0
    values = original.copy()
    values[after] = values[after] * factor(days_since[after])
    observed = original[~np.isnan(original)]
    return np.round(values) if np.allclose(observed, np.round(observed)) else values


def plant_shift(raw: pd.DataFrame, data: DataConfig, shift_day: dt.date | None, factor: float) -> pd.DataFrame:
    """Multiply the target by ``factor`` from ``shift_day`` on (integer targets stay integer)."""
    if shift_day is None or factor == 1.0:
        return raw
    shifted = raw.copy()
    dates = pd.to_datetime(shifted[data.time_col], utc=True, format="mixed")
    days_since = (dates.dt.tz_localize(None).dt.normalize() - pd.Timestamp(shift_day)).dt.days.to_numpy()
    shifted[data.target_col] = planted(shifted[data.target_col].to_numpy(), days_since,
                                       lambda d: np.full(d.shape, factor))
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


@dataclass(frozen=True)
class ReplayResult:
    timeline: pd.DataFrame
    chart: Path
    text: str
    initial_training: object | None  # the TrainingOutcome of the initial champion, if trained


def run_replay(config: PipelineConfig, spec: ReplaySpec, raw: pd.DataFrame,
               train: Callable[[PipelineConfig], object],
               forecast_day: Callable[[PipelineConfig, dt.date], object],
               monitor_day: Callable[[PipelineConfig, dt.date], object],
               progress: Callable[[str], None] = print) -> ReplayResult:
    """Replay ``spec`` over ``raw`` (the source table): day ``t`` the observed file holds the
    actuals up to ``t - 1`` and ``forecast_day`` forecasts ``t ..``; then the actuals of ``t``
    arrive and ``monitor_day`` judges the intervals, alerts and retrains. ``train`` makes the
    initial champion when none was trained before the replayed days. The three callables
    are the daily flows (the replay runs what production runs); each gets ``config``
    pointed at the observed file."""
    from pipeline_lib import registry

    raw = plant_shift(raw, config.data, spec.shift_day, spec.shift_factor)
    observed = config.workdir / "replay" / OBSERVED_FILE
    daily_config = observed_config(config, observed)
    store = ForecastStore(config.store_url).create()
    store.forget_from(spec.start)
    store.dispose()

    initial = None
    registry.configure(config.tracking_uri)
    champion = registry.champion(config.registry.model_name)
    trained_until = champion.last_data_day() if champion else None
    if trained_until is None or trained_until >= spec.start:
        progress(f"training the initial champion on data up to {spec.start - dt.timedelta(days=1)}")
        write_observed(raw, config.data, spec.start - dt.timedelta(days=1), observed)
        initial = train(daily_config)
        progress(f"  version {initial.version} ({', '.join(initial.aliases)}): test PICP95 "
                 f"{initial.metrics['picp_95']:.3f}, CRPS(scaled) {initial.metrics['crps_scaled']:.3f}")

    for k in range(spec.days):
        day = spec.start + dt.timedelta(days=k)
        write_observed(raw, config.data, day - dt.timedelta(days=1), observed)
        forecast = forecast_day(daily_config, day)
        write_observed(raw, config.data, day, observed)
        run = monitor_day(daily_config, day)
        events = [a.kind for a in run.alerts] + (["retrain"] if run.retrain else [])
        progress(f"[{k + 1}/{spec.days}] {run.describe()} (forecast by v{forecast.model_version})"
                 + (f" -> {', '.join(events)}" if events else ""))

    store = ForecastStore(config.store_url)
    try:
        frame = timeline(store)
    finally:
        store.dispose()
    frame = frame[(frame["day"] >= spec.start) & (frame["day"] <= spec.end)].reset_index(drop=True)
    chart = coverage_timeline_plot(
        frame, config.monitoring.pic_threshold, config.evaluation.nominal_level,
        config.reports_dir / f"replay-{spec.start}-{spec.end}.png", spec.shift_day,
        title=f"Replay {spec.start} .. {spec.end}"
        + (f", demand x{spec.shift_factor:g} from {spec.shift_day}" if spec.shift_day else ""))
    return ReplayResult(frame, chart, format_timeline(frame, config.monitoring.pic_threshold, spec.shift_day),
                        initial)
