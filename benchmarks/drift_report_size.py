"""What a day of drift reporting weighs on disk: the standalone HTML export against the
snapshot in the Evidently workspace, on the bundled data.

    python benchmarks/drift_report_size.py [--days 7] [--json]

For each of the data's last ``--days`` days, builds the monitoring's drift frames as the
daily monitoring does (the current week against the 56 days before it; every day counted
as covered, which does not change the size) and writes both forms through
``drift.drift_report``; prints the bytes of each per day and their ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from pipeline_lib.config import PipelineConfig
    from pipeline_lib.data.validate import read_panel
    from pipeline_lib.monitoring.drift import drift_report

    panel = read_panel(PipelineConfig().data)
    frame = panel.to_frame()
    last = frame["date"].max().date()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.days):
            day = last - dt.timedelta(days=args.days - 1 - k)
            window = frame[(frame["date"].dt.date > day - dt.timedelta(days=7)) & (frame["date"].dt.date <= day)]
            reference = frame[(frame["date"].dt.date <= day - dt.timedelta(days=7))
                              & (frame["date"].dt.date > day - dt.timedelta(days=63))]
            summary = drift_report(reference, window.assign(covered=1.0), tuple(panel.covariate_names), 0.1,
                                   Path(tmp) / f"monitoring-{day}.html", day=day, decision="size benchmark",
                                   workspace=Path(tmp) / "workspace")
            rows.append({"day": str(day), "html_bytes": summary.report_path.stat().st_size,
                         "snapshot_bytes": Path(summary.snapshot).stat().st_size})
    html, snap = (np.mean([r[k] for r in rows]) for k in ("html_bytes", "snapshot_bytes"))
    result = {"date": dt.date.today().isoformat(), "machine": f"{platform.machine()}, {platform.system()}",
              "series": len(panel.series), "days": rows, "mean_html_bytes": html, "mean_snapshot_bytes": snap,
              "html_to_snapshot": html / snap}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for row in rows:
        print(f"{row['day']}: HTML {row['html_bytes'] / 1e6:.2f} MB, snapshot {row['snapshot_bytes'] / 1e3:.1f} KB")
    print(f"mean: HTML {html / 1e6:.2f} MB, snapshot {snap / 1e3:.1f} KB per day ({html / snap:.0f}x); "
          f"a year: {365 * html / 1e9:.2f} GB against {365 * snap / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
