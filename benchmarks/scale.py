"""Training at a retailer's catalogue size: one epoch's time and peak memory against the
number of series.

    python benchmarks/scale.py [--series 1000 10000 30490] [--days 1941] [--materialised 1000] [--json]

For each size, a child process (so that each has its own resident-memory high-water mark)
draws an M5-shaped synthetic panel, seeded: ``--days`` days per series of zero-heavy
negative-binomial demand (median level 0.6 units a day, 5% of series above 10, weekly and
yearly seasonality; about 60% zero days, as in M5), built straight into a ``Panel`` (reading
59 million rows through the CSV validator is a separate stage, not measured here). It then
does what ``stages.train`` does before and during training: scalers, ``LazyWindows`` for
the training and validation parts, the default-architecture model, and two epochs of
``train_model`` with the default ``windows_per_epoch`` and ``validation_windows`` (the
second epoch is reported; the first also traces the graphs).

``--materialised N``: also run size N the way training ran before ``LazyWindows`` (every
window in memory, every window visited per epoch), side by side.

Prints per size: seconds to prepare (scalers + windows), seconds for an epoch (with its
validation pass), training windows per second, and peak resident memory above the
process's state once the panel exists, next to the panel's own size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
from _memory import hwm_mb

M5_SERIES, M5_DAYS = 30_490, 1_941


def m5_shaped_panel(n_series: int, n_days: int, seed: int = 0):
    """``n_series`` x ``n_days`` zero-heavy NB demand as a ``Panel`` (no covariates), built
    block by block so that generation itself stays within a few hundred MB."""
    from pipeline_lib.data.validate import Panel, Series

    rng = np.random.default_rng(seed)
    dates = pd.date_range("2011-01-29", periods=n_days, freq="D")  # M5's first day; one shared index
    weekday = dates.dayofweek.to_numpy()
    year_phase = 2 * np.pi * dates.dayofyear.to_numpy() / 365.25
    series = []
    for start in range(0, n_series, 2000):
        n = min(2000, n_series - start)
        level = np.exp(rng.normal(np.log(0.6), 1.3, size=(n, 1)))
        weekly = np.exp(rng.normal(0.0, 0.2, size=(n, 7)))[:, weekday]
        yearly = np.exp(rng.uniform(0.0, 0.3, size=(n, 1)) * np.sin(year_phase + rng.uniform(0, 6.3, size=(n, 1))))
        mean = level * weekly * yearly
        dispersion = rng.uniform(0.5, 5.0, size=(n, 1))
        units = rng.poisson(rng.gamma(dispersion, mean / dispersion)).astype(float)
        series += [Series(f"S{start + k:05d}", dates, units[k], np.zeros((n_days, 0))) for k in range(n)]
    return Panel(tuple(series), (), f"m5-shaped synthetic ({n_series} x {n_days}, seed {seed})")


def measure(n_series: int, n_days: int, materialised: bool) -> dict:
    from pipeline_lib.config import PipelineConfig
    from pipeline_lib.data.features import LazyWindows, fit_scalers, target_transform
    from pipeline_lib.model.forecast import ForecastModel
    from pipeline_lib.model.training import train_model

    config = PipelineConfig()
    train_config = config.train.model_copy(update={"epochs": 2})
    if materialised:  # the training loop as it was: every window, every epoch
        train_config = train_config.model_copy(update={"windows_per_epoch": None, "validation_windows": None})
    panel = m5_shaped_panel(n_series, n_days)
    panel_mb = sum(s.target.nbytes for s in panel.series) / 2**20
    zero_share = float(np.mean([np.mean(s.target == 0) for s in panel.series]))
    base = hwm_mb()
    start = time.perf_counter()
    scalers, spec = fit_scalers(panel, config.window, target_transform(True), config.model.level_days,
                                weekday_profile=config.model.weekday_profile)
    train = LazyWindows(panel, scalers, spec, config.window, "train")
    validation = train.for_part(panel, config.window, "validation")
    if materialised:
        train, validation = train.materialise(), validation.materialise()
    seconds_prepare = time.perf_counter() - start
    model = ForecastModel.create(spec, scalers, config.resolved_model(targets_are_counts=True, zero_share=zero_share))
    result = train_model(model.network, train, validation, train_config, progress=False)
    visited = min(len(train), train_config.windows_per_epoch or len(train))
    second = result.history[1]  # the first epoch also traces the graphs: a one-off
    return {
        "series": n_series, "days": n_days, "materialised": materialised, "zero_share": round(zero_share, 3),
        "train_windows": len(train), "windows_per_epoch": visited,
        "validation_windows": min(len(validation), train_config.validation_windows or len(validation)),
        "seconds_prepare": round(seconds_prepare, 1), "seconds_first_epoch": round(result.history[0]["seconds"], 1),
        "seconds_epoch": round(second["seconds"], 1), "windows_per_second": round(visited / second["seconds"]),
        "panel_mb": round(panel_mb), "peak_extra_mb": round(hwm_mb() - base),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, nargs="+", default=[1_000, 10_000, M5_SERIES])
    parser.add_argument("--days", type=int, default=M5_DAYS)
    parser.add_argument("--materialised", type=int, nargs="*", default=[1_000],
                        help="sizes also run with every window in memory (the old training loop)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.days, bool(args.child[1]))))
        return

    runs = [(n, 0) for n in args.series] + [(n, 1) for n in args.materialised]
    rows = []
    for n, materialised in runs:
        print(f"{n} series{' (materialised)' if materialised else ''} ...", file=sys.stderr, flush=True)
        child = [sys.executable, __file__, "--days", str(args.days), "--child", str(n), str(materialised)]
        done = subprocess.run(child, capture_output=True, text=True, check=False)
        if done.returncode:
            rows.append({"series": n, "materialised": bool(materialised), "error": done.stderr.strip()[-400:]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "runs": rows}
    if args.json:
        print(json.dumps(report))
        return
    print(f"{report['date']}, {report['machine']}")
    print("| series | windows in memory | train windows | visited per epoch | prepare s | epoch s | windows/s "
          "| panel MB | peak extra MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['series']} | {'all' if row['materialised'] else 'per batch'} | failed: "
                  f"{row['error'][-120:]} |||||||")
            continue
        print(f"| {row['series']} | {'all' if row['materialised'] else 'per batch'} | {row['train_windows']} | "
              f"{row['windows_per_epoch']} | {row['seconds_prepare']} | {row['seconds_epoch']} | "
              f"{row['windows_per_second']} | {row['panel_mb']} | {row['peak_extra_mb']} |")


if __name__ == "__main__":
    main()
