"""Reading a retailer's catalogue: time and peak memory of reading and validating an
M5-shaped Parquet dataset chunk by chunk (``read_panel``, what the flows do) against
reading the whole table and validating it at once (what they did before).

    python benchmarks/data_in.py [--series 3000 10000 30490] [--whole 3000 10000] [--days 1941] [--json]

The dataset is written once per size into a temporary directory, partitioned by series as
a Spark or pandas job writes it (one file per 1,000 series, each file's rows grouped by
series), with the columns of a sales extract: ``series_id, date, units, sell_price`` and a
text ``store_id`` the contract does not read. Demand is the seeded zero-heavy M5-shaped
panel of ``benchmarks/scale.py``. Each measurement runs in a child process so that each
has its own resident-memory high-water mark; it reports seconds, rows per second and peak
resident memory above the child's start, next to the validated panel's own size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _memory import hwm_mb

M5_SERIES, M5_DAYS = 30_490, 1_941
SERIES_PER_FILE = 1_000


def write_dataset(directory: Path, n_series: int, n_days: int) -> int:
    """The M5-shaped panel as Parquet files of whole series; returns the number of rows."""
    from scale import m5_shaped_panel

    panel = m5_shaped_panel(n_series, n_days)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for part, start in enumerate(range(0, n_series, SERIES_PER_FILE)):
        block = panel.series[start:start + SERIES_PER_FILE]
        ids = np.repeat([s.series_id for s in block], n_days)
        frame = pd.DataFrame({
            "series_id": ids,
            "date": np.tile(block[0].dates.values, len(block)),
            "units": np.concatenate([s.target for s in block]),
            "sell_price": np.round(rng.uniform(1, 20, len(ids)), 2),
            "store_id": np.repeat([f"CA_{k % 4 + 1}" for k in range(len(block))], n_days),
        })
        frame.to_parquet(directory / f"part-{part:05d}.parquet", index=False)
    return n_series * n_days


def measure(directory: Path, mode: str) -> dict:
    from pipeline_lib.config import DataConfig
    from pipeline_lib.data.validate import read_panel, validate_table

    data = DataConfig(path=directory, covariate_cols=("sell_price",))
    base = hwm_mb()
    start = time.perf_counter()
    if mode == "streamed":
        panel = read_panel(data)
    else:  # the whole table in pandas, then validated at once
        panel = validate_table(pd.read_parquet(directory), data)
    seconds = time.perf_counter() - start
    rows = sum(len(s) for s in panel.series)
    panel_mb = sum(s.target.nbytes + s.covariates.nbytes + s.dates.asi8.nbytes for s in panel.series) / 2**20
    return {"mode": mode, "series": len(panel.series), "rows": rows, "seconds": round(seconds, 1),
            "rows_per_second": round(rows / seconds), "panel_mb": round(panel_mb),
            "peak_extra_mb": round(hwm_mb() - base), "notes": list(panel.notes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, nargs="+", default=[3_000, 10_000, M5_SERIES])
    parser.add_argument("--whole", type=int, nargs="*", default=[3_000, 10_000],
                        help="sizes also read whole (the old path; at M5 size it needs tens of GB)")
    parser.add_argument("--days", type=int, default=M5_DAYS)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child[0]), args.child[1])))
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.series:
            directory = Path(tmp) / f"sales_{n}"
            print(f"{n} series: writing ...", file=sys.stderr, flush=True)
            write_dataset(directory, n, args.days)
            size_mb = sum(f.stat().st_size for f in directory.iterdir()) / 2**20
            for mode in ["streamed"] + (["whole"] if n in args.whole else []):
                print(f"{n} series: reading ({mode}) ...", file=sys.stderr, flush=True)
                child = [sys.executable, __file__, "--child", str(directory), mode]
                done = subprocess.run(child, capture_output=True, text=True, check=False)
                row = ({"mode": mode, "series": n, "error": done.stderr.strip()[-400:]} if done.returncode
                       else json.loads(done.stdout.strip().splitlines()[-1]))
                rows.append({**row, "parquet_mb": round(size_mb)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            for f in directory.iterdir():
                f.unlink()
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "days": args.days, "runs": rows}
    if args.json:
        print(json.dumps(report))
        return
    print(f"{report['date']}, {report['machine']}, {args.days} days per series")
    print("| series | rows | read | seconds | rows/s | Parquet MB | panel MB | peak extra MB |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['series']} | | {row['mode']} | failed: {row['error'][-120:]} |||||")
            continue
        print(f"| {row['series']} | {row['rows']:,} | {row['mode']} | {row['seconds']} | {row['rows_per_second']:,} "
              f"| {row['parquet_mb']} | {row['panel_mb']} | {row['peak_extra_mb']} |")


if __name__ == "__main__":
    main()
