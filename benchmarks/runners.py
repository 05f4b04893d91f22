"""Forecast flow on 10,000 series: the default thread runner vs a 2-worker Dask LocalCluster.

    python benchmarks/runners.py [--series 10000] [--json]
    python benchmarks/runners.py --scaling [--series 4000] [--json]

``--scaling``: TensorFlow limited to one thread in every process (``TF_NUM_INTRAOP_THREADS``,
``TF_NUM_INTEROP_THREADS`` and ``OMP_NUM_THREADS`` = 1, inherited by Dask's worker
processes); the same forecast as the library does it in one process (no Prefect, warm),
then the flow on a running Dask cluster (``runtime.dask_address``) of 1 and of 2
single-threaded worker processes, each timed on its second run (warm workers, as a
long-lived cluster has them). Reports the flow's overhead over the library (1 worker /
one process) and the scaling efficiency from 1 to 2 workers (``t1 / (2 t2)``; 1.0 is
perfect).

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
    parser.add_argument("--scaling", action="store_true", help="one thread per process: 1 vs 2 Dask workers")
    args = parser.parse_args()
    if args.scaling:  # before TensorFlow is imported, here and (inherited) in the workers
        for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            os.environ[name] = "1"

    import numpy as np
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
        scalers, spec = fit_scalers(panel, config.window, "log1p", config.model.level_days,
                                    weekday_profile=config.model.weekday_profile)
        zero_share = float(np.mean([np.mean(s.target == 0) for s in panel.series]))
        model_config = config.resolved_model(targets_are_counts=True, zero_share=zero_share)  # as training would
        untrained = stages.TrainedModel(ForecastModel.create(spec, scalers, model_config),
                                          TrainingResult(best_validation_nll=float("nan")))
        small = validate_table(pd.read_parquet(data).head(120 * 8), config.data, min_days=1)
        evaluation = stages.evaluate(config, untrained.model, small)
        stages.register(config, small, untrained, evaluation, [],
                          stages.GateOutcome(GateDecision(True, ("benchmark",)), None, None))
        registry.configure(config.tracking_uri)
        if args.scaling:
            print(json.dumps(scaling(config, panel, tmp)))
            return
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


def scaling(config, panel, tmp: Path) -> dict:
    """The same day's forecast in one process (the library) and on 1 and 2 Dask workers."""
    import datetime as dt

    from prefect.testing.utilities import prefect_test_harness

    from flows.forecasting import daily_forecast_flow
    from pipeline_lib import registry
    from pipeline_lib.forecasting.daily import daily_forecast
    from pipeline_lib.store import ForecastStore

    run_date = max(s.dates[-1] for s in panel.series).date() + dt.timedelta(days=1)
    champion = registry.require_champion(config.registry.model_name)
    model = champion.load()
    daily_forecast(config, ForecastStore(f"sqlite:///{tmp / 'warm.db'}").create(), panel.chunks(8)[0], run_date,
                   model, champion.version)  # graph tracing is a one-off per process
    seconds, tables = {}, {}
    store = ForecastStore(f"sqlite:///{tmp / 'one.db'}").create()
    start = time.perf_counter()
    daily_forecast(config, store, panel, run_date, model, champion.version)
    seconds["one_process"] = time.perf_counter() - start
    tables["one_process"] = store.table("forecasts")
    store.dispose()
    from dask.distributed import LocalCluster

    with prefect_test_harness(server_startup_timeout=120):
        for workers in (1, 2):
            key = f"dask_{workers}"
            # A cluster that outlives the flow runs (as a real one does), warmed by a first run:
            # its workers have imported TensorFlow, loaded the champion and traced the graphs.
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster:
                dask_config = config.updated(runtime={"task_runner": "dask", "dask_address": cluster.scheduler_address})
                for attempt in ("warm", "timed"):
                    os.environ["BAYES_PIPELINE_STORE_URL"] = f"sqlite:///{tmp / key}-{attempt}.db"
                    start = time.perf_counter()
                    daily_forecast_flow(dask_config)
                    seconds[key] = time.perf_counter() - start
            store = ForecastStore(os.environ["BAYES_PIPELINE_STORE_URL"])
            tables[key] = store.table("forecasts")
            store.dispose()
    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores", "series": len(panel.series),
            "threads_per_process": 1, **{f"seconds_{k}": round(v, 1) for k, v in seconds.items()},
            "dask_overhead": round(seconds["dask_1"] / seconds["one_process"], 2),
            "speedup_1_to_2_workers": round(seconds["dask_1"] / seconds["dask_2"], 2),
            "scaling_efficiency": round(seconds["dask_1"] / (2 * seconds["dask_2"]), 2),
            "identical": all(t.equals(tables["one_process"]) for t in tables.values())}


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
