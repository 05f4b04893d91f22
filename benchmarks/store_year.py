"""The forecast store at a retailer's catalogue size: a simulated month of daily writes,
then the size of a year.

    python benchmarks/store_year.py [--series 30490] [--days 30] [--url URL ...] [--json]

For each store URL (default: a SQLite file in a temporary directory; pass a PostgreSQL URL
to measure the COPY path, e.g. ``postgresql+psycopg2://user:password@host/db``), writes
``--days`` daily forecast runs of ``--series`` x 7 days (the output contract with its 23
quantiles, mean, std and order levels) through ``ForecastStore.replace_forecasts``, then
reads one target day back as the monitoring does (``forecasts_for``) and prunes the oldest
run as the retention does. Values are random but shaped like the contract's (sorted
quantiles); neither SQLite nor PostgreSQL compresses rows, so the size does not depend on
them.

Prints per store: seconds per daily write, rows per second, the read and prune times, the
table's size with its indexes, bytes per row, and that extrapolated to a year of daily runs
and to the steady state under ``monitoring.forecast_retention_days``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa


def daily_run(run_date: dt.date, series_ids: np.ndarray, horizon: int, rng: np.random.Generator) -> pd.DataFrame:
    """``len(series_ids) * horizon`` contract rows issued on ``run_date``."""
    from pipeline_lib.contract import QUANTILE_COLUMNS

    n = len(series_ids) * horizon
    quantiles = np.sort(rng.gamma(2.0, 5.0, size=(n, len(QUANTILE_COLUMNS))), axis=1)
    frame = pd.DataFrame(quantiles, columns=list(QUANTILE_COLUMNS))
    frame.insert(0, "series_id", np.repeat(series_ids, horizon))
    frame.insert(1, "date", np.tile(pd.date_range(run_date, periods=horizon, freq="D"), len(series_ids)))
    frame.insert(2, "model_version", "7")
    frame.insert(3, "mean", quantiles.mean(axis=1))
    frame.insert(4, "std", quantiles.std(axis=1))
    order = quantiles[:, -1] * 3
    order[np.tile(np.arange(horizon) >= horizon - 2, len(series_ids))] = np.nan  # the last days have none
    frame["order_up_to"], frame["safety_stock"] = order, order / 4
    return frame


def table_bytes(store) -> int:
    """The forecasts table with its indexes, in bytes."""
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "postgresql":
            return int(conn.execute(sa.text("SELECT pg_total_relation_size('forecasts')")).scalar_one())
    return Path(store.engine.url.database).stat().st_size  # SQLite: the file (other tables are tiny here)


def measure(url: str, n_series: int, n_days: int, retention_days: int) -> dict:
    from pipeline_lib.errors import redacted_url
    from pipeline_lib.store import ForecastStore

    store = ForecastStore(url).create()
    rng = np.random.default_rng(0)
    ids = np.array([f"FOODS_3_{k:05d}_CA_1" for k in range(n_series)])  # M5-like id lengths
    first = dt.date(2016, 1, 1)
    frames = [daily_run(first, ids, 7, rng)]
    seconds = []
    for k in range(n_days):
        run_date = first + dt.timedelta(days=k)
        frame = frames[0].assign(date=frames[0]["date"] + pd.Timedelta(days=k))
        start = time.perf_counter()
        rows = store.replace_forecasts(run_date, frame)
        seconds.append(time.perf_counter() - start)
        print(f"{redacted_url(url)}: day {k + 1}/{n_days}, {rows} rows in {seconds[-1]:.1f} s", flush=True)
    size = table_bytes(store)
    start = time.perf_counter()
    read = store.forecasts_for(first + dt.timedelta(days=n_days - 1))
    seconds_read = time.perf_counter() - start
    start = time.perf_counter()
    pruned = store.prune_forecasts(first + dt.timedelta(days=1))
    seconds_prune = time.perf_counter() - start
    store.dispose()
    rows_written = n_series * 7 * n_days
    per_row = size / rows_written
    return {
        "store": store.engine.dialect.name, "series": n_series, "days": n_days, "rows": rows_written,
        "seconds_per_day": round(float(np.mean(seconds)), 2), "seconds_per_day_max": round(max(seconds), 2),
        "rows_per_second": round(n_series * 7 / float(np.mean(seconds))),
        "seconds_read_day": round(seconds_read, 2), "rows_read": len(read),
        "seconds_prune_day": round(seconds_prune, 2), "rows_pruned": pruned,
        "mb": round(size / 2**20), "bytes_per_row": round(per_row),
        "gb_per_year": round(per_row * n_series * 7 * 365 / 2**30, 1),
        "gb_at_retention": round(per_row * n_series * 7 * retention_days / 2**30, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=30_490)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--url", nargs="*", default=None, help="store URLs (default: a temporary SQLite file)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from pipeline_lib.config import PipelineConfig

    retention = PipelineConfig().monitoring.forecast_retention_days
    with tempfile.TemporaryDirectory() as tmp:
        urls = args.url or [f"sqlite:///{Path(tmp) / 'store.db'}"]
        runs = [measure(url, args.series, args.days, retention) for url in urls]
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "retention_days": retention, "runs": runs}
    if args.json:
        print(json.dumps(report))
        return
    print(f"{report['date']}, {report['machine']}, retention {retention} days")
    for run in runs:
        print(json.dumps(run))


if __name__ == "__main__":
    main()
