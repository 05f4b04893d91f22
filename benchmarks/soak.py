"""Chaos/soak run: replay days of demand with injected faults, retraining on, and compare with
a fault-free replay.

    python benchmarks/soak.py [--days 90] [--seed 0] [--no-retrain] [--json]

Both replays run the daily steps the flows call (``daily_forecast`` then ``monitor_day``,
then the claimed retrain through :func:`pipeline_lib.monitoring.retrain.respond_and_record`,
the path the monitoring flow takes) on the same synthetic data (20 series, a planted 1.8x
demand shift half-way, so there are breaches, alerts and retrains). A retrain trains a small
model on every day up to its trigger day, seeded, so the same streak retrains the same model
in both replays. The faulty replay injects, at random (seeded):

- **store down**: the store raises ``OperationalError`` (database locked / unreachable)
  on 1-3 consecutive calls; its retries must absorb it;
- **killed forecast run**: the run dies at a random SQL statement (mid-transaction when it
  lands inside one); the scheduler's retry reruns the same day;
- **killed monitoring run**: the run dies at a random SQL statement (coverage, alerts, the
  retrain claim or its outcome); half of them are rerun the same day (a flow retry), the
  others nobody reruns: the next day's run must finish the day through its look-back;
- **killed retrain**: the process dies while training (its claim stays ``started``); the
  day's rerun finds the claim stale and retrains the same streak. The first retrain of the
  faulty replay always dies so; later ones when a killed run lands in one;
- **late actuals**: a third of the series' actuals of day t reach the monitoring of day t
  late (they arrive after it, before the next forecast).

Without retraining (``--no-retrain``) every table of the two stores must be equal. With it, a
retrain can legitimately come a day later in the faulty replay (a day whose actuals were
late is judged a day later; an unrerun run's streak is claimed by the next day's run), so
the forecasts of the day in between differ; what must hold is checked instead
(:func:`invariants`): the same streaks retrained exactly once each, no claim left
unfinished, every day judged, one alert per breach day and a forecast of every series
every day.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

HISTORY_DAYS = 120
N_SERIES = 20


class Killed(BaseException):
    """Stands for SIGKILL: nothing after the point of death runs, not even ``except Exception``
    handlers (a killed retrain cannot record its own failure)."""


@dataclass(frozen=True)
class Retrained:
    """What the training flow returns, as far as the retrain's record needs it."""

    version: str
    gate: str = "soak: promoted"
    aliases: tuple[str, ...] = ("challenger", "champion")


def soak(days: int, seed: int, retrain: bool = True, workdir: Path | None = None) -> dict:
    """Run the clean and the faulty replay; returns their comparison (see the module docstring)."""
    from support import level_following_demand

    from pipeline_lib.config import PipelineConfig
    from pipeline_lib.data.validate import validate_table

    raw = level_following_demand(n_series=N_SERIES, n_days=HISTORY_DAYS + days, seed=seed)
    shift_day = pd.Timestamp("2023-01-02") + pd.Timedelta(days=HISTORY_DAYS + days // 2)
    shifted = pd.to_datetime(raw["date"]) >= shift_day
    raw.loc[shifted, "units"] = (raw.loc[shifted, "units"] * 1.8).round()
    with contextlib.ExitStack() as stack:
        root = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        config = PipelineConfig(
            workdir=root, window={"context_length": 14, "validation_days": 14, "test_days": 7, "min_train_days": 14},
            model={"lstm_units": (16, 8)}, train={"epochs": 5, "batch_size": 64, "patience": 2, "kl_ramp_epochs": 2},
            serving={"num_samples": 50},
            # A killed retrain's claim is stale at once, so the day's rerun takes it over (in
            # production the timeout must exceed the longest training; here nothing else runs).
            monitoring={"retrain": "subflow" if retrain else "off", "retrain_claim_timeout_hours": 1e-6})
        full = validate_table(raw, config.data, min_days=1)
        replay = Replay(config, full, days)
        clean = replay.run(root / "clean", np.random.default_rng(seed), inject=False)
        faulty = replay.run(root / "faulty", np.random.default_rng(seed), inject=True)
        result = compare(clean, faulty, root)
        result.update({"date": time.strftime("%Y-%m-%d"), "days": days, "seed": seed, "retrain": retrain,
                       "faults": faulty.faults, "faults_total": sum(faulty.faults.values()),
                       "retrains_clean": clean.trainings, "retrain_attempts_faulty": faulty.trainings,
                       "seconds_clean": round(clean.seconds, 1), "seconds_faulty": round(faulty.seconds, 1)})
        clean.store.dispose()
        faulty.store.dispose()
    return result


@dataclass
class ReplayRun:
    store: object
    faults: dict
    trainings: int
    seconds: float


class Replay:
    """The daily loop of the flows over ``days`` days after ``HISTORY_DAYS`` of history."""

    def __init__(self, config, full, days: int):
        from pipeline_lib import stages

        self.config, self.full, self.days = config, full, days
        self.first_day = full.series[0].dates[HISTORY_DAYS].date()
        self.initial = stages.train(config, full.until(self.first_day - dt.timedelta(days=1)), progress=False).model
        self._trained: dict[dt.date, object] = {}  # trigger day -> model (the same in both replays)

    def _train(self, day: dt.date):
        from pipeline_lib import stages

        if day not in self._trained:
            self._trained[day] = stages.train(self.config, self.full.until(day), progress=False).model
        return self._trained[day]

    def run(self, root: Path, rng: np.random.Generator, inject: bool) -> ReplayRun:
        from sqlalchemy.exc import OperationalError

        from pipeline_lib.forecasting.daily import daily_forecast
        from pipeline_lib.monitoring import daily
        from pipeline_lib.monitoring.retrain import respond_and_record
        from pipeline_lib.store import ForecastStore

        root.mkdir(parents=True, exist_ok=True)
        config, full = self.config, self.full
        store = ForecastStore(f"sqlite:///{root / 'store.db'}", attempts=5, backoff_seconds=0.05).create()
        faults = {"store down": 0, "killed forecast run": 0, "killed monitoring run (rerun)": 0,
                  "killed monitoring run (not rerun)": 0, "killed retrain": 0, "late actuals": 0}
        champion = {"model": self.initial, "version": "1"}
        trainings = {"n": 0}
        start = time.perf_counter()

        def monitor(observed, today: dt.date, kill_training: bool = False) -> None:
            run = daily.monitor_day(config, store, observed, today, champion["version"], root / "reports")
            if run.retrain is None:
                return

            def train_here() -> Retrained:
                trainings["n"] += 1
                if inject and (kill_training or trainings["n"] == 1):
                    _stop_killing(store)
                    raise Killed("killed while training")
                champion["model"] = self._train(run.retrain.day)
                champion["version"] = str(int(champion["version"]) + 1)
                return Retrained(champion["version"])

            record = respond_and_record(config, store, run.retrain, observed, None, train_here)
            if record.failure is not None:
                raise record.failure

        for k in range(self.days):
            today = self.first_day + dt.timedelta(days=k)
            known = full.until(today - dt.timedelta(days=1))
            outage = int(rng.integers(1, 4)) if inject and rng.random() < 0.15 else 0
            if outage:
                faults["store down"] += 1
                _fail_next_calls(store, outage, OperationalError)
            if inject and rng.random() < 0.1:
                faults["killed forecast run"] += 1
                _kill_at_statement(store, int(rng.integers(1, 6)))
                with contextlib.suppress(Killed):
                    daily_forecast(config, store, known, today, champion["model"], champion["version"])
                _stop_killing(store)  # (the run may have finished before the chosen statement)
            daily_forecast(config, store, known, today, champion["model"], champion["version"])  # the retry
            observed = full.until(today)
            if inject and rng.random() < 0.15:
                faults["late actuals"] += 1
                late = set(rng.choice(full.series_ids, size=len(full.series_ids) // 3, replace=False))
                observed = _without_day(observed, today, late)
            kill = inject and rng.random() < 0.15
            rerun = rng.random() < 0.5
            if kill:
                _kill_at_statement(store, int(rng.integers(1, 25)))
            try:
                monitor(observed, today, kill_training=kill)
            except Killed as death:
                _stop_killing(store)
                training = "training" in str(death)
                faults["killed retrain" if training else
                       f"killed monitoring run ({'rerun' if rerun else 'not rerun'})"] += 1
                if rerun or training:  # a flow retry reruns the day
                    monitor(observed, today)
                continue
            _stop_killing(store)  # the run finished before the chosen statement
        # The day after the last: the next scheduled run looks back over the window
        # (equivalent here to rerunning the last day; there are no actuals beyond it).
        monitor(full.until(today), today)
        return ReplayRun(store, faults, trainings["n"], time.perf_counter() - start)


def compare(clean: ReplayRun, faulty: ReplayRun, root: Path) -> dict:
    """Rows of each table that differ between the replays, and the invariants of each."""
    from pipeline_lib.store import TABLES

    differences = {}
    for name in TABLES:
        a, b = clean.store.table(name), faulty.store.table(name)
        if name == "alerts":  # the report paths name each replay's own directory
            for frame, folder in ((a, "clean"), (b, "faulty")):
                for column in ("message", "report"):
                    frame[column] = frame[column].str.replace(str(root / folder), "<root>")
        if name == "retrain_events":  # wall-clock claim times and free-text outcomes
            a, b = a.drop(columns=["claimed_at", "detail"]), b.drop(columns=["claimed_at", "detail"])
        merged = a.merge(b, how="outer", indicator=True)
        differences[name] = int((merged["_merge"] != "both").sum())
    coverage = clean.store.table("coverage_daily")
    return {"rows": {name: len(clean.store.table(name)) for name in TABLES},
            "breach_days": int(coverage.loc[coverage["scope"] == "overall", "breach"].sum()),
            "differences": differences, "total_differences": sum(differences.values()),
            "violations_clean": invariants(clean.store), "violations_faulty": invariants(faulty.store),
            "same_streaks_retrained": sorted(clean.store.table("retrain_events")["streak_start"].astype(str))
            == sorted(faulty.store.table("retrain_events")["streak_start"].astype(str))}


def invariants(store) -> list[str]:
    """What a replay's store must satisfy whatever the faults: the violations found."""
    problems = []
    coverage = store.table("coverage_daily")
    overall = coverage[coverage["scope"] == "overall"]
    if not (overall["status"] == "ok").all():
        problems.append(f"days never judged: {sorted(overall.loc[overall['status'] != 'ok', 'day'].astype(str))}")
    alerts = store.table("alerts")
    breach_days = set(overall.loc[overall["breach"] == True, "day"])  # noqa: E712 - a nullable column
    alerted = set(alerts.loc[alerts["kind"] == "breach", "day"])
    if breach_days != alerted:
        problems.append(f"breach days without an alert or alerts without a breach: {breach_days ^ alerted}")
    events = store.table("retrain_events")
    unfinished = events[~events["status"].isin(["completed", "dispatched"])]
    if len(unfinished):
        problems.append(f"retrains not completed: {unfinished[['streak_start', 'status']].to_dict('records')}")
    retrain_alerts = set(alerts.loc[alerts["kind"] == "retrain", "day"])
    if retrain_alerts != set(events["triggered_on"]):
        problems.append("retrain alerts do not match the retrain events")
    forecasts = store.table("forecasts")
    per_day = forecasts.groupby("run_date")["series_id"].nunique()
    if (per_day != N_SERIES).any():
        problems.append(f"days without a forecast of every series: {list(per_day[per_day != N_SERIES].index)}")
    return problems


def _fail_next_calls(store, calls: int, error_class) -> None:
    """The store's engine refuses the next ``calls`` statements (a locked or dead database)."""
    import sqlalchemy as sa

    remaining = {"n": calls}

    def refuse(*args, **kwargs):
        if remaining["n"] > 0:
            remaining["n"] -= 1
            raise error_class("INSERT", {}, Exception("database is locked (injected)"))

    sa.event.listen(store.engine, "before_cursor_execute", refuse)


def _kill_at_statement(store, n: int) -> None:
    """The process dies just before the ``n``-th SQL statement from now (inside a
    transaction when it lands in one: the database rolls it back, as after SIGKILL)."""
    import sqlalchemy as sa

    remaining = {"n": n}

    def die(*args, **kwargs):
        remaining["n"] -= 1
        if remaining["n"] == 0:
            _stop_killing(store)
            raise Killed("killed at a statement")

    store._killer = die
    sa.event.listen(store.engine, "before_cursor_execute", die)


def _stop_killing(store) -> None:
    import sqlalchemy as sa

    killer = getattr(store, "_killer", None)
    if killer is not None and sa.event.contains(store.engine, "before_cursor_execute", killer):
        sa.event.remove(store.engine, "before_cursor_execute", killer)
    store._killer = None


def _without_day(panel, day: dt.date, series_ids: set[str]):
    """The panel with ``day`` not yet arrived for ``series_ids``."""
    return panel.truncate([len(s) - int(s.series_id in series_ids and s.dates[-1].date() == day)
                           for s in panel.series])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-retrain", action="store_true", help="retraining off: every table must be equal")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = soak(args.days, args.seed, retrain=not args.no_retrain)
    print(json.dumps(result, default=str) if args.json else json.dumps(result, indent=2, default=str))
    ok = not result["violations_clean"] and not result["violations_faulty"] and result["same_streaks_retrained"]
    if not result["retrain"]:
        ok = ok and result["total_differences"] == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
