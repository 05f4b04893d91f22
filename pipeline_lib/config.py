"""One validated configuration object for every flow and command.

Every setting lives here, with its bound and its description (the Prefect UI renders them
as the flow parameter form), hence its 480 lines.

Nothing here touches the file system or MLflow at import time: paths are derived on
demand from the work directory, and URLs/secrets come from the environment.

Environment variables:

- ``BAYES_PIPELINE_WORKDIR``: default work directory (else ``./.bayes-pipeline``).
- ``BAYES_PIPELINE_SQL_URL``: the SQLAlchemy URL of a SQL data source, when it carries a
  password (a config never does: configs are logged to MLflow and shown by Prefect).
- ``BAYES_PIPELINE_CONFIG``: the YAML config of deployed flows started without a ``config``
  parameter (the compose stack mounts it; see docs/deployment.md).
- ``MLFLOW_TRACKING_URI``: overrides the SQLite tracking store in the work directory.
- ``BAYES_PIPELINE_STORE_URL``: overrides the SQLite forecast store in the work directory.
- ``BAYES_PIPELINE_ALERT_WEBHOOKS``: comma-separated URLs that receive alerts as JSON POSTs.
- ``BAYES_PIPELINE_APPRISE_URLS``: comma-separated Apprise URLs (Slack, e-mail, Teams, ...).
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline_lib.errors import ConfigError, redacted_url

log = logging.getLogger(__name__)

WORKDIR_ENV = "BAYES_PIPELINE_WORKDIR"
CONFIG_ENV = "BAYES_PIPELINE_CONFIG"
SQL_URL_ENV = "BAYES_PIPELINE_SQL_URL"
AUTO_COUNT_MIN_ZERO_SHARE = 0.05  # head: auto picks the count head from this share of zero days
DEFAULT_WORKDIR = Path(".bayes-pipeline")


def default_workdir() -> Path:
    return Path(os.environ.get(WORKDIR_ENV, DEFAULT_WORKDIR))


def bundled_dataset_path() -> Path:
    """Path of the bundled Online Retail II extract (CC BY 4.0, see its README)."""
    return Path(str(resources.files("pipeline_lib.data") / "bundled" / "online_retail_ii_daily_top50.csv.gz"))


def _url_password(url: str) -> str | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).password
    except ArgumentError:
        return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where the long-format daily data comes from and what its columns mean."""

    path: Path | None = Field(None, description="CSV, CSV.gz or Parquet file, or a directory of Parquet files "
                              "(e.g. partitioned by series); None = bundled data")
    sql_url: str | None = Field(None, description="SQLAlchemy URL to read from instead of a file, without a "
                                "password (a URL with one goes in $BAYES_PIPELINE_SQL_URL)")
    sql_query: str | None = Field(None, description="query returning the long-format table (from sql_url, "
                                  "else from $BAYES_PIPELINE_SQL_URL)")
    id_col: str = "series_id"
    time_col: str = "date"
    target_col: str = "units"
    covariate_cols: tuple[str, ...] | None = Field(
        None, description="numeric covariates; None = every other numeric column"
    )
    known_covariates: tuple[str, ...] = Field(
        (), description="covariates whose value for a day is known before the day (a price plan, a promotion "
        "calendar): the model reads them on the target day itself instead of a day late, and rows after a "
        "series' last actual that leave the target empty give their planned values for the forecast days"
    )
    non_negative: bool = Field(True, description="reject negative targets (demand)")
    gap_policy: Literal["zero", "ffill", "reject"] = Field(
        "zero",
        description="missing calendar days: 'zero' = no sales recorded (target 0), "
        "'ffill' = carry the last value, 'reject' = error",
    )
    read_chunk_rows: int = Field(
        1_000_000, ge=1, description="rows read and validated at a time (whole series each): bounds the memory "
        "of reading a large catalogue; a source not grouped by series is read whole"
    )

    @model_validator(mode="after")
    def _known_among_covariates(self) -> DataConfig:
        if self.covariate_cols is not None:
            unknown = [c for c in self.known_covariates if c not in self.covariate_cols]
            if unknown:
                raise ValueError(f"known_covariates {unknown} are not among covariate_cols {list(self.covariate_cols)}")
        return self

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.sql_url is not None and self.sql_query is None:
            raise ValueError("sql_url needs sql_query")
        if self.sql_query is not None and self.path is not None:
            raise ValueError("give either a file path or a SQL source, not both")
        if self.sql_url is not None and _url_password(self.sql_url):
            # Configs are logged to MLflow (params, config.json) and shown as Prefect
            # parameters: a password in one would be in all of them.
            raise ValueError(f"sql_url carries a password: put the URL in ${SQL_URL_ENV} (the environment) "
                             "and leave sql_url out; a config is never a place for secrets")
        return self

    @property
    def uses_sql(self) -> bool:
        return self.sql_query is not None

    def resolved_sql_url(self) -> str:
        """The SQL source's URL: ``sql_url``, else ``$BAYES_PIPELINE_SQL_URL``.

        Raises:
            ConfigError: neither is set.
        """
        url = self.sql_url or os.environ.get(SQL_URL_ENV)
        if not url:
            raise ConfigError(f"data.sql_query is set but there is no SQL URL: set ${SQL_URL_ENV} (or data.sql_url "
                              "for a URL without a password)")
        return url

    def resolved_path(self) -> Path:
        return self.path if self.path is not None else bundled_dataset_path()

    def source_name(self) -> str:
        """Where the data come from, for messages and MLflow: never a password."""
        if self.uses_sql:
            try:
                where = redacted_url(self.resolved_sql_url())
            except ConfigError:
                where = f"${SQL_URL_ENV} (unset)"
            return f"SQL query on {where}"
        return str(self.resolved_path())


class WindowConfig(_Strict):
    """Time-based split and window sizes, in days."""

    context_length: int = Field(28, ge=2, le=366)
    validation_days: int = Field(28, ge=1)
    test_days: int = Field(28, ge=1)
    min_train_days: int = Field(14, ge=2, description="shortest training part a series may have")


class ModelConfig(_Strict):
    """Architecture of the Bayesian LSTM (see pipeline_lib/model/network.py)."""

    lstm_units: tuple[int, ...] = (64, 32)
    prior: Literal["normal", "student_t", "scale_mixture"] = Field(
        "normal", description="weight prior; guidance in docs/modelling.md")
    prior_scale: float = Field(1.0, gt=0, description="normal / student_t: scale of the prior")
    prior_df: float = Field(5.0, gt=0, description="student_t: degrees of freedom (small = heavier tails)")
    mixture_weight: float = Field(0.5, gt=0, lt=1, description="scale_mixture: weight of the wide component")
    mixture_scales: tuple[float, float] = Field((1.0, 0.0025), description="scale_mixture: (wide, narrow) stds")
    posterior_init_std: float = Field(1e-3, gt=0, description="initial posterior std of every weight")
    head: Literal["auto", "normal", "student_t", "count", "count_mixture", "quantile"] = Field(
        "auto", description="predictive distribution: auto (count for whole-number demand with at least "
        "5% zero days, else normal; the choice is logged) | normal | student_t (heavy tails) | "
        "count (zero-inflated negative binomial, integer forecasts) | count_mixture (zero-inflated mixture of "
        "two negative binomials: everyday sales and bulk orders) | quantile (pinball loss)")
    quantile_levels: tuple[float, ...] = Field((0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975),
                                               description="quantile head: the levels it learns")
    min_scale: float = Field(1e-3, gt=0, description="floor of the predicted std (scaled units)")
    attention_units: int = Field(0, ge=0, description="> 0: a Bayesian attention block of this width over "
                                 "the last LSTM layer's sequence outputs; 0 = none")
    level_days: int = Field(7, ge=0, description="centre each window on the mean of its last N observed "
                            "days (forecasts follow level shifts); 0 = off")
    trend_days: int | None = Field(
        None, ge=0, le=366, description="> 0 (with level_days): also centre each window on a local linear trend, "
        "the least-squares slope of its last N observed days, so one-day forecasts and sample paths extrapolate it "
        "(Holt's linear method); a window where one step fits significantly better than the line (a level shift) "
        "keeps the level alone. None (default) = auto: the whole window (context_length) with the Normal head, off "
        "with the others (intermittent counts, whose slopes are mostly noise), logged. 0 = off (docs/modelling.md)")
    weekday_profile: bool = Field(True, description="take each series' own weekday shape (fitted with its "
                                  "scaler) out of the lags and the target, ES-RNN style; the network "
                                  "learns what is left")
    yearly_features: bool = Field(False, description="two more inputs: sine and cosine of the target day's "
                                  "phase in the year (the season, known in advance)")

    @field_validator("quantile_levels")
    @classmethod
    def _increasing_levels(cls, levels: tuple[float, ...]) -> tuple[float, ...]:
        if len(levels) < 2 or list(levels) != sorted(set(levels)) or not all(0 < q < 1 for q in levels):
            raise ValueError("quantile levels must be at least two, strictly increasing, in (0, 1)")
        return levels

    @field_validator("mixture_scales")
    @classmethod
    def _positive_scales(cls, scales: tuple[float, float]) -> tuple[float, float]:
        if min(scales) <= 0:
            raise ValueError("mixture scales must be positive")
        return scales


class TrainConfig(_Strict):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    learning_rate_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: decay per epoch from learning_rate to learning_rate * "
        "final_learning_rate_factor over `epochs` (the refit, which runs fewer epochs, follows the same curve)")
    final_learning_rate_factor: float = Field(0.1, gt=0, le=1, description="cosine: the last epoch's share "
                                              "of learning_rate")
    clip_norm: float = Field(5.0, gt=0)
    weight_noise: Literal["shared", "flipout"] = Field(
        "shared", description="the training pass's weight noise: shared = one draw per mini-batch; flipout = "
        "a perturbation decorrelated per example (lower-variance gradients, a slower unrolled pass)")
    patience: int = Field(5, ge=1, description="epochs without validation-NLL improvement")
    min_delta: float = Field(0.005, ge=0, description="nats per validation window: an epoch counts as an "
                             "improvement (kept as the best and resetting patience) only if it lowers the best "
                             "validation NLL by more than this; 0 = any decrease. A difference of NLLs does not "
                             "depend on the target's units or transform, so one threshold fits every dataset")
    kl_weight: float = Field(1.0, ge=0)
    kl_annealing: Literal["none", "linear", "step"] = "linear"
    kl_ramp_epochs: int = Field(10, ge=1)
    validation_samples: int = Field(8, ge=1)
    windows_per_epoch: int | None = Field(
        65536, ge=1, description="training windows drawn (without replacement) per epoch, so an epoch costs "
        "the same at 50 or 50,000 series; None or more than there are = every window, in a new order each epoch")
    validation_windows: int | None = Field(
        20000, ge=1, description="early stopping scores a fixed sample of this many validation windows "
        "(drawn once per fit); None = every one")
    refit: bool = Field(True, description="serve a refit on every day (the evaluation fit's epoch count; "
                        "its holdout metrics are the version's) instead of the evaluation fit, whose "
                        "weights never see the last validation_days + test_days")
    seed: int = 42
    distribute: Literal["none", "mirrored", "multi_worker"] = Field(
        "none", description="tf.distribute strategy: none = one device; mirrored = MirroredStrategy "
        "(synchronous data parallelism over the GPUs of one host); multi_worker = "
        "MultiWorkerMirroredStrategy across hosts (TF_CONFIG names the workers; docs/deployment.md)")
    devices: tuple[str, ...] | None = Field(None, description="mirrored: devices to use, e.g. "
                                            "['/gpu:0', '/gpu:1']; None = every GPU (else the CPU)")
    mixed_precision: Literal["off", "auto", "bfloat16", "float16"] = Field(
        "off", description="compute dtype of the LSTM layers' training pass; the variational parameters, "
        "their sampling and the KL term stay float32, as do prediction and serving. auto = float16 with "
        "loss scaling on a GPU, bfloat16 on a CPU with AVX512_BF16 or AMX, else off. Off by default: on "
        "the 2-core AVX512_BF16 CPU of benchmarks/RESULTS.md bfloat16 was not faster (GPU not measured)")


class EvaluationConfig(_Strict):
    num_samples: int = Field(100, ge=2, description="Monte Carlo samples per forecast")
    coverage_levels: tuple[float, ...] = (0.8, 0.9, 0.95)
    nominal_level: float = Field(0.95, gt=0, lt=1)
    coverage_tolerance: float = Field(0.02, ge=0, lt=1, description="promotion gate: |PICP - nominal| bound")
    fan_chart_series: int = Field(4, ge=1)
    backtest_folds: int = Field(1, ge=1, description="training flow: extra rolling-origin folds of "
                                "test_days each (one model per fold; 1 = the test split only)")
    recalibrate: bool = Field(True, description="fit a PIT recalibration on the validation days "
                              "and serve calibrated quantiles (raw metrics are logged too)")
    recalibrate_paths: bool = Field(True, description="also recalibrate sample paths by days ahead (2-7, "
                                    "8-14, 15+), fitted on paths over unseen days from one origin")
    recalibrate_by_series: bool = Field(False, description="give each scored series its own recalibration "
                                        "from its own calibration days' PITs, shrunk towards the global map "
                                        "(28 days of the global map's weight; pipeline_lib/evaluation/"
                                        "calibration.py); other series keep the global map")
    pool_with_ets: bool = Field(True, description="serve a linear pool of the network's forecast with "
                                "per-series AutoETS (statsforecast), its weight (0-1 in steps of 0.05) chosen on "
                                "the days the recalibration is fitted on, kept only if its gain holds across "
                                "series (2 standard errors), else 0: the network alone "
                                "(pipeline_lib/model/statistical.py)")
    recalibrate_tails: bool = Field(False, description="let the recalibration reach beyond each forecast's "
                                    "extreme samples: exponential tails fitted to its outer 10% of samples "
                                    "(pipeline_lib/evaluation/calibration.py), so intervals and high-service "
                                    "orders can be wider than the raw samples' range when the calibration "
                                    "days say so")
    max_series: int | None = Field(
        500, ge=1, description="series scored by a training run's Monte Carlo evaluation, recalibration, "
        "promotion gate and inventory backtest: a larger catalogue is scored on a fixed sample of this many "
        "(Panel.sample_series), so those stages cost the same at any size; training uses every series. "
        "None = every series")
    seed: int = 7

    @field_validator("coverage_levels")
    @classmethod
    def _levels_in_unit_interval(cls, levels: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0 < level < 1 for level in levels):
            raise ValueError("coverage levels must lie strictly between 0 and 1")
        return levels


class MonitoringConfig(_Strict):
    """Daily forecasting and coverage monitoring (see pipeline_lib/monitoring)."""

    pic_threshold: float = Field(0.90, gt=0, le=1, description="daily PIC below this is a breach")
    breach_rule: Literal["threshold", "binomial", "protection"] = Field(
        "threshold", description="threshold = PIC below pic_threshold (the source's rule); binomial = the day's "
        "covered count is significantly low for a calibrated interval (one-sided binomial test at breach_alpha), "
        "which scales with the number of series; protection = fewer than pic_threshold of the series' demand "
        "over lead time + review period stayed within the order-up-to level set at its start (the orders' "
        "coverage; needs serving.horizon >= that period)")
    breach_alpha: float = Field(0.01, gt=0, lt=0.5, description="binomial breach rule: significance level")
    consecutive_days: int = Field(3, ge=1, description="breach days in a row that trigger one retrain")
    lookback_days: int = Field(7, ge=0, description="earlier days re-checked on every run: missed days "
                               "are backfilled, days with late actuals re-evaluated")
    segment_edges: tuple[float, ...] = Field((10.0, 50.0), description="forecast-mean edges (units/day) "
                                             "of the slow / medium / fast segments")
    retrain: Literal["auto", "subflow", "deployment", "off"] = Field(
        "auto", description="auto = the training deployment when a Prefect server has one, else a subflow")
    training_deployment: str = "training_pipeline/training-pipeline"
    retrain_claim_timeout_hours: float = Field(
        6.0, gt=0, description="a retrain claimed this long ago and never finished (its process died) "
        "is started again by the next monitoring run; keep it above your longest training")
    retrain_max_attempts: int = Field(3, ge=1, description="attempts at a streak's retrain: a failed one "
                                      "(or a deployment run that failed) is retried by later monitoring runs")
    retrain_retry_after_hours: float = Field(20.0, gt=0, description="back-off before retrying a failed retrain: "
                                             "this long after the first failure, twice that after the second")
    first_response: Literal["retrain", "online_update"] = Field(
        "retrain", description="response to a breach streak: retrain, or first an online Bayesian update "
        "of the champion on the last online_update_days (seconds), retraining only if the streak goes on")
    online_update_days: int = Field(7, ge=2, description="days of actuals an online update learns from "
                                    "(the last one is first held out to check the update)")
    failing_crps_tolerance: float = Field(0.05, ge=0, description="gate of a breach-triggered retrain: "
                                          "challenger CRPS may exceed the failing champion's by this share")
    forecast_retention_days: int | None = Field(
        400, ge=1, description="the daily monitoring deletes stored forecasts issued more than this many days "
        "before the monitored day (a catalogue of 30,490 series adds 78 M rows a year); None keeps them all")
    drift_threshold: float = Field(0.1, gt=0, description="Evidently normed Wasserstein distance that counts as drift")
    drift_html: bool = Field(True, description="also export each day's drift report as a standalone HTML file "
                             "(3.7 MB a day on the bundled data, attached to the MLflow monitoring run); the "
                             "snapshot in the Evidently workspace (124 KB) is always written. The deployed config "
                             "turns it off")
    drift_reference_days: int = Field(56, ge=7, description="last days of the training data used as reference")
    seed: int = 11

    @field_validator("segment_edges")
    @classmethod
    def _increasing(cls, edges: tuple[float, ...]) -> tuple[float, ...]:
        if list(edges) != sorted(set(edges)):
            raise ValueError("segment edges must be strictly increasing")
        return edges


class ServingConfig(_Strict):
    """What a served forecast is made of: the daily forecast, ``bayes-pipeline forecast`` and
    the registered MLflow model (which stores it as its default prediction parameters)."""

    num_samples: int = Field(100, ge=2, description="joint sample paths per served forecast: its quantiles "
                             "and order levels")
    horizon: int = Field(7, ge=1, description="days the daily forecast covers")
    seed: int = Field(11, description="daily forecast: chunk k of the series uses seed + k, so any runner "
                      "gives the same numbers")
    quantized_posterior: bool = Field(
        False, description="serve (and judge) the posterior with every mean and scale stored in 8 bits, "
        "per output channel: a model file about 4x smaller, dequantized at load. Off by default: "
        "benchmarks/RESULTS.md records its CRPS change")


class InventoryConfig(_Strict):
    """Order-up-to levels from the predictive distribution (see pipeline_lib/inventory)."""

    service_level: float = Field(0.95, gt=0, lt=1, description="target cycle service level "
                                 "(probability of no stockout before the next order arrives)")
    lead_time_days: int = Field(2, ge=0, description="days from placing an order to having the goods")
    review_period_days: int = Field(1, ge=1, description="days between orders")
    in_training_run: bool = Field(True, description="training flow: backtest the three order policies "
                                  "over the test split and log them with the run")

    @property
    def protection_days(self) -> int:
        return self.lead_time_days + self.review_period_days


class RuntimeConfig(_Strict):
    """Where the work runs: how forecasting is split over series and which task runner maps it."""

    task_runner: Literal["thread", "dask"] = Field(
        "thread", description="thread = Prefect's thread pool in-process; dask = prefect-dask's DaskTaskRunner")
    dask_address: str | None = Field(None, description="scheduler address of an existing Dask cluster "
                                     "(env BAYES_PIPELINE_DASK_ADDRESS); None = a LocalCluster")
    dask_workers: int = Field(2, ge=1, description="worker processes of the LocalCluster")
    chunk_series: int = Field(512, ge=1, description="series per forecasting task (bounds memory; "
                              "chunk k uses seed serving.seed + k, so any runner gives the same numbers)")


class RegistryConfig(_Strict):
    experiment_name: str = "bayes-demand-forecasting"
    model_name: str = "bayes-lstm-demand"


class PipelineConfig(_Strict):
    """Everything a run needs. Passed as the single parameter of every flow."""

    workdir: Path = Field(default_factory=default_workdir)
    data: DataConfig = DataConfig()
    window: WindowConfig = WindowConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig = RegistryConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    serving: ServingConfig = ServingConfig()
    inventory: InventoryConfig = InventoryConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, raw):
        """Fields that moved to another section keep working, with a warning saying where."""
        if isinstance(raw, dict) and isinstance(raw.get("monitoring"), dict) and "horizon" in raw["monitoring"]:
            raw = {**raw, "monitoring": dict(raw["monitoring"])}
            horizon = raw["monitoring"].pop("horizon")
            serving = dict(raw.get("serving") or {})
            serving.setdefault("horizon", horizon)
            raw["serving"] = serving
            log.warning("config: monitoring.horizon moved to serving.horizon (read as serving.horizon: %s)", horizon)
        return raw

    @model_validator(mode="after")
    def _count_head_needs_counts(self) -> PipelineConfig:
        if self.model.head in ("count", "count_mixture") and not self.data.non_negative:
            raise ValueError(f"model.head {self.model.head!r} needs non-negative demand (data.non_negative: true)")
        return self

    @model_validator(mode="after")
    def _protection_rule_has_order_levels(self) -> PipelineConfig:
        period = self.inventory.protection_days
        if self.monitoring.breach_rule == "protection" and self.serving.horizon < period:
            raise ValueError(f"monitoring.breach_rule 'protection' needs order levels: serving.horizon "
                             f"{self.serving.horizon} must cover lead time + review period ({period} days)")
        return self

    @model_validator(mode="after")
    def _retention_keeps_what_monitoring_reads(self) -> PipelineConfig:
        # A run re-evaluates lookback_days earlier days, each read from forecasts issued up
        # to `horizon` days before it: those must still be stored.
        needed = self.monitoring.lookback_days + self.serving.horizon + 1
        retention = self.monitoring.forecast_retention_days
        if retention is not None and retention < needed:
            raise ValueError(f"monitoring.forecast_retention_days {retention} would delete forecasts the "
                             f"monitoring still reads: keep at least lookback_days + serving.horizon + 1 = {needed}")
        return self

    def resolved_model(self, targets_are_counts: bool, zero_share: float) -> ModelConfig:
        """``model`` with ``head: auto`` resolved: the count head for intermittent integer
        demand (whole units and at least ``AUTO_COUNT_MIN_ZERO_SHARE`` of the days at zero:
        slow movers, closed days), the Normal head in log space otherwise (smooth demand,
        where a count likelihood's discreteness buys nothing and its dispersion is hard to
        learn); and ``trend_days: None`` (auto, the default) resolved: a trend over the whole
        window with the Normal head (smooth demand: 28-day paths 18% better on the synthetic
        smooth set), none with the others (synthetic retail: 16% worse). See benchmarks/RESULTS.md."""
        head = self.model.head
        if head == "auto":
            counts = targets_are_counts and self.data.non_negative and zero_share >= AUTO_COUNT_MIN_ZERO_SHARE
            head = "count" if counts else "normal"
        trend_days = self.model.trend_days
        if trend_days is None:
            trend_days = self.window.context_length if head == "normal" and self.model.level_days > 0 else 0
        return self.model.model_copy(update={"head": head, "trend_days": trend_days})

    # Derived locations. All state of a run lives under ``workdir``.
    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(self.workdir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return (self.workdir / "mlartifacts").resolve()

    @property
    def store_url(self) -> str:
        return os.environ.get("BAYES_PIPELINE_STORE_URL") or f"sqlite:///{(self.workdir / 'store.db').resolve()}"

    @property
    def dask_address(self) -> str | None:
        return os.environ.get("BAYES_PIPELINE_DASK_ADDRESS") or self.runtime.dask_address

    @property
    def reports_dir(self) -> Path:
        return self.workdir / "reports"

    @property
    def evidently_workspace(self) -> Path:
        """The Evidently workspace of the daily drift snapshots (``evidently ui --workspace``)."""
        return Path(os.environ.get("BAYES_PIPELINE_EVIDENTLY_WORKSPACE") or self.workdir / "evidently")

    def updated(self, **sections: dict) -> PipelineConfig:
        """A copy with some fields of some sections replaced, validated again."""
        merged = self.model_dump()
        for section, values in sections.items():
            if isinstance(merged.get(section), dict):
                merged[section].update({k: v for k, v in values.items() if v is not None})
            elif values is not None:
                merged[section] = values
        return parse_config(merged)


def parse_config(raw: dict) -> PipelineConfig:
    """Validate a plain dict, turning pydantic's errors into one readable ``ConfigError``."""
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def load_config(path: Path | None) -> PipelineConfig:
    """Read a YAML/JSON config file; ``None`` gives the defaults."""
    if path is None:
        return PipelineConfig()
    if not Path(path).is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config sections")
    try:
        return parse_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def deployed_config() -> PipelineConfig:
    """The config of a flow run started without one (a scheduled deployment): the YAML file
    named by ``$BAYES_PIPELINE_CONFIG``, else the defaults. Read when the run starts."""
    path = os.environ.get(CONFIG_ENV)
    return load_config(Path(path)) if path else PipelineConfig()
