"""Training flow: ingest (read + validate, chunk by chunk) -> train -> mc_sample_chunks -> mc_evaluate ->
[rolling_origin_backtest] -> [inventory_backtest] -> promotion_gate -> [refit] -> register.

``train`` is the evaluation fit (the test days unseen): the evaluation, the backtests and
the gate judge it. With ``train.refit`` (default) the registered model is its refit on
every day, with the same configuration and epoch count (``stages.refit``).

The Monte Carlo samples of the test split are drawn chunk by chunk of series
(``runtime.chunk_series``), mapped over Prefect tasks on the configured task runner
(threads, or Dask; see :mod:`flows.runners`), with the same numbers on any runner.

Each task calls one plain function of :mod:`pipeline_lib.stages`; the flow adds
retries, logging and the Prefect artifacts (metrics table, run link).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import NO_CACHE_TASK, ingest
from flows.runners import task_runner
from pipeline_lib import stages
from pipeline_lib.config import PipelineConfig, deployed_config
from pipeline_lib.model.distribute import is_chief
from pipeline_lib.model.forecast import ForecastModel, ModelFiles, SampledForecast


@task(name="check_registry", **NO_CACHE_TASK)
def check_registry(config: PipelineConfig) -> None:
    """Fail before training when MLflow does not answer (its client retries with backoff)."""
    from pipeline_lib import registry

    registry.check_reachable(config.tracking_uri)


@task(name="train", **NO_CACHE_TASK)
def train(config: PipelineConfig, panel, progress: bool = True):
    trained = stages.train(config, panel, progress=progress)
    get_run_logger().info("trained %d epochs (best %d, validation NLL %.4f) in %.0f s",
                          trained.training.epochs_run, trained.training.best_epoch,
                          trained.training.best_validation_nll, trained.training.seconds)
    return trained


@task(name="refit", **NO_CACHE_TASK)
def refit(config: PipelineConfig, panel, trained, progress: bool = True):
    served = stages.refit(config, panel, trained, progress=progress)
    get_run_logger().info("refitted on every day for %d epochs in %.0f s (the registered model)",
                          served.training.epochs_run, served.training.seconds)
    return served


@functools.lru_cache(maxsize=2)
def _loaded(model_files: ModelFiles) -> ForecastModel:
    """One load per process and model (a Dask worker keeps it for all its chunks)."""
    return model_files.load()


@task(name="mc_sample_chunk", **NO_CACHE_TASK)
def mc_sample_chunk(config: PipelineConfig, model_files: ModelFiles, chunk, k: int) -> SampledForecast:
    return stages.sample_test_chunk(config, _loaded(model_files), chunk, k)


@flow(name="mc_sample_chunks")
def mc_sample_chunks(config: PipelineConfig, model_files: ModelFiles, chunks: list) -> SampledForecast:
    """Monte Carlo samples of the test split, chunks of series mapped over tasks (the caller
    picks the task runner; chunk ``k`` has seed ``evaluation.seed + k`` on any runner)."""
    futures = mc_sample_chunk.map(unmapped(config), unmapped(model_files), chunks, list(range(len(chunks))))
    return SampledForecast.concat([future.result() for future in futures])


@task(name="mc_evaluate", **NO_CACHE_TASK)
def mc_evaluate(config: PipelineConfig, trained, panel, raw: SampledForecast, plot_dir: Path):
    evaluation = stages.evaluate(config, trained.model, panel, raw)
    plots = stages.write_plots(config, panel, evaluation, plot_dir)
    return evaluation, plots


@task(name="rolling_origin_backtest", **NO_CACHE_TASK)
def rolling_origin_backtest(config: PipelineConfig, panel) -> dict:
    return stages.backtest_summary(config, panel)


@task(name="inventory_backtest", **NO_CACHE_TASK)
def inventory_backtest(config: PipelineConfig, trained, panel, out_dir: Path):
    """Order-policy backtest over the test split (metrics and chart go into the run)."""
    from pipeline_lib.inventory.run import inventory_backtest as run_backtest

    if len({s.dates[-1] for s in panel.series}) != 1:
        get_run_logger().info("inventory backtest skipped: the series do not end on the same day")
        return None
    report = run_backtest(config, trained.model, panel, out_dir)
    get_run_logger().info("inventory: %s", report.summary())
    return report


@task(name="promotion_gate", **NO_CACHE_TASK)
def promotion_gate(config: PipelineConfig, panel, evaluation, champion_failing: bool = False):
    gate = stages.promotion_gate(config, panel, evaluation, champion_failing)
    get_run_logger().info("promotion gate: %s", gate.decision.summary())
    return gate


@task(name="register", **NO_CACHE_TASK)
def register(config: PipelineConfig, panel, trained, evaluation, plots, gate):
    return stages.register(config, panel, trained, evaluation, plots, gate)


@flow(name="training_pipeline", log_prints=True)
def training_pipeline(config: PipelineConfig | None = None, progress: bool = True,
                      champion_failing: bool = False) -> stages.TrainingOutcome | None:
    """Train, evaluate, gate and register a Bayesian LSTM (champion only through the gate).

    ``config``: None (a scheduled deployment) reads ``$BAYES_PIPELINE_CONFIG``.
    ``champion_failing``: set by the monitoring when the champion breached its coverage
    threshold; the gate then judges the challenger relative to the champion.
    Returns None in a worker of a multi-worker training other than the chief
    (``train.distribute: multi_worker``), which trains its share and registers nothing.
    """
    config = config or deployed_config()
    if not is_chief(config.train.distribute):  # another worker of a multi-worker training
        return _train_as_worker(config, progress)
    check_registry(config)
    panel = ingest(config, for_training=True)
    trained = train(config, panel, progress)
    scored = stages.scored_panel(config, panel)  # every series, or a fixed sample of a large catalogue
    if len(scored.series) < len(panel.series):
        get_run_logger().info("evaluation, recalibration, gate and inventory backtest score a fixed sample of %d of "
                              "%d series (evaluation.max_series); training used all", len(scored.series),
                              len(panel.series))
    with tempfile.TemporaryDirectory() as tmp:
        chunks = scored.chunks(config.runtime.chunk_series)
        raw = mc_sample_chunks.with_options(task_runner=task_runner(config))(
            config, ModelFiles.of(trained.model), chunks)
        evaluation, plots = mc_evaluate(config, trained, scored, raw, Path(tmp))
        if config.evaluation.backtest_folds > 1:
            evaluation.metrics.update(rolling_origin_backtest(config, panel))
        if config.inventory.in_training_run:
            report = inventory_backtest(config, trained, scored, Path(tmp) / "inventory")
            if report is not None:
                evaluation.metrics.update(report.metrics())
                plots = [*plots, report.chart]
        gate = promotion_gate(config, scored, evaluation, champion_failing)
        served = refit(config, panel, trained, progress) if config.train.refit else trained
        outcome = register(config, panel, served, evaluation, plots, gate)
    _publish(outcome)
    return outcome


def _train_as_worker(config: PipelineConfig, progress: bool) -> None:
    """Take this worker's share of the evaluation fit and of the refit (the same steps as the
    chief, whose gradients it all-reduces with), and leave evaluating, gating and registering
    to the chief."""
    panel = ingest(config, for_training=True)
    trained = train(config, panel, progress)
    if config.train.refit:
        refit(config, panel, trained, progress)
    get_run_logger().info("a worker of a multi-worker training: trained its share; the chief registers")


def _publish(outcome: stages.TrainingOutcome) -> None:
    keys = ["picp_80", "picp_90", "picp_95", "mpiw_95", "crps", "crps_scaled", "mae", "mase", "epistemic_share",
            "uncalibrated_picp_90", "uncalibrated_picp_95", "uncalibrated_crps_scaled",
            "peer_seasonal_naive_picp_90", "peer_seasonal_naive_picp_95", "peer_seasonal_naive_crps_scaled"]
    create_table_artifact(
        key="training-metrics",
        table=[{"metric": k, "value": round(outcome.metrics[k], 4)} for k in keys if k in outcome.metrics],
        description="Test-split metrics of the new model version (one-day-ahead, Monte Carlo)",
    )
    create_markdown_artifact(
        key="training-run",
        markdown=(
            f"## Model `{outcome.model_name}` version {outcome.version}\n\n"
            f"* aliases: {', '.join(outcome.aliases)}\n"
            f"* promotion gate: {outcome.gate}\n"
            f"* MLflow run: {outcome.run_url}\n"
            f"* PICP95 {outcome.metrics['picp_95']:.3f} | PICP90 {outcome.metrics['picp_90']:.3f} | "
            f"CRPS (scaled) {outcome.metrics['crps_scaled']:.3f} | MASE {outcome.metrics['mase']:.3f}\n"
            + "".join(f"* plot: [{uri.rsplit('/', 1)[-1]}]({uri})\n" for uri in outcome.plot_uris)
        ),
        description="Where to find the run and the registered version",
    )
