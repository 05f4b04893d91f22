"""The task runner the config asks for, shared by the flows that map chunks of series."""

from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner

from pipeline_lib.config import PipelineConfig


def task_runner(config: PipelineConfig):
    """``runtime.task_runner``: Prefect's thread pool, or prefect-dask's ``DaskTaskRunner``
    on ``runtime.dask_address`` (a LocalCluster of ``runtime.dask_workers`` when none)."""
    if config.runtime.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if config.dask_address:
            return DaskTaskRunner(address=config.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": config.runtime.dask_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=2)
