"""Chaos/soak run: replay 90 days with injected faults and compare with a fault-free replay.

    python benchmarks/soak.py [--days 90] [--seed 0] [--json]

Both replays run the daily steps the flows call (``daily_forecast`` then ``monitor_day``)
with the same trained model on the same synthetic data (20 series, a planted 1.8x demand
shift on day 45 so there are breaches and alerts). The faulty replay injects, at random
(seeded):

- **store down**: the store raises ``OperationalError`` (database locked / unreachable)
  on 1-3 consecutive calls; its retries must absorb it;
- **killed forecast run**: the forecast step dies before its transaction commits; the
  scheduler's retry (Prefect task retries / the next trigger) reruns the same day;
- **killed monitoring run**: the monitoring step dies part-way (after some coverage
  rows); nobody reruns it: the next day's run must finish the day via its look-back;
- **late actuals**: a third of the series' actuals of day t reach the monitoring of day t
  late (they arrive after it, before the next forecast).

Retraining is off in both replays (a retrained model would differ by training noise, not
by faults). At the end every table of the two stores must be equal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


class Killed(RuntimeError):
    """Stands for SIGKILL: nothing after the point of death runs."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from conftest import level_following_demand
    from sqlalchemy.exc import OperationalError

    from pipeline_lib import pipeline
    from pipeline_lib.config import PipelineConfig
    from pipeline_lib.data.validate import validate_table
    from pipeline_lib.monitoring import daily
    from pipeline_lib.monitoring.store import TABLES, ForecastStore

    history_days = 120
    raw = level_following_demand(n_series=20, n_days=history_days + args.days, seed=args.seed)
    shift_day = pd.Timestamp("2023-01-02") + pd.Timedelta(days=history_days + args.days // 2)
    raw.loc[pd.to_datetime(raw["date"]) >= shift_day, "units"] = (
        raw.loc[pd.to_datetime(raw["date"]) >= shift_day, "units"] * 1.8).round()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = PipelineConfig(
            workdir=tmp, window={"context_length": 14, "validation_days": 14, "test_days": 7, "min_train_days": 14},
            model={"lstm_units": (16, 8)}, train={"epochs": 5, "batch_size": 64, "patience": 2, "kl_ramp_epochs": 2},
            evaluation={"num_samples": 50}, monitoring={"retrain": "off"})
        full = validate_table(raw, config.data, min_days=1)
        first_day = full.series[0].dates[history_days].date()
        model = pipeline.train(config, daily.history_until(full, first_day - dt.timedelta(days=1)),
                               progress=False).model
        rng = np.random.default_rng(args.seed)
        faults = {"store down": 0, "killed forecast run": 0, "killed monitoring run": 0, "late actuals": 0}

        def replay(root: Path, inject: bool) -> tuple[ForecastStore, float]:
            store = ForecastStore(f"sqlite:///{root / 'store.db'}", attempts=5, backoff_seconds=0.05).create()
            start = time.perf_counter()
            for k in range(args.days):
                today = first_day + dt.timedelta(days=k)
                known = daily.history_until(full, today - dt.timedelta(days=1))
                outage = int(rng.integers(1, 4)) if inject and rng.random() < 0.15 else 0
                if outage:
                    faults["store down"] += 1
                    _fail_next_calls(store, outage, OperationalError)
                if inject and rng.random() < 0.1:
                    faults["killed forecast run"] += 1
                    _kill_once(store, "replace_forecasts")
                    try:
                        daily.daily_forecast(config, store, known, today, model, "1")
                    except Killed:
                        pass
                daily.daily_forecast(config, store, known, today, model, "1")  # (the retry, if killed)
                observed = daily.history_until(full, today)
                if inject and rng.random() < 0.15:
                    faults["late actuals"] += 1
                    late = set(rng.choice(full.series_ids, size=len(full.series_ids) // 3, replace=False))
                    observed = _without_day(observed, today, late)
                if inject and rng.random() < 0.1:
                    faults["killed monitoring run"] += 1
                    _kill_once(store, "alert_days")  # after coverage rows, before alerts/claims
                    try:
                        daily.monitor_day(config, store, observed, today, "1", root / "reports")
                    except Killed:
                        continue  # nobody reruns it; tomorrow's run must finish the day
                daily.monitor_day(config, store, observed, today, "1", root / "reports")
            # The day after the last: the next scheduled run looks back over the window
            # (equivalent here to rerunning the last day; there are no actuals beyond it).
            daily.monitor_day(config, store, daily.history_until(full, today), today, "1", root / "reports")
            return store, time.perf_counter() - start

        (tmp / "clean").mkdir()
        (tmp / "faulty").mkdir()
        clean, clean_seconds = replay(tmp / "clean", inject=False)
        faulty, faulty_seconds = replay(tmp / "faulty", inject=True)
        differences = {}
        for name in TABLES:
            a, b = clean.table(name), faulty.table(name)
            if name == "alerts":  # the report paths name each replay's own directory
                a["message"] = a["message"].str.replace(str(tmp / "clean"), "<root>")
                b["message"] = b["message"].str.replace(str(tmp / "faulty"), "<root>")
                a["report"] = a["report"].str.replace(str(tmp / "clean"), "<root>")
                b["report"] = b["report"].str.replace(str(tmp / "faulty"), "<root>")
            merged = a.merge(b, how="outer", indicator=True)
            differences[name] = int((merged["_merge"] != "both").sum())
        rows = {name: len(clean.table(name)) for name in TABLES}
        coverage = clean.table("coverage_daily")
        breaches = int(coverage.loc[coverage["scope"] == "overall", "breach"].sum())

    result = {"date": time.strftime("%Y-%m-%d"), "days": args.days, "seed": args.seed, "faults": faults,
              "faults_total": sum(faults.values()), "rows": rows, "breach_days": breaches,
              "differences": differences, "total_differences": sum(differences.values()),
              "seconds_clean": round(clean_seconds, 1), "seconds_faulty": round(faulty_seconds, 1)}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    sys.exit(0 if result["total_differences"] == 0 else 1)


def _fail_next_calls(store, calls: int, error_class) -> None:
    """The store's engine refuses the next ``calls`` connections (a locked or dead database)."""
    import sqlalchemy as sa

    remaining = {"n": calls}

    def refuse(*args, **kwargs):
        if remaining["n"] > 0:
            remaining["n"] -= 1
            raise error_class("INSERT", {}, Exception("database is locked (injected)"))

    sa.event.listen(store.engine, "before_cursor_execute", refuse)


def _kill_once(store, method: str) -> None:
    """The next call of ``store.<method>`` dies (Killed), later calls work."""
    original = getattr(store, method)

    def die(*args, **kwargs):
        setattr(store, method, original)
        raise Killed(f"killed during {method}")

    setattr(store, method, die)


def _without_day(panel, day: dt.date, series_ids: set[str]):
    """The panel with ``day`` not yet arrived for ``series_ids``."""
    from pipeline_lib.data.validate import Panel, Series

    kept = []
    for s in panel.series:
        if s.series_id in series_ids and s.dates[-1].date() == day:
            s = Series(s.series_id, s.dates[:-1], s.target[:-1], s.covariates[:-1])
        kept.append(s)
    return Panel(tuple(kept), panel.covariate_names, panel.source)


if __name__ == "__main__":
    main()
