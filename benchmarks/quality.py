"""Forecast quality on a 28-day one-day-ahead rolling backtest, our model and its peers.

    python benchmarks/quality.py [--data PATH --id-col C --time-col C --target-col C] [--epochs N] [--json]

Models: seasonal naive (period 7) with empirical residual quantiles; statsforecast AutoETS
(optional extra ``bench``); the Bayesian LSTM
(served = recalibrated, and raw); an MC-dropout LSTM with an inherent-noise term (Uber 2017).

Protocol (same split and days for every model): the last 28 days of each series are the
test period; each test day is forecast one day ahead with the actuals up to the day before
(no refit). Metrics per model: PICP 80/90/95, MPIW90 scaled by the mean absolute actual,
crps_scaled (2 x mean pinball loss over the 23 levels 0.005, 0.025, 0.05, ..., 0.95, 0.975,
0.995, divided per series by its in-sample mean absolute seasonal-naive(7) error before the
test window, then averaged over series) and MASE (median forecast, same scale).

With ``--json`` the last line is one JSON object: ``{model: {picp80, ..., mase}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

KEYS = {"picp80": "picp_80", "picp90": "picp_90", "picp95": "picp_95", "mpiw90_scaled": "mpiw_90_scaled",
        "crps_scaled": "crps_scaled", "mase": "mase"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--id-col", default=None)
    parser.add_argument("--time-col", default=None)
    parser.add_argument("--target-col", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--plots", type=Path, default=None, help="write calibration and sharpness PNGs here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from pipeline_lib import pipeline
    from pipeline_lib.config import PipelineConfig
    from pipeline_lib.data.features import (
        actuals_for,
        build_windows,
        inverse_transform,
        part_days,
        split_points,
    )
    from pipeline_lib.data.validate import load_panel
    from pipeline_lib.evaluation.metrics import calibration_curve
    from pipeline_lib.evaluation.plots import calibration_plot, sharpness_calibration_scatter
    from pipeline_lib.evaluation.report import evaluate_samples
    from pipeline_lib.model.mc_dropout import McDropoutLSTM

    config = PipelineConfig().updated(
        data={"path": args.data, "id_col": args.id_col, "time_col": args.time_col, "target_col": args.target_col},
        window={"test_days": 28},
        train={"epochs": args.epochs, "seed": args.seed},
    )
    panel = load_panel(config.data, config.window)
    days = part_days(panel, config.window, "test")
    actuals, series_index = actuals_for(panel, days)
    scales = pipeline.seasonal_scales(panel, config)

    def score(samples):
        full = evaluate_samples(actuals, samples, series_index, scales)
        return {short: round(full[long], 4) for short, long in KEYS.items()}

    results, seconds = {}, {}
    fit_end = {k: split_points(s, config.window).test_start for k, s in enumerate(panel.series)}

    try:
        from pipeline_lib.evaluation.baselines import auto_ets_samples

        start = time.perf_counter()
        samples_ets = auto_ets_samples(panel, days, fit_end, non_negative=config.data.non_negative)
        results["auto_ets"] = score(samples_ets)
        seconds["auto_ets"] = time.perf_counter() - start
    except ImportError:
        print("AutoETS skipped: install the optional peers with pip install -e '.[bench]'", file=sys.stderr)
        samples_ets = None

    start = time.perf_counter()
    trained = pipeline.train(config, panel, progress=sys.stderr.isatty())
    evaluation = pipeline.evaluate(config, trained.model, panel)
    seconds["bayesian_lstm"] = time.perf_counter() - start
    naive_samples = evaluation.peer_samples["seasonal naive"]  # same days, computed by evaluate()
    results["seasonal_naive"] = score(naive_samples)
    seconds["seasonal_naive"] = 0.0
    results["bayesian_lstm"] = score(evaluation.sampled.samples)
    samples = {"seasonal_naive": naive_samples, "bayesian_lstm": evaluation.sampled.samples}
    if samples_ets is not None:
        samples["auto_ets"] = samples_ets
    if evaluation.raw_samples is not None:
        results["bayesian_lstm_uncalibrated"] = score(evaluation.raw_samples)
        seconds["bayesian_lstm_uncalibrated"] = seconds["bayesian_lstm"]
        samples["bayesian_lstm_uncalibrated"] = evaluation.raw_samples

    # MC-dropout LSTM (Uber 2017) on the same windows, scalers and days.
    start = time.perf_counter()
    model = trained.model
    windows = {part: build_windows(panel, model.scalers, model.spec, config.window, part)
               for part in ("train", "validation", "test")}
    dropout = McDropoutLSTM(model.spec.num_features, seed=config.train.seed).fit(windows["train"], windows["validation"])
    z = dropout.sample(windows["test"].inputs, config.evaluation.num_samples, seed=config.evaluation.seed)
    z = z + windows["test"].levels[None]
    ids = [panel.series[k].series_id for k in windows["test"].series_index]
    locs = np.array([model.scalers[i].loc for i in ids])
    scale = np.array([model.scalers[i].scale for i in ids])
    samples["mc_dropout_lstm"] = inverse_transform(z, locs[None], scale[None], model.spec.transform)
    results["mc_dropout_lstm"] = score(samples["mc_dropout_lstm"])
    seconds["mc_dropout_lstm"] = time.perf_counter() - start

    if args.plots:
        args.plots.mkdir(parents=True, exist_ok=True)
        calibration_plot({name: calibration_curve(actuals, s) for name, s in samples.items()},
                         args.plots / "quality_calibration.png")
        sharpness_calibration_scatter({name: (row["picp90"], row["mpiw90_scaled"]) for name, row in results.items()},
                                      args.plots / "quality_sharpness_calibration.png")

    header = f"{'model':28s} " + " ".join(f"{k:>13s}" for k in KEYS) + f" {'seconds':>8s}"
    print(header)
    for name, row in results.items():
        print(f"{name:28s} " + " ".join(f"{row[k]:13.3f}" for k in KEYS) + f" {seconds[name]:8.1f}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
