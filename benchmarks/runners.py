"""Forecast flow on 10,000 series: the default thread runner vs a 2-worker Dask LocalCluster.

    python benchmarks/runners.py [--series 10000] [--json]

Registers an untrained default-architecture model (the time of a forward pass does not
depend on the weights) in a temporary MLflow, then runs ``daily_forecast_flow`` once per
runner (S = 100 paths, 7 days, 512 series per chunk) and checks both stored the same rows.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import pandas as pd
    from daily_monitoring import synthetic
    from prefect.testing.utilities import prefect_test_harness

    from flows.forecasting import daily_forecast_flow
    from pipeline_lib import registry, stages
    from pipeline_lib.config import PipelineConfig
    from pipeline_lib.data.features import fit_scalers
    from pipeline_lib.data.validate import validate_table
    from pipeline_lib.evaluation.gate import GateDecision
    from pipeline_lib.model.forecast import ForecastModel
    from pipeline_lib.model.training import TrainingResult
    from pipeline_lib.store import ForecastStore

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "series.parquet"
        synthetic(args.series, 120).to_parquet(data)
        config = PipelineConfig(workdir=tmp / "work", data={"path": data}, inventory={"in_training_run": False})
        panel = validate_table(pd.read_parquet(data), config.data, min_days=1)
        scalers, spec = fit_scalers(panel, config.window, "log1p", config.model.level_days)
        untrained = stages.TrainedModel(ForecastModel.create(spec, scalers, config.model),
                                          TrainingResult(best_validation_nll=float("nan")))
        small = validate_table(pd.read_parquet(data).head(120 * 8), config.data, min_days=1)
        evaluation = stages.evaluate(config, untrained.model, small)
        stages.register(config, small, untrained, evaluation, [],
                          stages.GateOutcome(GateDecision(True, ("benchmark",)), None, None))
        registry.configure(config.tracking_uri)
        seconds, tables = {}, {}
        with prefect_test_harness(server_startup_timeout=120):
            for runner in ("thread", "dask"):
                os.environ["BAYES_PIPELINE_STORE_URL"] = f"sqlite:///{tmp / runner}.db"
                start = time.perf_counter()
                daily_forecast_flow(config.updated(runtime={"task_runner": runner, "dask_workers": 2}))
                seconds[runner] = time.perf_counter() - start
                store = ForecastStore(os.environ["BAYES_PIPELINE_STORE_URL"])
                tables[runner] = store.table("forecasts")
                store.dispose()
        identical = tables["thread"].equals(tables["dask"])

    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores", "series": args.series,
              "rows": len(tables["thread"]), "seconds_thread": round(seconds["thread"], 1),
              "seconds_dask_2_workers": round(seconds["dask"], 1),
              "dask_over_thread": round(seconds["dask"] / seconds["thread"], 2), "identical": identical}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
