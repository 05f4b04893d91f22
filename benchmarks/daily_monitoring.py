"""Forecast and monitor one day for many series: time and peak memory.

    python benchmarks/daily_monitoring.py [--series 10000] [--samples 100] [--json]

Builds N synthetic series of 120 days, a default-architecture Bayesian LSTM (untrained:
the time of a forward pass does not depend on the weights' values), then runs the two
plain functions the daily flows call, on a SQLite store in a temporary directory:

1. ``daily_forecast``: S sample paths over the 7-day horizon for every series, quantiles,
   and one transaction of N x 7 rows into ``forecasts``;
2. ``monitor_day``: the day's N actuals into ``actuals``, PIC overall / by horizon / by
   segment into ``coverage_daily``, the retrain policy, and the Evidently report, with the
   store in steady state (``--history 6``: the six earlier runs' forecasts of the day are
   stored too, as after a week of daily runs, so the day has 7 x N forecasts; and the day
   before was monitored, untimed, as yesterday's scheduled run would have: without it the
   timed run catches up six days of first-time coverage and breach reports, which a daily
   schedule never does; ``--catch-up`` measures that instead).

Prints seconds per stage and the peak resident memory above the state before stage 1.
``--profile FILE`` also runs both stages under cProfile and writes each one's 30 most
expensive calls (cumulative time) to FILE: where the seconds go, for the 60-second aim.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
from _memory import hwm_mb


def synthetic(n_series: int, n_days: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2024-01-01", periods=n_days, freq="D")
    levels = np.exp(rng.uniform(np.log(2), np.log(200), size=(n_series, 1)))
    weekly = 1 + 0.3 * np.sin(2 * np.pi * np.arange(n_days) / 7)
    units = rng.poisson(levels * weekly[None, :])
    return pd.DataFrame({"series_id": np.repeat([f"S{k:05d}" for k in range(n_series)], n_days),
                         "date": np.tile(dates.strftime("%Y-%m-%d"), n_series),
                         "units": units.ravel()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=512, help="series per sampling chunk")
    parser.add_argument("--history", type=int, default=6,
                        help="earlier daily runs stored before monitoring (6 = steady state: 7 runs forecast each day)")
    parser.add_argument("--catch-up", action="store_true",
                        help="with --history: do not monitor the day before first (six days of coverage to catch up)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", type=Path, help="write each stage's cProfile summary to this file")
    args = parser.parse_args()
    profiles: dict[str, cProfile.Profile] = {}

    @contextlib.contextmanager
    def profiled(stage: str):
        if args.profile is None:
            yield
            return
        profiles[stage] = profile = cProfile.Profile()
        with profile:
            yield

    from pipeline_lib.config import PipelineConfig
    from pipeline_lib.data.features import fit_scalers
    from pipeline_lib.data.validate import validate_table
    from pipeline_lib.forecasting.daily import daily_forecast
    from pipeline_lib.model.forecast import ForecastModel
    from pipeline_lib.monitoring.daily import monitor_day
    from pipeline_lib.store import ForecastStore

    with tempfile.TemporaryDirectory() as tmp:
        config = PipelineConfig(workdir=Path(tmp), serving={"num_samples": args.samples},
                                runtime={"chunk_series": args.chunk})
        start = time.perf_counter()
        panel = validate_table(synthetic(args.series, 120), config.data, min_days=1)
        seconds_validate = time.perf_counter() - start
        scalers, spec = fit_scalers(panel, config.window, "log1p", config.model.level_days,
                                    weekday_profile=config.model.weekday_profile)
        # The head `auto` picks for this data (Poisson counts, few zeros), as a training run would.
        zero_share = float(np.mean([np.mean(s.target == 0) for s in panel.series]))
        model = ForecastModel.create(spec, scalers, config.resolved_model(targets_are_counts=True,
                                                                          zero_share=zero_share))
        store = ForecastStore(config.store_url).create()
        day = panel.series[0].dates[-1].date()
        known = panel.until(day - pd.Timedelta(days=1).to_pytimedelta())
        # Warm-up on a few series: tf.function tracing is a one-off cost per process.
        warm = type(known)(known.series[:8], known.covariate_names, known.source)
        daily_forecast(config, store, warm, day, model, "0")

        base = hwm_mb()
        start = time.perf_counter()
        with profiled("forecast"):
            run = daily_forecast(config, store, known, day, model, "1")
        seconds_forecast = time.perf_counter() - start
        if args.history:  # steady state: the six earlier runs that also forecast `day`
            issued = store.table("forecasts").query("run_date == @day")
            for k in range(1, min(args.history, config.serving.horizon - 1) + 1):
                earlier = day - pd.Timedelta(days=k).to_pytimedelta()
                store.replace_forecasts(earlier, issued.assign(date=pd.to_datetime(issued["date"])
                                                               - pd.Timedelta(days=k)))
            if not args.catch_up:  # yesterday's scheduled monitoring
                yesterday = day - dt.timedelta(days=1)
                monitor_day(config, store, panel.until(yesterday), yesterday, "1", Path(tmp) / "reports")
        start = time.perf_counter()
        with profiled("monitoring"):
            monitoring = monitor_day(config, store, panel, day, "1", Path(tmp) / "reports")
        seconds_monitor = time.perf_counter() - start
        peak = hwm_mb() - base
        store.dispose()

    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "series": args.series, "samples": args.samples, "horizon": config.serving.horizon,
        "rows_written": run.rows, "chunk_series": args.chunk, "history_runs": args.history,
        "catch_up": bool(args.history and args.catch_up),
        "seconds_validate": round(seconds_validate, 1), "seconds_forecast": round(seconds_forecast, 1),
        "seconds_monitor": round(seconds_monitor, 1),
        "seconds_total": round(seconds_forecast + seconds_monitor, 1), "peak_extra_mb": round(peak),
        "pic": monitoring.headline["picp"], "head": model.model_config.head,
    }
    if args.profile is not None:
        with open(args.profile, "w") as out:
            for stage, profile in profiles.items():
                text = io.StringIO()
                pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(30)
                out.write(f"## {stage} ({args.series} series)\n{text.getvalue()}\n")
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>18}: {value}")


if __name__ == "__main__":
    main()
