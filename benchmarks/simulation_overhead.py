"""Per-day cost of the real flows against the simulation's library path, on the same days.

    python benchmarks/simulation_overhead.py [--days 10] [--json]

On the bundled data: ``replay_flow`` trains the champion (training flow, MLflow) and lives
through the last ``--days`` days with the daily forecast and monitoring flows (Prefect, the
SQLite store, MLflow model loading, the Evidently report); then the simulation's library
path (``monitoring.simulation.run_policy``, policy ``never``) runs the same days from the
same champion. Both give the same orders and PIC (tests/test_replay.py checks that on
synthetic data); the difference per day is the flows' overhead. Also reported: the share of
the library day spent forecasting (the model's time).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PREFECT_HOME"] = str(Path(tmp) / "prefect")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        from flows.replay import replay_flow
        from pipeline_lib import registry
        from pipeline_lib.config import PipelineConfig
        from pipeline_lib.data.validate import load_panel
        from pipeline_lib.monitoring.coverage import BreachRule
        from pipeline_lib.monitoring.replay import ReplaySpec
        from pipeline_lib.monitoring.simulation import ModelOps, SimulationSettings, daily_forecast_table, run_policy

        config = PipelineConfig(workdir=Path(tmp) / "work").updated(monitoring={"retrain": "off"})
        panel = load_panel(config.data, config.window)
        last = min(s.dates[-1] for s in panel.series).date()
        start = last - dt.timedelta(days=args.days - 1)

        stamps = []
        began = time.perf_counter()

        def progress(line: str) -> None:
            stamps.append(time.perf_counter())
            print(line, file=sys.stderr)

        replay_flow(config, ReplaySpec(start, args.days), progress=progress)
        # progress: training lines first, then one line per replayed day
        day_times = [b - a for a, b in zip(stamps[-args.days - 1:-1], stamps[-args.days:], strict=True)]
        flow_day = sum(day_times[1:]) / (len(day_times) - 1)  # the first day also starts Prefect's tasks
        replay_total = time.perf_counter() - began

        registry.configure(config.tracking_uri)
        champion = registry.require_champion(config.registry.model_name).load()
        forecast = daily_forecast_table(config)
        forecast_seconds = []

        def timed_forecast(model, known):
            clock = time.perf_counter()
            frame = forecast(model, known)
            forecast_seconds.append(time.perf_counter() - clock)
            return frame

        settings = SimulationSettings(days=args.days, change_day=None, breach=BreachRule.of(config))
        clock = time.perf_counter()
        run_policy("never", champion, panel, start, settings, ModelOps(timed_forecast, None, None))
        library_day = (time.perf_counter() - clock) / args.days

    forecast_day = sum(forecast_seconds) / len(forecast_seconds)
    result = {
        "days": args.days, "series": len(panel.series),
        "flow_seconds_per_day": flow_day, "library_seconds_per_day": library_day,
        "flow_overhead_seconds_per_day": flow_day - library_day,
        "flow_over_library": flow_day / library_day,
        "model_share_of_library_day": forecast_day / library_day,
        "replay_seconds_including_training": replay_total,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    print(f"{args.days} days x {len(panel.series)} series: flows {flow_day:.2f} s/day, library {library_day:.2f} s/day "
          f"(of which forecasting {forecast_day:.2f} s) -> flows' overhead {flow_day - library_day:.2f} s/day, "
          f"{flow_day / library_day:.1f}x the library day")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
