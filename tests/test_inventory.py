"""Order-up-to levels against closed forms, and the policy simulation by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm, poisson

from pipeline_lib.inventory.backtest import simulate
from pipeline_lib.inventory.policy import (
    critical_ratio,
    cycle_service_level,
    fill_rate,
    order_columns,
    protection_demand,
)

RNG = np.random.default_rng(0)


def test_normal_demand_level_is_the_closed_form_quantile():
    # Three days of independent N(100, 20^2) demand: the sum is N(300, 3 * 20^2).
    paths = RNG.normal(100.0, 20.0, size=(200_000, 2, 3))
    result = cycle_service_level(protection_demand(paths, 3), 0.95)
    expected = 300.0 + norm.ppf(0.95) * 20.0 * np.sqrt(3)
    np.testing.assert_allclose(result.level, expected, rtol=3e-3)
    np.testing.assert_allclose(result.safety_stock, norm.ppf(0.95) * 20.0 * np.sqrt(3), rtol=2e-2)


def test_poisson_demand_level_from_samples():
    # Two days of Poisson(4) demand sum to Poisson(8): its 95% quantile is an integer.
    paths = RNG.poisson(4.0, size=(100_000, 1, 2)).astype(float)
    result = cycle_service_level(protection_demand(paths, 2), 0.95)
    assert result.level[0] == poisson.ppf(0.95, 8)


def test_correlated_days_need_more_stock_than_independent_ones():
    """Summing joint paths keeps the correlation that per-day quantiles would lose."""
    common = RNG.normal(0.0, 20.0, size=(100_000, 1, 1))
    correlated = 100.0 + common + RNG.normal(0.0, 1e-3, size=(100_000, 1, 3))
    independent = RNG.normal(100.0, 20.0, size=(100_000, 1, 3))
    high = cycle_service_level(protection_demand(correlated, 3), 0.95).level[0]
    low = cycle_service_level(protection_demand(independent, 3), 0.95).level[0]
    assert high == pytest.approx(300 + norm.ppf(0.95) * 60, rel=5e-3)
    assert low == pytest.approx(300 + norm.ppf(0.95) * 20 * np.sqrt(3), rel=5e-3)


def test_fill_rate_level_matches_the_normal_loss_function():
    mu, sigma, target = 300.0, 50.0, 0.98
    demand = RNG.normal(mu, sigma, size=(400_000, 1))
    result = fill_rate(demand, target)

    def excess(level):  # sigma * L(z) - (1 - target) * mu, L the standard normal loss function
        z = (level - mu) / sigma
        return sigma * (norm.pdf(z) - z * norm.sf(z)) - (1 - target) * mu

    expected = brentq(excess, mu - 3 * sigma, mu + 5 * sigma)
    assert result.level[0] == pytest.approx(expected, rel=2e-3)


def test_newsvendor_critical_ratio():
    assert critical_ratio(9.0, 1.0) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        critical_ratio(0.0, 1.0)
    with pytest.raises(ValueError, match="strictly between"):
        cycle_service_level(np.ones((10, 1)), 1.0)


def test_simulation_by_hand():
    demand = np.full((10, 1), 10.0)
    # Lead time 2, daily review: a level of 3 days of demand never runs out...
    enough = simulate(np.full((10, 1), 30.0), demand, lead_time=2, review_period=1)
    assert enough.stockout_days == 0 and enough.cycle_service_level == 1.0 and enough.fill_rate == 1.0
    np.testing.assert_allclose(enough.on_hand[:4, 0], [20.0, 10.0, 0.0, 0.0])
    # ...and 2.5 days' worth runs short: day 2 sells the last 5 of the opening stock.
    short = simulate(np.full((10, 1), 25.0), demand, lead_time=2, review_period=1)
    assert short.stockout_days > 0 and short.units_short > 0
    assert short.fill_rate == pytest.approx(1 - short.units_short / 100.0)
    # Weekly review: the service level counts cycles, not days.
    weekly = simulate(np.full((14, 1), 25.0), np.full((14, 1), 10.0), lead_time=0, review_period=7)
    assert weekly.cycle_service_level == 0.0 and weekly.stockout_days == 2 * 5  # days 3..7 of each week


def test_order_columns_of_a_forecast_table():
    # 2 series x 5 days, series-major columns as ForecastModel.forecast returns them.
    paths = RNG.poisson([[[3.0] * 5, [30.0] * 5]], size=(50_000, 2, 5)).astype(float)
    columns = order_columns(paths.reshape(50_000, 10), n_series=2, horizon=5, service_level=0.9, protection_days=3)
    level = columns["order_up_to"].reshape(2, 5)
    assert np.isnan(level[:, 3:]).all()  # days 4 and 5 cannot cover three days
    assert list(level[:, 0]) == [poisson.ppf(0.9, 9), poisson.ppf(0.9, 90)]
    np.testing.assert_allclose(columns["safety_stock"].reshape(2, 5)[:, 0], level[:, 0] - [9, 90], atol=0.1)


def test_levels_agree_with_stockpyl():
    """stockpyl (an independent inventory library) on Normal demand: the newsvendor base-stock
    level for costs (h, p) is our cycle-service level at the critical ratio, and at our
    fill-rate level its normal loss function gives exactly the allowed shortage."""
    from stockpyl.loss_functions import normal_loss
    from stockpyl.newsvendor import newsvendor_normal

    mu, sigma = 300.0, 50.0
    demand = RNG.normal(mu, sigma, size=(400_000, 1))
    for holding, stockout in ((1.0, 9.0), (2.0, 3.0), (1.0, 49.0)):
        expected, _ = newsvendor_normal(holding, stockout, mu, sigma)
        level = cycle_service_level(demand, critical_ratio(stockout, holding)).level[0]
        assert level == pytest.approx(expected, rel=2e-3), (holding, stockout)
    target = 0.98
    level = fill_rate(demand, target).level[0]
    shortage, _ = normal_loss(level, mu, sigma)  # E[(D - level)+]
    assert shortage == pytest.approx((1 - target) * mu, rel=2e-2)


def test_a_backtest_window_ends_the_given_days_before_the_data_and_a_too_short_cut_is_named():
    """``inventory-backtest --days-before-end N``: every series keeps its days up to N days
    before the data's last day (its test window ends there); a cut that leaves a series
    shorter than the window needs is refused, naming it, before anything trains."""
    import pandas as pd

    from pipeline_lib.config import PipelineConfig
    from pipeline_lib.data.validate import panel_from_history
    from pipeline_lib.errors import DataValidationError
    from pipeline_lib.inventory.run import ending_days_before
    from tests.support import synthetic_demand

    frame = synthetic_demand(n_series=3, n_days=90).rename(columns={"units": "target"})
    # The last series starts late, on 2023-02-15: 46 days of its own.
    frame = frame[(frame.series_id != frame.series_id.iloc[-1]) | (frame.date >= "2023-02-15")]
    panel = panel_from_history(frame, ("price",))
    config = PipelineConfig(window={"context_length": 14, "validation_days": 14, "test_days": 7,
                                    "min_train_days": 14})  # 35 days needed
    assert ending_days_before(panel, 0, config) is panel
    cut = ending_days_before(panel, 10, config)
    last = pd.Timestamp("2023-01-02") + pd.Timedelta(days=89 - 10)
    assert [s.dates[-1] for s in cut.series] == [last] * 3
    for before, after in zip(panel.series, cut.series, strict=True):
        np.testing.assert_array_equal(after.target, before.target[:len(after)])
        assert len(after) == len(before) - 10
    late = panel.series_ids[-1]  # 46 - 12 days left: 35 are needed
    with pytest.raises(DataValidationError, match=rf"leaves series \['{late}'\] with fewer than the 35 days"):
        ending_days_before(panel, 12, config)


def test_the_rolling_summary_gives_each_rules_stock_for_the_target_over_windows_and_where_it_was_least():
    """Stock for exactly 95% is read off each window's sweep by linear interpolation; the
    summary gives its mean and sd per rule over the windows and counts the windows where each
    rule needed the least (a rule whose sweep misses the target is never the least)."""
    from datetime import date

    import pandas as pd

    from pipeline_lib.inventory.backtest import InventoryBacktest
    from pipeline_lib.inventory.run import InventoryReport, WindowReport, rolling_summary

    def sweep(stock_at_90, stock_at_100):  # linear in service from 90% to 100%: 95% is the midpoint
        return pd.DataFrame({"cycle_service_level": [0.9, 1.0], "average_inventory": [stock_at_90, stock_at_100]})

    def window(a, b, c):
        curves = {"(a) paths": sweep(*a), "(b) point + k sigma": sweep(*b), "(c) naive": sweep(*c)}
        backtest = InventoryBacktest(pd.DataFrame(), curves, 1.0, 0.95, 2, 1)
        return WindowReport(date(2024, 1, 1), InventoryReport(backtest, None, None), "")

    missing = pd.DataFrame({"cycle_service_level": [0.5, 0.9], "average_inventory": [1.0, 2.0]})  # never 95%
    third = window((100, 120), (100, 140), (0, 0))
    third.report.backtest.curves["(c) naive"] = missing
    summary = rolling_summary([window((90, 110), (100, 120), (120, 140)), window((110, 150), (100, 120), (0, 400)),
                               third])
    # (a) 100, 130, 110; (b) 110, 110, 120; (c) 130, 200, NaN
    assert summary.startswith("over 3 test windows, stock for exactly 95% (mean +- sd): (a) paths 113.3 +- 15.3, "
                              "(b) point + k sigma 113.3 +- 5.8, (c) naive nan +- nan; least stock: (a) paths in 2 "
                              "of 3, (b) point + k sigma in 1 of 3, (c) naive in 0 of 3"), summary
