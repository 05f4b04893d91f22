"""What every flow shares: the task options for data-frame inputs and the ingest task."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline_lib import stages
from pipeline_lib.config import PipelineConfig

# Inputs are data frames and models: hashing them for Prefect's cache would cost more
# than the tasks and would never hit.
NO_CACHE_TASK = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="ingest", retries=2, retry_delay_seconds=5, **NO_CACHE_TASK)
def ingest(config: PipelineConfig):
    """The raw table from the configured source (retried: a database may blink)."""
    return stages.ingest(config)
