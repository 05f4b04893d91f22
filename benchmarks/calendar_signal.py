"""Is there calendar information left for the bundled data's test folds? (issue [2/6])

    python benchmarks/calendar_signal.py [--folds 3] [--test-days 28]

Two checks that decide whether calendar inputs are worth building before any training run:

1. **Closures**: days on which every series sells nothing outside the weekly Saturday
   closure (bank holidays, Christmas). A closure calendar, known in advance, could only help
   the folds' scores if such days fall in a test period or in the week its windows centre on.
2. **Last year's same season**: does the change from the last week's level to the target day
   repeat the same change 364 days earlier (same weekday)? For each test day, the
   correlation across series-days between ``r(t) = log1p(y_t) - mean(log1p(y_{t-7..t-1}))``
   and ``r(t - 364)``, and with last year's weekly lift (the week from ``t - 364`` against
   the week before it), weekday means removed, Saturdays excluded. This is the residual a
   level-centred window leaves, so a yearly lag input could only win what this correlates.

Prints the closure days and one row of correlations per fold.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from pipeline_lib.config import bundled_dataset_path

SATURDAY = 5


def daily_matrix() -> pd.DataFrame:
    """Units sold, one column per series, one row per calendar day (missing days are 0)."""
    frame = pd.read_csv(bundled_dataset_path(), parse_dates=["date"])
    return frame.pivot(index="date", columns="series_id", values="units").asfreq("D").fillna(0.0)


def closures(units: pd.DataFrame) -> pd.DatetimeIndex:
    """Days outside Saturdays on which no series sold anything."""
    shut = units.index[(units.sum(axis=1) == 0) & (units.index.dayofweek != SATURDAY)]
    return pd.DatetimeIndex(shut)


def yearly_correlations(units: pd.DataFrame, folds: int, test_days: int) -> pd.DataFrame:
    z = np.log1p(units.clip(lower=0.0))
    residual = z - z.shift(1).rolling(7).mean()  # what a window centred on its last week leaves
    weekly = z.rolling(7).mean()
    lift_last_year = weekly.shift(364 - 6) - weekly.shift(364 + 1)
    rows = []
    end = units.index[-1]
    for fold in range(folds):
        stop = end - pd.Timedelta(days=test_days * fold)
        days = units.index[(units.index > stop - pd.Timedelta(days=test_days)) & (units.index <= stop)]
        frame = pd.DataFrame({
            "r": residual.loc[days].stack(), "r_last_year": residual.shift(364).loc[days].stack(),
            "lift_last_year": lift_last_year.loc[days].stack(),
        }).dropna()
        weekday = frame.index.get_level_values(0).dayofweek
        frame = frame[weekday != SATURDAY]
        weekday = frame.index.get_level_values(0).dayofweek
        centred = frame.groupby(weekday).transform(lambda col: col - col.mean())
        rows.append({"fold": fold, "first day": str(days[0].date()), "series-days": len(frame),
                     "corr(r, r 364 days before)": centred["r"].corr(centred["r_last_year"]),
                     "corr(r, last year's weekly lift)": centred["r"].corr(centred["lift_last_year"])})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--test-days", type=int, default=28)
    args = parser.parse_args()
    units = daily_matrix()
    shut = closures(units)
    first_test_day = units.index[-1] - pd.Timedelta(days=args.folds * args.test_days - 1)
    in_reach = shut[shut >= first_test_day - pd.Timedelta(days=7)]
    print(f"closures outside Saturdays: {len(shut)} days, {shut[0].date()} .. {shut[-1].date()}; "
          f"from a week before the first test day ({first_test_day.date()}) on: {len(in_reach)}")
    print(yearly_correlations(units, args.folds, args.test_days).to_string(index=False, float_format="%.3f"))


if __name__ == "__main__":
    main()
