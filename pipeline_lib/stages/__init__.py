"""The stages of the training pipeline as plain functions; ``flows/`` wraps them in Prefect.

ingest + validate (chunk by chunk) -> train -> evaluate (Monte Carlo, on the test split) -> promotion gate
-> [refit] -> register; beside them the rolling-origin backtest and the online update.
Each stage lives in its own module; this package names the ones a flow task calls.
"""

from pipeline_lib.stages.backtesting import backtest_summary, rolling_origin_backtest
from pipeline_lib.stages.evaluation import (
    CANDIDATE_VERSION,
    Evaluation,
    backtest_forecasts,
    evaluate,
    horizon_coverage,
    sample_test_chunk,
    scored_panel,
    seasonal_scales,
    write_plots,
)
from pipeline_lib.stages.ingestion import data_fingerprint, ingest, load, validate
from pipeline_lib.stages.online_update import online_update_champion, recent_days
from pipeline_lib.stages.promotion import GateOutcome, promotion_gate
from pipeline_lib.stages.registration import TrainingOutcome, log_inventory_run, register
from pipeline_lib.stages.training import (
    TrainedModel,
    backtest_model,
    fit_recalibration,
    fit_served,
    record_failure,
    refit,
    train,
    warm_refit,
)

__all__ = [
    "CANDIDATE_VERSION", "Evaluation", "GateOutcome", "TrainedModel", "TrainingOutcome", "backtest_forecasts",
    "backtest_model", "backtest_summary", "data_fingerprint", "evaluate", "fit_recalibration",
    "fit_served", "horizon_coverage", "ingest", "load", "log_inventory_run", "online_update_champion", "promotion_gate",
    "recent_days", "record_failure", "refit", "register", "rolling_origin_backtest", "sample_test_chunk",
    "scored_panel", "seasonal_scales", "train", "validate", "warm_refit", "write_plots",
]
