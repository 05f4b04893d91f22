"""What every flow shares: the task options for data-frame inputs and the ingest task."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline_lib import stages
from pipeline_lib.config import PipelineConfig
from pipeline_lib.errors import DataValidationError

# Inputs are data frames and models: hashing them for Prefect's cache would cost more
# than the tasks and would never hit.
NO_CACHE_TASK = dict(cache_policy=NO_CACHE, persist_result=False)


def _source_may_recover(task, task_run, state) -> bool:
    """Retry a database that blinked, not data that breaks the contract."""
    return not isinstance(state.data, DataValidationError)


@task(name="ingest", retries=2, retry_delay_seconds=5, retry_condition_fn=_source_may_recover, **NO_CACHE_TASK)
def ingest(config: PipelineConfig, for_training: bool = False):
    """The validated panel from the configured source, read chunk by chunk."""
    panel = stages.load(config, for_training)
    get_run_logger().info("validated %d series from %s%s", len(panel.series), panel.source,
                          "".join(f"; {note}" for note in panel.notes))
    return panel
