"""``bayes-pipeline``: train, forecast and backtest from the command line.

About 300 lines, most of them the option declarations Typer reads the help from.

An entry point like the Prefect flows beside it: each command checks its input, shows
progress, and calls one function of the flows or of ``pipeline_lib``. User errors (bad
data, bad config, missing model) print one line to stderr and exit with code 2; nothing is
written when the input is rejected.
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import inspect
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import NamedTuple

import typer

from pipeline_lib.config import WORKDIR_ENV, PipelineConfig, default_workdir, load_config
from pipeline_lib.data.validate import load_panel, read_panel
from pipeline_lib.errors import PipelineError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Probabilistic demand forecasting with a Bayesian LSTM.")

USER_ERROR_EXIT = 2
VERBOSE_ENV = "BAYES_PIPELINE_VERBOSE"
# TensorFlow's native log lines (absl-formatted I/W/E lines: oneDNN, CUDA probing, CPU
# features): written by C++ straight to file descriptor 2, so only a redirect hides them.
NATIVE_LOG_LINE = re.compile(r"^(?:[IWE]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl"
                                   r"|To enable the following instructions)")
# The local Prefect API server of a run without PREFECT_API_URL; Prefect waits 20 s for it
# by default, which a machine busy with training can miss.
EPHEMERAL_STARTUP_SECONDS = "120"


@app.callback()
def _global_options(verbose: bool = typer.Option(False, "--verbose", "-v", help="also show TensorFlow's native "
                                                 "log lines")) -> None:
    """Read by :func:`main` before the command starts (the filter must be in place before
    TensorFlow loads); declared here for ``--help``."""


def _filter_native_stderr() -> None:
    """From here on Python keeps writing to the terminal, while what native code (TensorFlow's
    C++ logging) writes to file descriptor 2 passes through a filter that drops its
    absl-formatted lines (oneDNN, CUDA probing, CPU features). Off with ``--verbose``."""
    terminal = os.dup(2)
    sys.stderr.flush()
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, errors="backslashreplace")
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as native, os.fdopen(terminal, "wb", buffering=0) as out:
            for line in native:
                if not NATIVE_LOG_LINE.match(line.decode(errors="replace")):
                    out.write(line)

    reader = threading.Thread(target=forward, name="native-stderr-filter", daemon=True)
    reader.start()

    def close() -> None:  # EOF for the reader (fd 2 was the last write end), then drain it
        os.dup2(sys.stderr.fileno(), 2)
        reader.join(timeout=2)

    atexit.register(close)


class SourceOptions(NamedTuple):
    """The options every command takes: where the data are and how to read them, the config
    file and the state directory."""

    data: Path | None
    id_col: str | None
    time_col: str | None
    target_col: str | None
    config: Path | None
    workdir: Path | None


def _option(name: str, annotation, flag: str, help: str) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(None, flag, help=help))


SOURCE_PARAMETERS = (
    _option("data", Path | None, "--data", "CSV, CSV.gz or Parquet file, or a directory of Parquet files, in "
            "long format (default: bundled data)"),
    _option("id_col", str | None, "--id-col", "series id column (default: series_id)"),
    _option("time_col", str | None, "--time-col", "date column (default: date)"),
    _option("target_col", str | None, "--target-col", "target column (default: units)"),
    _option("config", Path | None, "--config", "YAML config file (see configs/default.yaml)"),
    _option("workdir", Path | None, "--workdir", f"state directory (default: ${WORKDIR_ENV} or .bayes-pipeline)"),
)


def _with_source_options(command):
    """Give ``command`` the options of :class:`SourceOptions`, passed to it as one ``source``
    argument (Typer reads the options from the signature written here)."""
    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.name != "source"]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        source = SourceOptions(**{name: kwargs.pop(name) for name in SourceOptions._fields})
        return command(*args, source=source, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*own, *SOURCE_PARAMETERS])
    return wrapper


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _build_config(source: SourceOptions, **window) -> PipelineConfig:
    config = load_config(source.config)
    workdir = Path(source.workdir) if source.workdir else (config.workdir if source.config else default_workdir())
    return config.updated(
        workdir=workdir,
        data={"path": source.data, "id_col": source.id_col, "time_col": source.time_col,
              "target_col": source.target_col},
        window=window,
    )


def _prepare_environment(config: PipelineConfig) -> None:
    """Keep Prefect's local state with the rest of the run's state (set before importing prefect)."""
    prefect_home = (config.workdir / "prefect").resolve()
    prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
    os.environ.setdefault("PREFECT_HOME", str(prefect_home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_SECONDS)


def _fail_cleanly(func):
    """Turn PipelineError, and a local Prefect server that does not start, into one line on
    stderr and exit code 2."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            _say(f"error: {exc}")
            raise typer.Exit(USER_ERROR_EXIT) from None
        except RuntimeError as exc:
            if "ephemeral Prefect API server" not in str(exc):
                raise
            seconds = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_SECONDS)
            _say(f"error: the local Prefect API server did not start within {seconds} s (is the machine busy?); "
                 "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or run `prefect server start` and "
                 "set PREFECT_API_URL")
            raise typer.Exit(USER_ERROR_EXIT) from None

    return wrapper


@app.command()
@_fail_cleanly
@_with_source_options
def train(
    source: SourceOptions,
    epochs: int | None = typer.Option(None, "--epochs", help="override train.epochs"),
) -> None:
    """Run the training flow: ingest, validate, train, evaluate, register."""
    cfg = _build_config(source)
    if epochs is not None:
        cfg = cfg.updated(train={"epochs": epochs})
    _say(f"[1/3] validating {cfg.data.source_name()}")
    # Reject bad input before TensorFlow loads and before any run or model exists.
    panel = load_panel(cfg.data, cfg.window)
    _say(f"      {len(panel.series)} series, {sum(len(s) for s in panel.series)} series-days")
    del panel  # the flow reads its own copy: a catalogue's panel is gigabytes, not to be held twice
    _say(f"[2/3] training flow (state in {cfg.workdir})")
    _prepare_environment(cfg)
    from flows.training import training_pipeline

    outcome = training_pipeline(cfg)
    _say("[3/3] done")
    if outcome is None:
        typer.echo("a worker of a multi-worker training: trained its share; the chief (worker 0) registers")
        return
    typer.echo(f"run_id: {outcome.run_id}")
    typer.echo(f"model: {outcome.model_name} version {outcome.version} ({', '.join(outcome.aliases)})")
    typer.echo(f"test PICP95 {outcome.metrics['picp_95']:.3f}  PICP90 {outcome.metrics['picp_90']:.3f}  "
               f"CRPS(scaled) {outcome.metrics['crps_scaled']:.3f}  MASE {outcome.metrics['mase']:.3f}")
    typer.echo(f"promotion gate: {outcome.gate}")
    typer.echo(f"MLflow: {outcome.run_url}")


@app.command()
@_fail_cleanly
@_with_source_options
def forecast(
    source: SourceOptions,
    horizon: int = typer.Option(..., "--horizon", min=1, help="days to forecast after each series' last day"),
    out: Path = typer.Option(..., "--out", help="CSV file to write"),
    model: str | None = typer.Option(None, "--model", help="model URI (default: models:/<name>@champion)"),
    num_samples: int | None = typer.Option(None, "--num-samples", help="Monte Carlo sample paths"),
    orders: bool = typer.Option(True, "--orders/--no-orders", help="add order_up_to and safety_stock columns "
                                "(inventory.service_level, lead time + review period from the config)"),
) -> None:
    """Write forecasts for the next H days of every series (output contract CSV).

    With --orders (default), ``order_up_to`` is the level to order up to on that day (units
    on hand + on order) for the configured service level, from the sum of each sample path
    over lead time + review period; ``safety_stock`` is its excess over the mean demand.
    Days too close to the horizon's end to cover that period get empty cells."""
    cfg = _build_config(source)
    panel = read_panel(cfg.data)
    from pipeline_lib.forecasting.batch import forecast_registered

    frame = forecast_registered(cfg, panel, horizon, model, num_samples, orders, say=_say)
    _write_csv(frame, out)
    typer.echo(f"wrote {len(frame)} rows to {out}")


@app.command()
@_fail_cleanly
@_with_source_options
def backtest(
    source: SourceOptions,
    test_days: int = typer.Option(..., "--test-days", min=1, help="last N days of each series are the test period"),
    horizon: int = typer.Option(1, "--horizon", min=1, help="1 = rolling one-day-ahead; N = all days from one origin"),
    out: Path = typer.Option(..., "--out", help="CSV file to write"),
    folds: int = typer.Option(1, "--folds", min=1, help="rolling-origin folds of N test days, one model each"),
) -> None:
    """Train once before the last N days of each series, then forecast those days
    (with --folds K: K consecutive N-day windows, each with its own model)."""
    cfg = _build_config(source, test_days=test_days)
    if horizon > test_days:
        raise typer.BadParameter(f"--horizon {horizon} exceeds --test-days {test_days}")
    _say(f"[1/2] validating {cfg.data.source_name()}")
    panel = load_panel(cfg.data, cfg.window)
    from pipeline_lib import stages

    _say(f"[2/2] {folds} fold(s): train on {len(panel.series)} series before each test window, "
         f"forecast its {test_days} days with horizon {horizon}")
    frame, scores = stages.rolling_origin_backtest(cfg, panel, folds, horizon)
    _write_csv(frame, out)
    for score in scores:
        _say(f"fold {score['fold']}: PICP80 {score['picp_80']:.3f}  PICP90 {score['picp_90']:.3f}  "
             f"PICP95 {score['picp_95']:.3f}  CRPS(scaled) {score['crps_scaled']:.3f}  MASE {score['mase']:.3f}")
    typer.echo(f"wrote {len(frame)} rows to {out}")


@app.command()
@_fail_cleanly
@_with_source_options
def compare(
    source: SourceOptions,
    variants: str | None = typer.Option(None, "--variants", help="comma-separated; default: all of "
                                        "bayes_normal, head_student_t, head_count, head_quantile, prior_student_t, "
                                        "prior_scale_mixture, attention, distilled, mcmc_output_layer"),
) -> None:
    """Backtest the toolbox's variants (heads, priors, attention, distillation, MCMC) on the
    same split; print the table and write comparison.csv / comparison.md to the workdir."""
    from pipeline_lib.compare import ALL_VARIANTS, check_variants
    from pipeline_lib.compare import compare_to_files as run_comparison

    names = check_variants([v.strip() for v in variants.split(",") if v.strip()] if variants else list(ALL_VARIANTS))
    cfg = _build_config(source)
    _say(f"validating {cfg.data.source_name()}")
    panel = load_panel(cfg.data, cfg.window)
    _say(f"comparing {len(names)} variant(s) on {len(panel.series)} series, {cfg.window.test_days} test days")
    csv_path, md_path = run_comparison(cfg, panel, names, say=_say)
    typer.echo(md_path.read_text())
    typer.echo(f"wrote {csv_path} and {md_path}")


@app.command()
@_fail_cleanly
@_with_source_options
def replay(
    source: SourceOptions,
    days: int = typer.Option(21, "--days", min=1, help="days to replay"),
    start: str | None = typer.Option(None, "--start", help="first replayed day, YYYY-MM-DD "
                                        "(default: the last DAYS days of the data)"),
    shift_day: str | None = typer.Option(None, "--shift-day", help="plant a demand shift from this day "
                                            "(default with --shift-factor: the 8th replayed day)"),
    shift_factor: float = typer.Option(1.0, "--shift-factor", help="multiply actuals by F from --shift-day on"),
    first_response: str | None = typer.Option(None, "--first-response",
                                              help="retrain | online_update: the response to a breach streak "
                                              "(default: monitoring.first_response of the config)"),
) -> None:
    """Walk the data day by day: forecast, then monitor with that day's actuals (alerts,
    retrains), optionally with a planted demand shift; print a timeline and chart it."""
    from pipeline_lib.monitoring.replay import replay_spec

    cfg = _build_config(source)
    if first_response is not None:
        cfg = cfg.updated(monitoring={"first_response": first_response})
    _say(f"[1/3] validating {cfg.data.source_name()}")
    panel = load_panel(cfg.data, cfg.window)
    spec = replay_spec(min(s.dates[0] for s in panel.series).date(), panel.last_day.date(),
                       panel.source, days, start, shift_day, shift_factor)
    shift_text = f", demand x{shift_factor:g} from {spec.shift_day}" if spec.shift_day else ""
    _say(f"[2/3] replaying {spec.start} .. {spec.end}{shift_text} (state in {cfg.workdir})")
    _prepare_environment(cfg)
    from flows.replay import replay_flow

    result = replay_flow(cfg, spec, progress=_say)
    _say("[3/3] done")
    typer.echo(result.text)
    typer.echo(f"chart: {result.chart}")
    typer.echo(f"store: {cfg.store_url}   reports: {cfg.reports_dir}")


@app.command()
@_fail_cleanly
@_with_source_options
def serve(
    source: SourceOptions,
) -> None:
    """Serve the training, daily-forecast (06:00 UTC) and daily-monitoring (07:00 UTC)
    deployments against a running Prefect server (start it with `prefect server start`)."""
    cfg = _build_config(source)
    if not os.environ.get("PREFECT_API_URL"):
        _say("error: no Prefect server configured: start one with `prefect server start` and export "
             "PREFECT_API_URL=http://127.0.0.1:4200/api (see README, 'Schedules without docker')")
        raise typer.Exit(USER_ERROR_EXIT)
    from flows.serve import DEPLOYMENTS, serve_all

    _say(f"serving {', '.join(DEPLOYMENTS)} on {os.environ['PREFECT_API_URL']} (Ctrl-C to stop)")
    serve_all(cfg)


@app.command("inventory-backtest")
@_fail_cleanly
@_with_source_options
def inventory_backtest(
    source: SourceOptions,
    service_level: float | None = typer.Option(None, "--service-level", min=0.01, max=0.999,
                                               help="target cycle service level (default 0.95)"),
    lead_time: int | None = typer.Option(None, "--lead-time", min=0, help="lead time in days (default 2)"),
    review_period: int | None = typer.Option(None, "--review-period", min=1, help="days between orders (default 1)"),
    test_days: int | None = typer.Option(None, "--test-days", min=1, help="simulated days at the end (default 28)"),
    days_before_end: int = typer.Option(0, "--days-before-end", min=0,
                                        help="end the simulated days this many days before the data's last "
                                             "day (default 0)"),
    windows: int = typer.Option(1, "--windows", min=1, help="rolling test windows, each the test days before "
                                "the last (default 1); prints each rule's stock over them, mean and spread"),
) -> None:
    """Train before the test period, then simulate ordering through it with (a) our sample
    paths, (b) point forecast + safety factor, (c) seasonal naive; log to MLflow."""
    cfg = _build_config(source, test_days=test_days)
    cfg = cfg.updated(inventory={"service_level": service_level, "lead_time_days": lead_time,
                                 "review_period_days": review_period})
    if cfg.inventory.protection_days > 7:
        raise typer.BadParameter("lead time + review period must be at most 7 days (the seasonal-naive rule "
                                 "needs last week's demand for every protected day)")
    _say(f"[1/3] validating {cfg.data.source_name()}")
    panel = load_panel(cfg.data, cfg.window)
    from pipeline_lib.inventory.run import rolling_summary, train_and_simulate

    steps = iter(("[2/3]", "[3/3]") if windows == 1 else ())  # several windows: each says which it is
    results = train_and_simulate(cfg, panel, say=lambda line: _say(f"{next(steps, '     ')} {line}"),
                                 days_before_end=days_before_end, windows=windows)
    for result in results:
        report = result.report
        typer.echo(f"test days up to {result.last_day}:")
        typer.echo(report.backtest.table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        typer.echo(report.summary())
        typer.echo(f"chart: {report.chart}\ntable: {report.table_path}\nMLflow: {result.run_url}")
    if len(results) > 1:
        typer.echo(rolling_summary(results))


@app.command("simulate")
@_fail_cleanly
@_with_source_options
def simulate_command(
    source: SourceOptions,
    days: int = typer.Option(120, "--days", min=7, help="simulated days at the end of the data"),
    change_after: int = typer.Option(30, "--change-after", min=0, help="days after the start at which the "
                                     "scenario's change is planted"),
    scenarios: str = typer.Option("none,shift,shift_20pct,trend,promotion", "--scenarios",
                                  help="comma-separated: none, shift, shift_20pct, trend, promotion"),
    policies: str = typer.Option("never,rule,online_first,weekly,binomial,rule_rearmed,protection,"
                                 "protection_online_first",
                                 "--policies",
                                 help="comma-separated maintenance policies"),
    retrain_epochs: int = typer.Option(3, "--retrain-epochs", min=1, help="every retrain's budget: epochs of a "
                                       "warm start from the current model on every day so far"),
    retrain_budget: str = typer.Option("warm", "--retrain-budget", help="every retrain: 'warm' (--retrain-epochs "
                                       "from the current model) or 'full' (a training run's whole protocol)"),
    out: Path | None = typer.Option(None, "--out", help="directory for simulation.md/.json and the charts "
                                    "(default: <workdir>/reports/simulation)"),
) -> None:
    """Closed-loop simulation of what monitoring is worth: forecast, order, sell, monitor and
    maintain the model day by day, for each scenario and maintenance policy on the same days."""
    cfg = _build_config(source)
    _say(f"[1/2] validating {cfg.data.source_name()}")
    panel = load_panel(cfg.data, cfg.window)
    from pipeline_lib.monitoring.simulation import run_matrix

    last = min(s.dates[-1] for s in panel.series).date()
    start = last - dt.timedelta(days=days - 1)
    _say(f"[2/2] simulating {start} .. {last} ({len(panel.series)} series)")
    results = run_matrix(cfg, panel, start, days, change_after, _split(scenarios), _split(policies), retrain_epochs,
                         out or cfg.reports_dir / "simulation", say=_say, retrain_budget=retrain_budget)
    report = (out or cfg.reports_dir / "simulation") / "simulation.md"
    typer.echo(report.read_text())
    typer.echo(f"report: {report}\ncharts: {', '.join(str(r.chart) for r in results)}")


def _split(values: str) -> list[str]:
    return [v.strip() for v in values.split(",") if v.strip()]


def _write_csv(frame, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    frame.assign(date=frame["date"].dt.strftime("%Y-%m-%d")).to_csv(tmp, index=False)
    tmp.replace(out)  # never leave a half-written file behind


def main() -> None:  # pragma: no cover - console entry point
    if not (set(sys.argv[1:2]) & {"--verbose", "-v"} or os.environ.get(VERBOSE_ENV)):
        _filter_native_stderr()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # The library's INFO lines are the run's choices (head, trend, windows, refit): the user's to see.
    logging.getLogger("pipeline_lib").setLevel(logging.INFO)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
