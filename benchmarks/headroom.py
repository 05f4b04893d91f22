"""Where is the served model's CRPS lost, and what could a post-hoc change win? (issue [2/6])

    python benchmarks/quality.py --dataset D --folds 3 --seeds 42 --models ets,lstm --save-samples DIR
    python benchmarks/headroom.py DIR [--seed 42]

Reads the folds' saved samples (no training) and prints, per fold, ``crps_scaled`` of the
served LSTM with:

1. **Its share by weekday** (does a day of the week, e.g. a closure, carry the loss?).
2. **The best recalibration that exists, fitted on the test days themselves** (in-sample,
   so an upper bound on what any recalibration fitted beforehand can win): the remap of the
   raw (before recalibration) samples' quantile levels that makes their randomised PIT
   uniform on the fold's own days, for all series at once, for each quartile of the
   forecast mean (a segment-conditional recalibration), and for each series on its own
   (28 points per series: an over-fitted bound, shown for scale only).
3. **A linear pool with AutoETS at weight w** (a share w of the samples drawn from ETS's
   one-day-ahead distribution), for w = 0, 0.1, .., 1; and the weight chosen on the
   previous (earlier) fold's days applied to the next: what a stacked combination whose
   weight is fitted on past days would give.

4. **Recalibration maps by series fitted on the previous (earlier) fold's days** and applied
   to the next fold's raw samples (``PitRecalibration.fit(..., series_ids=...)``), for
   several prior strengths ``SERIES_PRIOR_DAYS`` (0: each series on its own; a huge one: the
   global map fitted on the earlier fold).

5. **A global recalibration of the served samples themselves** (after the ETS pool, whose
   mixture of two calibrated forecasts can be too wide): fitted on the fold's own days (an
   upper bound) and on the earlier fold.

Folds are files ``fold<f>.npz`` from ``quality.py --save-samples`` (fold 0 is the latest).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline_lib.contract import sample_quantiles
from pipeline_lib.evaluation import calibration
from pipeline_lib.evaluation.calibration import PitRecalibration
from pipeline_lib.evaluation.metrics import (
    CRPS_LEVELS,
    crps_from_quantiles,
    mean_over_series,
    probability_integral_transform,
    scaled_crps,
)
from pipeline_lib.model.statistical import linear_pool

POOL_WEIGHTS = np.round(np.linspace(0.0, 1.0, 11), 2)
SERIES_PRIORS = (0.0, 14.0, 28.0, 56.0, 112.0, 1e9)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class Fold:
    """One fold's saved arrays: ``actuals`` ``(N,)``, ``series_index`` ``(N,)``, ``scales``
    ``(S,)``, ``dates`` ``(N,)`` days since 1970, and ``samples[name]`` ``(K, N)``."""

    def __init__(self, path: Path):
        data = np.load(path)
        self.name = path.stem
        self.actuals, self.series_index = data["actuals"], data["series_index"]
        self.scales, self.dates = data["scales"], data["dates"]
        self.samples = {key: data[key] for key in data.files
                        if key not in ("actuals", "series_index", "scales", "dates")}

    def crps(self, quantiles: np.ndarray) -> float:
        """``crps_scaled`` of quantiles ``(23, N)`` at ``CRPS_LEVELS``."""
        return scaled_crps(self.actuals, quantiles, self.series_index, self.scales)

    def crps_of_samples(self, samples: np.ndarray) -> float:
        return self.crps(sample_quantiles(samples, CRPS_LEVELS, axis=0))

    def weekday_shares(self, samples: np.ndarray) -> np.ndarray:
        """``(7,)`` each weekday's part of ``crps_scaled`` (Monday first; they sum to it)."""
        per_target = crps_from_quantiles(self.actuals, sample_quantiles(samples, CRPS_LEVELS, axis=0), CRPS_LEVELS)
        scaled = per_target / self.scales[self.series_index]
        weekday = (self.dates + 3) % 7  # 1970-01-01 was a Thursday
        # crps_scaled is linear in the per-target values, so masking splits it exactly.
        return np.array([mean_over_series(np.where(weekday == day, scaled, 0.0), self.series_index)
                         for day in range(7)])


def in_sample_recalibration(fold: Fold, raw: np.ndarray, groups: np.ndarray) -> float:
    """``crps_scaled`` after remapping each group's quantile levels so that its randomised
    PIT on these very days is uniform: level tau is read at the tau-quantile of the group's
    PIT values. ``groups`` ``(N,)`` ints."""
    pit = probability_integral_transform(fold.actuals, raw, np.random.default_rng(0))
    levels = np.asarray(CRPS_LEVELS)
    quantiles = np.empty((len(levels), len(fold.actuals)))
    for group in np.unique(groups):
        inside = groups == group
        remapped = np.clip(np.quantile(pit[inside], levels), 0.0, 1.0)
        quantiles[:, inside] = sample_quantiles(raw[:, inside], remapped, axis=0)
    return fold.crps(quantiles)


def series_recalibration_score(past: Fold, now: Fold, raw: str, prior_days: float) -> float:
    """``crps_scaled`` on ``now`` of its ``raw`` samples remapped by series maps fitted on
    ``past``'s PITs with ``SERIES_PRIOR_DAYS = prior_days``."""
    pit = probability_integral_transform(past.actuals, past.samples[raw], np.random.default_rng(0))
    fitted = PitRecalibration.fit(pit, series_ids=past.series_index.astype(str))
    saved, calibration.SERIES_PRIOR_DAYS = calibration.SERIES_PRIOR_DAYS, prior_days
    try:
        return now.crps_of_samples(fitted.apply(now.samples[raw], now.series_index.astype(str)))
    finally:
        calibration.SERIES_PRIOR_DAYS = saved


def mean_pit_correlation(past: Fold, now: Fold, raw: str) -> float:
    """Correlation over series of their mean randomised PIT on ``past`` and on ``now``: how
    much of a series' bias persists from one fold to the next."""
    means = []
    for fold, seed in ((past, 0), (now, 1)):
        pit = probability_integral_transform(fold.actuals, fold.samples[raw], np.random.default_rng(seed))
        means.append(np.bincount(fold.series_index, pit) / np.bincount(fold.series_index))
    return float(np.corrcoef(*means)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a quality.py --save-samples directory")
    parser.add_argument("--seed", type=int, default=42, help="the LSTM seed to analyse")
    args = parser.parse_args()
    paths = sorted(args.directory.glob("fold*.npz"), key=lambda path: int(path.stem.removeprefix("fold")))
    if not paths:
        raise SystemExit(f"{args.directory}: no fold*.npz (write them with quality.py --save-samples)")
    folds = [Fold(path) for path in paths]
    served, raw = f"lstm_seed{args.seed}", f"lstm_raw_seed{args.seed}"
    for fold in folds:
        if served not in fold.samples:
            raise SystemExit(f"{fold.name}: no {served} samples (saved: {', '.join(fold.samples)})")

    print("1. crps_scaled of the served LSTM by weekday (shares sum to the total)")
    for fold in folds:
        shares = fold.weekday_shares(fold.samples[served])
        parts = " + ".join(f"{day} {share:.4f}" for day, share in zip(WEEKDAYS, shares, strict=True))
        print(f"  {fold.name}: {shares.sum():.4f} = {parts}")

    print("\n2. served vs the best recalibration fitted on the test days themselves (an upper bound)")
    print("  fold: raw | served | in-sample: global | by forecast-mean quartile | per series (over-fitted)")
    for fold in folds:
        if raw not in fold.samples:
            print(f"  {fold.name}: no {raw} samples (the recalibration is off)")
            continue
        samples = fold.samples[raw]
        mean = samples.mean(axis=0)
        quartile = np.digitize(mean, np.quantile(mean, [0.25, 0.5, 0.75]))
        bounds = [in_sample_recalibration(fold, samples, groups)
                  for groups in (np.zeros(len(mean), int), quartile, fold.series_index)]
        print(f"  {fold.name}: {fold.crps_of_samples(samples):.4f} | {fold.crps_of_samples(fold.samples[served]):.4f}"
              " | " + " | ".join(f"{b:.4f}" for b in bounds))

    print("\n4. recalibration fitted on the earlier fold, by series with prior strength k (days), on the next fold")
    print("  fold: served | " + " | ".join(f"k={k:g}" for k in SERIES_PRIORS))
    for later in range(len(folds) - 1):
        past, now = folds[later + 1], folds[later]
        if raw not in past.samples or raw not in now.samples:
            continue
        scores = [series_recalibration_score(past, now, raw, k) for k in SERIES_PRIORS]
        print(f"  {now.name} from {past.name}: {now.crps_of_samples(now.samples[served]):.4f} | "
              + " | ".join(f"{c:.4f}" for c in scores)
              + f"; series' mean PIT, correlation between the folds {mean_pit_correlation(past, now, raw):.2f}")

    print("\n5. a global recalibration of the served samples themselves (after the ETS pool, when it is on)")
    print("  fold: served | in-sample (an upper bound) | fitted on the earlier fold")
    for index, fold in enumerate(folds):
        samples = fold.samples[served]
        bound = in_sample_recalibration(fold, samples, np.zeros(len(fold.actuals), int))
        earlier = (f"{series_recalibration_score(folds[index + 1], fold, served, 1e9):.4f}"
                   if index + 1 < len(folds) else "-")
        print(f"  {fold.name}: {fold.crps_of_samples(samples):.4f} | {bound:.4f} | {earlier}")

    if not all("ets" in fold.samples for fold in folds):
        print("\n3. skipped: no AutoETS samples saved (run quality.py with --models ets,lstm)")
        return
    print("\n3. linear pool with AutoETS, crps_scaled by ETS weight")
    table = np.array([[fold.crps_of_samples(linear_pool(fold.samples[served], fold.samples["ets"], w))
                       for w in POOL_WEIGHTS] for fold in folds])
    print("  fold: " + " ".join(f"{w:>6.1f}" for w in POOL_WEIGHTS))
    for fold, row in zip(folds, table, strict=True):
        print(f"  {fold.name}: " + " ".join(f"{c:.4f}" for c in row))
    for later in range(len(folds) - 1):
        chosen = int(np.argmin(table[later + 1]))
        print(f"  {folds[later].name} with the weight chosen on {folds[later + 1].name} ({POOL_WEIGHTS[chosen]:.1f}): "
              f"{table[later, chosen]:.4f} against LSTM {table[later, 0]:.4f}, ETS {table[later, -1]:.4f}")


if __name__ == "__main__":
    main()
