"""Forecast quality on rolling-origin one-day-ahead backtests, our model and its peers.

    python benchmarks/quality.py [--dataset bundled|retail|smooth|PATH] [--folds 3] [--seeds 42,43,44]
                                 [--models naive,ets,arima,oracle,lstm] [--multi-day] [--json] [--out FILE]
                                 [--save-samples DIR]

Datasets: ``bundled`` (the 50 Online Retail II SKUs), ``retail`` and ``smooth`` (synthetic
series with a known generating process, :mod:`pipeline_lib.data.synthetic`; 730 days,
seed 0), or a long-format file (``--id-col --time-col --target-col``).

Protocol (the same days for every model): fold ``f`` cuts ``f * test_days`` days off the end
of every series; its last ``test_days`` (28) are the test period; each test day is forecast
one day ahead from the actuals up to the day before (no refit inside the window). The
Bayesian LSTM is trained once per fold and seed exactly as a training run on the day before
the test period makes the served model (``stages.backtest_model``: evaluation fit, refit
on every day, recalibration); the peers do not depend on the seed.

Models: ``naive`` seasonal naive (period 7) with empirical residual quantiles; ``ets`` /
``arima`` statsforecast AutoETS / AutoARIMA (extra ``bench``); ``oracle`` the true
predictive distribution (synthetic data only: the physical limit); ``lstm`` the served
Bayesian LSTM (``lstm_raw``: before recalibration; ``lstm_8bit``: the same model with its
posterior quantized to 8 bits, ``serving.quantized_posterior``); ``mc_dropout`` an MC-dropout LSTM
(Uber 2017) on the same windows. With ``--combine``: ``lstm+ets_pool`` / ``lstm+ets_vincent``
(and the same with ``arima``), equal-weight combinations of the served LSTM with the peer,
as a 50/50 mixture and as the average of the two quantile functions. With ``--ensemble``:
``lstm_ensemble``, the equal mixture of every seed's served model on the fold (S samples in
all, S/K evenly spaced order statistics of each of the K seeds): what serving a seed
ensemble would give, one run per fold.

Metrics: PICP 80/90/95 (pooled over folds and seeds), the same on days with demand
(``_nonzero``) and judged by the randomised PIT (``_randomised``: the share of PIT values in
the central interval, nominal for a calibrated forecast of whole units, whose inclusive
intervals over-cover even when right), ``crps_scaled`` (2 x mean pinball over the 23
levels, per series divided by its mean absolute seasonal-naive(7) error before the test
window, averaged over series; mean and standard deviation over the fold x seed runs),
``pit_calibration_error`` (randomised PIT, 23 levels, pooled), MASE. With ``--multi-day`` also the LSTM's sample
paths over all 28 test days from one origin (``lstm_28d``) and the peers' forecasts of the
same days from the same origin (``naive_28d``, ``ets_28d``, ``arima_28d``; the oracle's row
is the same for both, since it knows every day's distribution). The run ends with a Markdown
table; ``--json`` adds one JSON object; ``--out`` writes the full result (every run) to a
file, and ``--report FILE`` prints a saved one as Markdown again.
``--save-samples DIR`` keeps every fold's samples (``DIR/fold<f>.npz``) for post-hoc
analysis without training again (``benchmarks/headroom.py``).

``--paired A.json[,A2.json] B.json[,B2.json]`` compares two saved variants run by run: for
each model in both, on the (fold, seed) runs both have, the mean difference A - B of
``crps_scaled`` and its standard error (a paired comparison removes the fold and seed
spread that both variants share, which the unpaired mean +- sd keeps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from pipeline_lib.model.statistical import linear_pool, resample

SHOWN = ("picp_80", "picp_90", "picp_95", "picp_90_nonzero", "pit_calibration_error", "mpiw_90_scaled",
         "crps_scaled", "mase")
POOLED = ("picp_80", "picp_90", "picp_95", "picp_80_nonzero", "picp_90_nonzero", "picp_95_nonzero",
          "picp_80_randomised", "picp_90_randomised", "picp_95_randomised", "mpiw_90_scaled", "mase",
          "calibration_error")


def load_dataset(args, config):
    """The panel to backtest and, for synthetic data, its generator (the oracle)."""
    from pipeline_lib.data.synthetic import synthetic_panel
    from pipeline_lib.data.validate import load_panel, minimum_series_days, validate_table

    if args.dataset in ("retail", "smooth"):
        data = synthetic_panel(args.dataset, n_series=args.series, n_days=730, seed=args.data_seed)
        return validate_table(data.frame, config.data, minimum_series_days(config.window),
                              source=f"synthetic {args.dataset}"), data
    return load_panel(config.data, config.window), None


def peer_samples(name, fold_panel, days, fit_end, oracle, non_negative, from_origin=False):
    """Samples ``(K, N)`` of a peer for ``days``: one day ahead, or with ``from_origin`` every
    day ahead from ``fit_end`` (the oracle's are the same either way: it knows every day's
    distribution)."""
    from pipeline_lib.evaluation import baselines
    from pipeline_lib.model import statistical

    if name == "naive":
        return baselines.seasonal_naive_samples(fold_panel, days, fit_end, non_negative=non_negative,
                                                from_origin=from_origin)
    if name == "ets":
        return statistical.auto_ets_samples(fold_panel, days, fit_end, non_negative=non_negative,
                                            from_origin=from_origin)
    if name == "arima":
        return statistical.auto_arima_samples(fold_panel, days, fit_end, non_negative=non_negative,
                                              from_origin=from_origin)
    if name == "oracle":
        if oracle is None:
            return None
        index = {sid: i for i, sid in enumerate(oracle.frame["series_id"].unique())}
        return oracle.oracle_samples({index[fold_panel.series[k].series_id]: d for k, d in days.items()})
    raise ValueError(f"unknown model {name!r}")


def summarise(runs: list[dict]) -> dict:
    """Per model: pooled coverage, mean and spread of crps_scaled over the runs."""
    from pipeline_lib.evaluation.metrics import pit_calibration_error

    summary = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        crps = np.array([r["metrics"]["crps_scaled"] for r in mine])
        row = {"runs": len(mine), "crps_scaled": float(crps.mean()), "crps_scaled_std": float(crps.std()),
               "seconds": float(np.mean([r["seconds"] for r in mine]))}
        for key in ("epochs_evaluation_fit", "epochs_served"):
            if all(key in r for r in mine):
                row[key] = float(np.mean([r[key] for r in mine]))
        weights = np.array([r["n"] for r in mine], dtype=float)
        for key in POOLED:
            values = [r["metrics"].get(key) for r in mine]
            if all(v is not None for v in values):
                row[key] = float(np.average(values, weights=weights))
        if all("pit" in r for r in mine):
            row["pit_calibration_error"] = pit_calibration_error(np.concatenate([r["pit"] for r in mine]))
        summary[model] = row
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="bundled", help="bundled | retail | smooth | a file path")
    parser.add_argument("--id-col", default=None)
    parser.add_argument("--time-col", default=None)
    parser.add_argument("--target-col", default=None)
    parser.add_argument("--series", type=int, default=50, help="synthetic data: number of series")
    parser.add_argument("--data-seed", type=int, default=0, help="synthetic data: generator seed")
    parser.add_argument("--folds", type=int, default=1)
    parser.add_argument("--seeds", default="42", help="comma-separated training seeds")
    parser.add_argument("--models", default="naive,ets,arima,oracle,lstm")
    parser.add_argument("--config", type=Path, default=None, help="YAML config (default: the defaults)")
    parser.add_argument("--set", action="append", default=[], help="override, e.g. model.head=count")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--multi-day", action="store_true", help="also score 28-day sample paths")
    parser.add_argument("--combine", action="store_true", help="also score equal-weight combinations of the "
                        "LSTM with each statistical peer run (pool and quantile average)")
    parser.add_argument("--ensemble", action="store_true", help="also score the mixture of every seed's model "
                        "per fold (a seed ensemble)")
    parser.add_argument("--plots", type=Path, default=None, help="write the calibration PNG here")
    parser.add_argument("--save-samples", type=Path, default=None, metavar="DIR",
                        help="write each fold's actuals and every model's samples to DIR/fold<f>.npz "
                        "(for benchmarks/headroom.py)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=None, help="print a saved --out file as Markdown and stop")
    parser.add_argument("--paired", nargs=2, metavar=("A", "B"), default=None,
                        help="compare two saved variants run by run (each: comma-separated --out files)")
    return parser.parse_args()


def build_config(args: argparse.Namespace):
    """The defaults (or ``--config``) with 28 test days, the dataset's columns and ``--set``."""
    import yaml

    from pipeline_lib.config import load_config, parse_config

    overrides: dict[str, dict] = {"window": {"test_days": 28}, "train": {"epochs": args.epochs}}
    if args.dataset not in ("bundled", "retail", "smooth"):
        overrides["data"] = {"path": Path(args.dataset), "id_col": args.id_col, "time_col": args.time_col,
                             "target_col": args.target_col}
    elif args.dataset != "bundled":
        overrides["data"] = {"id_col": "series_id", "time_col": "date", "target_col": "units"}
    raw = load_config(args.config).updated(**overrides).model_dump()
    for item in args.set:  # set here, not through updated(), which reads None as "leave as is"
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        if not isinstance(raw.get(section), dict) or field not in raw[section]:
            raise SystemExit(f"--set {item}: no field {field!r} in section {section!r}")
        raw[section][field] = yaml.safe_load(value)
    return parse_config(raw)


class Runs:
    """Every scored run (model x fold x seed) and the samples behind the calibration plot."""

    def __init__(self):
        self.runs: list[dict] = []
        self.curves: dict[str, list] = {}

    def record(self, model: str, fold: int, seed, actuals, samples, series_index, scales, seconds: float,
               **extra) -> None:
        """Score one model's ``(K, N)`` samples; ``extra`` (e.g. epochs trained) is stored with the run."""
        from pipeline_lib.evaluation.metrics import probability_integral_transform
        from pipeline_lib.evaluation.report import evaluate_samples

        metrics = evaluate_samples(actuals, samples, series_index, scales)
        self.runs.append({"model": model, "fold": fold, "seed": seed, "n": len(actuals), "seconds": seconds,
                          "metrics": metrics, "pit": probability_integral_transform(actuals, samples), **extra})
        self.curves.setdefault(model, []).append((actuals, samples))
        print(f"fold {fold} seed {seed} {model:12s} crps_scaled {metrics['crps_scaled']:.4f} "
              f"picp90 {metrics['picp_90']:.3f} ({seconds:.1f} s)", file=sys.stderr, flush=True)


def combinations(ours: np.ndarray, theirs: np.ndarray) -> dict[str, np.ndarray]:
    """Equal-weight combinations of two predictive distributions, as K samples each:
    ``pool`` the linear pool (a 50/50 mixture: K/2 evenly spaced order statistics of each),
    ``vincent`` the average of their quantile functions (Vincentization: the mean of the
    two sorted sample sets at the same K levels; keeps the sharpness a pool loses)."""
    k = ours.shape[0]
    return {"pool": linear_pool(ours, theirs, 0.5), "vincent": 0.5 * (resample(ours, k) + resample(theirs, k))}


def seed_mixture(members: list[np.ndarray]) -> np.ndarray:
    """The equal mixture of K models' ``(S, n)`` samples as S samples: S/K evenly spaced order
    statistics of each (so the ensemble is not favoured by drawing K times as many)."""
    total = members[0].shape[0]
    shares = np.diff(np.linspace(0, total, len(members) + 1).round().astype(int))
    return np.concatenate([resample(samples, share) for samples, share in zip(members, shares, strict=True)])


def score_peers(names: list[str], fold_panel, days, fit_end, oracle, non_negative: bool,
                record) -> dict[str, tuple[np.ndarray, float]]:
    """Each peer's samples of the fold and its seconds, recorded; peers whose optional
    dependencies are missing are skipped with a note."""
    peers = {}
    for name in names:
        start = time.perf_counter()
        try:
            samples = peer_samples(name, fold_panel, days, fit_end, oracle, non_negative)
        except ImportError:
            print(f"{name} skipped: install statsforecast (pip install -e .)", file=sys.stderr)
            continue
        if samples is not None:
            peers[name] = (samples, time.perf_counter() - start)
            record(name, samples, peers[name][1])
    return peers


def run_fold(args, config, panel, oracle, fold: int, models: list[str], seeds: list[int], runs: Runs) -> None:
    """Score every model on fold ``fold`` (its test window ends ``fold * test_days`` days
    before the data's last day); each LSTM seed trains as a training run on that day would."""
    from pipeline_lib import stages
    from pipeline_lib.data.features import actuals_for, part_days, split_points

    n_test = config.window.test_days
    fold_panel = panel.truncate([len(s) - fold * n_test for s in panel.series])
    days = part_days(fold_panel, config.window, "test")
    actuals, series_index = actuals_for(fold_panel, days)
    scales = stages.seasonal_scales(fold_panel, config)
    fit_end = {k: split_points(s, config.window).test_start for k, s in enumerate(fold_panel.series)}

    saved: dict[str, np.ndarray] = {}

    def record(model, samples, seconds, seed=None, **extra):
        runs.record(model, fold, seed, actuals, samples, series_index, scales, seconds, **extra)
        saved[model if seed is None else f"{model}_seed{seed}"] = samples

    peers = score_peers([m for m in models if m not in ("lstm", "lstm_8bit", "mc_dropout")], fold_panel, days,
                        fit_end, oracle, config.data.non_negative, record)
    if args.multi_day:  # the peers of the LSTM's 28-day paths: the same days, all from the test window's origin
        for name in [m for m in ("naive", "ets", "arima") if m in peers]:
            start = time.perf_counter()
            samples = peer_samples(name, fold_panel, days, fit_end, oracle, config.data.non_negative, from_origin=True)
            record(f"{name}_28d", samples, time.perf_counter() - start)
    if {"lstm", "lstm_8bit", "mc_dropout"} & set(models):
        score_lstm_seeds(args, config, panel, fold_panel, fold, models, seeds, peers, record, runs)
    if args.save_samples:
        save_fold_samples(args.save_samples / f"fold{fold}.npz", fold_panel, days, actuals, series_index, scales, saved)


def score_lstm_seeds(args, config, panel, fold_panel, fold: int, models: list[str], seeds: list[int], peers: dict,
                     record, runs: Runs) -> None:
    """Train the served LSTM for each seed on ``fold_panel`` and record its samples (and the
    variants ``models`` asks for: raw, 8-bit, MC dropout, combinations, paths, ensemble)."""
    from pipeline_lib import stages
    from pipeline_lib.evaluation.report import score_forecast_table

    n_test = config.window.test_days
    members: list[tuple[np.ndarray, float]] = []
    for seed in seeds:
        seeded = config.updated(train={"seed": seed})
        start = time.perf_counter()
        trained = stages.backtest_model(seeded, fold_panel, progress=sys.stderr.isatty())
        evaluation = stages.evaluate(seeded, trained.model, fold_panel, by_horizon=False)
        seconds = time.perf_counter() - start
        # Epochs trained: the evaluation fit's (early-stopped) and the served model's (the refit
        # runs the evaluation fit's best epoch count); the training time follows them.
        epochs = {"epochs_evaluation_fit": (trained.evaluation_fit or trained.training).epochs_run,
                  "epochs_served": trained.training.epochs_run}
        if trained.model.pool is not None:  # evaluation.pool_with_ets: the weight of ETS in what is served
            epochs["ets_pool_weight"] = trained.model.pool.weight
        if "lstm" in models:
            record("lstm", evaluation.sampled.samples, seconds, seed, **epochs)
            members.append((evaluation.sampled.samples, seconds))
            if evaluation.raw_samples is not None:
                record("lstm_raw", evaluation.raw_samples, seconds, seed)
            for peer in ("ets", "arima"):
                if args.combine and peer in peers:
                    ours, theirs = evaluation.sampled.samples, peers[peer][0]
                    for how, combined in combinations(ours, theirs).items():
                        record(f"lstm+{peer}_{how}", combined, seconds + peers[peer][1], seed)
            if args.multi_day:
                frame = stages.backtest_forecasts(seeded, trained.model, fold_panel, horizon=n_test)
                scored = score_forecast_table(frame, panel.to_frame())
                runs.runs.append({"model": "lstm_28d", "fold": fold, "seed": seed, "n": int(scored["n"]),
                                  "seconds": seconds, "metrics": scored})
        if "lstm_8bit" in models:  # the same trained model, its posterior stored in 8 bits
            quantized = stages.evaluate(seeded, trained.model.quantized_copy(), fold_panel, by_horizon=False)
            record("lstm_8bit", quantized.sampled.samples, seconds, seed)
        if "mc_dropout" in models:
            start = time.perf_counter()
            record("mc_dropout", mc_dropout_samples(seeded, trained.model, fold_panel), time.perf_counter() - start,
                   seed)
    if args.ensemble and len(members) > 1:
        record("lstm_ensemble", seed_mixture([samples for samples, _ in members]),
               sum(seconds for _, seconds in members), "+".join(map(str, seeds)))


def save_fold_samples(path: Path, fold_panel, days, actuals, series_index, scales, samples: dict) -> None:
    """One fold's test days and every model's ``(K, N)`` samples of them, as ``.npz``:
    ``actuals`` ``(N,)``, ``series_index`` ``(N,)``, ``dates`` ``(N,)`` (days since 1970),
    ``scales`` ``(S,)`` (the seasonal-naive scale of each series), then one array per model
    (``lstm_seed42``, ``ets``, ...)."""
    dates = np.concatenate([np.asarray(fold_panel.series[k].dates[d], dtype="datetime64[D]") for k, d in days.items()])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, actuals=actuals, series_index=series_index, dates=dates.astype(np.int64),
                        scales=np.asarray(scales, dtype=float), **samples)


def print_summary(summary: dict) -> None:
    header = f"{'model':12s} {'runs':>4s} " + " ".join(f"{k[:13]:>13s}" for k in SHOWN) + f" {'std':>6s} {'sec':>6s}"
    print(header)
    for name, row in summary.items():
        cells = " ".join(f"{row[k]:13.3f}" if k in row else f"{'-':>13s}" for k in SHOWN)
        print(f"{name:12s} {row['runs']:4d} {cells} {row['crps_scaled_std']:6.3f} {row['seconds']:6.1f}")
    if "oracle" in summary:
        for name, row in summary.items():
            print(f"{name}: CRPS / oracle = {row['crps_scaled'] / summary['oracle']['crps_scaled']:.3f}")


def main() -> None:
    args = parse_args()
    if args.report:
        print(markdown_report(json.loads(args.report.read_text())))
        return
    if args.paired:
        variants = [[json.loads(Path(f).read_text()) for f in files.split(",")] for files in args.paired]
        print(paired_report(*variants, names=args.paired))
        return
    config = build_config(args)
    models = args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    panel, oracle = load_dataset(args, config)
    runs = Runs()
    for fold in range(args.folds):
        run_fold(args, config, panel, oracle, fold, models, seeds, runs)

    summary = summarise(runs.runs)
    print_summary(summary)
    if args.plots:
        from pipeline_lib.evaluation.metrics import calibration_curve
        from pipeline_lib.evaluation.plots import calibration_plot

        args.plots.mkdir(parents=True, exist_ok=True)
        pooled = {name: calibration_curve(np.concatenate([a for a, _ in parts]),
                                          np.concatenate([resample(s, 200) for _, s in parts], axis=1))
                  for name, parts in runs.curves.items()}
        calibration_plot(pooled, args.plots / f"quality_calibration_{Path(args.dataset).stem}.png")
    result = {"dataset": args.dataset, "folds": args.folds, "seeds": seeds,
              "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.platform()}, {os.cpu_count()} CPUs", "overrides": args.set,
              "summary": summary,
              "runs": [{k: v for k, v in r.items() if k != "pit"} for r in runs.runs]}
    print(markdown_report(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(summary))


def paired_differences(a: list[dict], b: list[dict], metric: str = "crps_scaled") -> dict[str, dict]:
    """Per model in both variants (each a list of saved ``--out`` results): over the (fold,
    seed) runs both have, ``n``, the mean difference ``a - b`` of ``metric`` and its standard
    error (sample sd / sqrt(n); nan with one pair)."""
    def by_run(results):
        return {(r["model"], r["fold"], r["seed"]): r["metrics"][metric]
                for result in results for r in result["runs"] if metric in r["metrics"]}

    first, second = by_run(a), by_run(b)
    out = {}
    for model in sorted({key[0] for key in first} & {key[0] for key in second}):
        pairs = [key for key in first if key[0] == model and key in second]
        diff = np.array([first[key] - second[key] for key in pairs])
        if len(diff):
            se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
            out[model] = {"n": len(diff), "mean_difference": float(diff.mean()), "standard_error": se}
    return out


def paired_report(a: list[dict], b: list[dict], names: tuple[str, str] = ("A", "B")) -> str:
    """:func:`paired_differences` as a Markdown table."""
    lines = [f"Paired crps_scaled, A = {names[0]}, B = {names[1]} (negative: A is better)", "",
             "| model | runs paired | A - B (mean) | standard error |", "|---|---|---|---|"]
    for model, d in paired_differences(a, b).items():
        lines.append(f"| {model} | {d['n']} | {d['mean_difference']:+.4f} | {d['standard_error']:.4f} |")
    return "\n".join(lines)


def markdown_report(result: dict) -> str:
    """A saved result (``--out``) as a Markdown table: pooled coverage, crps_scaled mean +-
    standard deviation over the fold x seed runs, the mean per fold, and seconds per run."""
    summary, runs = result["summary"], result["runs"]
    folds = sorted({r["fold"] for r in runs})
    oracle = summary.get("oracle", {}).get("crps_scaled")
    lines = [f"{result['dataset']}, {result['folds']} fold(s) x seeds {result['seeds']}, {result['date']}, "
             f"{result['machine']}" + (f"; overrides {result['overrides']}" if result["overrides"] else ""), "",
             "| model | runs | PICP80 | PICP90 | PICP95 | PICP90 days>0 | randomised PICP80 / 90 / 95 | "
             "PIT cal. error | MPIW90 scaled | crps_scaled (mean +- sd) | " + " | ".join(f"fold {f}" for f in folds)
             + (" | / oracle" if oracle else "") + " | s / run |",
             "|---" * (11 + len(folds) + (1 if oracle else 0)) + "|"]
    for name, row in summary.items():
        per_fold = [np.mean([r["metrics"]["crps_scaled"] for r in runs if r["model"] == name and r["fold"] == f])
                    for f in folds]
        def cell(key: str, row: dict = row) -> str:
            return f"{row[key]:.3f}" if key in row else "-"

        lines.append(f"| {name} | {row['runs']} | {cell('picp_80')} | {cell('picp_90')} | {cell('picp_95')} | "
                     f"{cell('picp_90_nonzero')} | "
                     + " / ".join(cell(f"picp_{k}_randomised") for k in (80, 90, 95))
                     + f" | {cell('pit_calibration_error')} | {cell('mpiw_90_scaled')} | "
                     f"{row['crps_scaled']:.3f} +- {row['crps_scaled_std']:.3f} | "
                     + " | ".join(f"{v:.3f}" for v in per_fold)
                     + (f" | {row['crps_scaled'] / oracle:.3f}" if oracle else "") + f" | {row['seconds']:.0f} |")
    return "\n".join(lines)


def mc_dropout_samples(config, model, panel) -> np.ndarray:
    """MC-dropout LSTM (Uber 2017) on the same windows, scalers and test days as ``model``."""
    from pipeline_lib.data.features import build_windows, inverse_transform
    from pipeline_lib.model.mc_dropout import McDropoutLSTM

    windows = {part: build_windows(panel, model.scalers, model.spec, config.window, part)
               for part in ("train", "validation", "test")}
    dropout = McDropoutLSTM(model.spec.num_features, seed=config.train.seed)
    dropout.fit(windows["train"], windows["validation"])
    z = dropout.sample(windows["test"].inputs, config.evaluation.num_samples, seed=config.evaluation.seed)
    z = z + windows["test"].levels[None]
    ids = [panel.series[k].series_id for k in windows["test"].series_index]
    locs = np.array([model.scalers[i].loc for i in ids])
    scale = np.array([model.scalers[i].scale for i in ids])
    return inverse_transform(z, locs[None], scale[None], model.spec.transform)


if __name__ == "__main__":
    main()
