"""Simulate a periodic-review order-up-to policy over the test period with three ways of
setting the level, on the same actual demand:

(a) ``bayesian``: quantile of the model's joint sample paths summed over the protection
    period (``pipeline_lib.inventory.policy``);
(b) ``point+safety``: the model's mean forecast over the protection period plus
    ``k * sigma_d * sqrt(L + R)``, ``sigma_d`` the std of daily demand over the last 28
    days: the textbook rule most shops run. Reported with ``k = z(service level)`` and with
    ``k`` tuned on the test period itself to reach the same service level as (a)
    (generous to the baseline: it sees the answers);
(c) ``seasonal naive``: last week's demand over the same weekdays plus the empirical
    quantile of that rule's past protection-period errors.

Simulation, per series, lost sales: at the start of each review day the order
``max(S - on hand - on order, 0)`` is placed and arrives ``L`` days later (before that
day's sales); each day sells ``min(on hand, demand)``; the rest is lost. The stock starts at
the first level. Achieved cycle service level = share of review cycles without a stockout;
fill rate = 1 - units short / demand; average inventory = mean end-of-day stock on hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from pipeline_lib.data.validate import Panel
from pipeline_lib.inventory.policy import cycle_service_level, protection_demand

log = logging.getLogger(__name__)

SIGMA_DAYS = 28  # history behind the textbook rule's daily-demand std


@dataclass(frozen=True)
class SimulationResult:
    cycle_service_level: float  # share of review cycles without a stockout
    fill_rate: float
    stockout_days: int
    units_short: float
    average_inventory: float  # mean end-of-day units on hand per series
    on_hand: np.ndarray  # (T, N) end-of-day stock
    short: np.ndarray  # (T, N) unmet demand (lost sales)

    def as_row(self, policy: str) -> dict:
        return {"policy": policy, "cycle_service_level": self.cycle_service_level, "fill_rate": self.fill_rate,
                "stockout_days": self.stockout_days, "units_short": self.units_short,
                "average_inventory": self.average_inventory}


def simulate(levels: np.ndarray, demand: np.ndarray, lead_time: int, review_period: int) -> SimulationResult:
    """Run the policy. ``levels``: order-up-to level ``(T, N)`` on each day (used on review
    days); ``demand``: actual demand ``(T, N)``."""
    days, n = demand.shape
    on_hand = levels[0].astype(float).copy()
    arrivals = np.zeros((days + lead_time + 1, n))
    end_stock = np.zeros((days, n))
    short = np.zeros((days, n))
    for t in range(days):
        on_hand += arrivals[t]
        if t % review_period == 0:
            position = on_hand + arrivals[t + 1 : t + lead_time + 1].sum(axis=0)
            order = np.maximum(levels[t] - position, 0.0)
            if lead_time == 0:
                on_hand += order
            else:
                arrivals[t + lead_time] += order
        sold = np.minimum(on_hand, demand[t])
        short[t] = demand[t] - sold
        on_hand -= sold
        end_stock[t] = on_hand
    cycles = -(-days // review_period)
    stocked_out = np.zeros((cycles, n), dtype=bool)
    for c in range(cycles):
        stocked_out[c] = (short[c * review_period : (c + 1) * review_period] > 1e-9).any(axis=0)
    return SimulationResult(
        cycle_service_level=float(1.0 - stocked_out.mean()),
        fill_rate=float(1.0 - short.sum() / max(demand.sum(), 1e-9)),
        stockout_days=int((short > 1e-9).sum()),
        units_short=float(short.sum()),
        average_inventory=float(end_stock.mean()),
        on_hand=end_stock,
        short=short,
    )


@dataclass(frozen=True)
class PolicyInputs:
    """Everything the three rules need on each test day ``t`` (index 0 .. T-1), per series.

    ``protection``: model samples of protection-period demand ``(T, K, N)``;
    ``point``: model mean protection-period demand ``(T, N)``; ``sigma_daily``: std of the
    last 28 days' demand ``(T, N)``; ``naive_point``: seasonal-naive protection demand
    ``(T, N)``; ``naive_errors``: past errors of that rule ``(N, E)`` per series;
    ``demand``: actual demand ``(T, N)``.
    """

    protection: np.ndarray
    point: np.ndarray
    sigma_daily: np.ndarray
    naive_point: np.ndarray
    naive_errors: list[np.ndarray]
    demand: np.ndarray
    series_ids: list[str]
    dates: pd.DatetimeIndex


def model_inputs(model, panel: Panel, test_days: int, lead_time: int, review_period: int, num_samples: int,
                 seed: int, progress=None) -> PolicyInputs:
    """Forecast sample paths from every test-day origin and collect the rules' inputs.

    Every series must have the same last day (the test days are the last ``test_days``).
    """
    protect = lead_time + review_period
    ends = {s.dates[-1] for s in panel.series}
    if len(ends) != 1:
        raise ValueError("the inventory backtest needs series that end on the same day")
    protection, point, sigma, naive_point, demand = [], [], [], [], []
    for step in range(test_days):
        keep = [len(s) - test_days + step for s in panel.series]  # days before day t
        known = panel.truncate(keep)
        sampled = model.forecast(known, protect, num_samples, seed=seed + step)
        paths = sampled.samples.reshape(num_samples, len(panel.series), protect)  # series-major columns
        samples = protection_demand(paths, protect)  # (K, N)
        protection.append(samples)
        point.append(samples.mean(axis=0))
        sigma.append(np.array([s.target[max(0, keep[k] - SIGMA_DAYS): keep[k]].std()
                               for k, s in enumerate(panel.series)]))
        naive_point.append(np.array([_naive_sum(s.target, keep[k], protect) for k, s in enumerate(panel.series)]))
        demand.append(np.array([s.target[keep[k]] for k, s in enumerate(panel.series)]))
        if progress:
            progress(step + 1, test_days)
    first_test = {k: len(s) - test_days for k, s in enumerate(panel.series)}
    errors = [_naive_errors(s.target, first_test[k], protect) for k, s in enumerate(panel.series)]
    dates = panel.series[0].dates[-test_days:]
    return PolicyInputs(np.stack(protection), np.stack(point), np.stack(sigma), np.stack(naive_point), errors,
                        np.stack(demand).astype(float), panel.series_ids, dates)


def _naive_sum(y: np.ndarray, t: int, days: int, period: int = 7) -> float:
    """Seasonal-naive forecast of days ``t .. t+days-1`` summed (needs ``days <= period``)."""
    return float(sum(y[t + j - period] for j in range(days)))


def _naive_errors(y: np.ndarray, end: int, days: int, period: int = 7) -> np.ndarray:
    """Actual minus seasonal-naive protection demand for every origin before ``end``."""
    origins = range(period, end - days + 1)
    return np.array([y[t : t + days].sum() - _naive_sum(y, t, days, period) for t in origins] or [0.0])


def bayesian_levels(inputs: PolicyInputs, service_level: float) -> np.ndarray:
    return np.stack([cycle_service_level(samples, service_level).level for samples in inputs.protection])


def safety_factor_levels(inputs: PolicyInputs, k: float, protect_days: int) -> np.ndarray:
    return inputs.point + k * inputs.sigma_daily * np.sqrt(protect_days)


def naive_levels(inputs: PolicyInputs, service_level: float) -> np.ndarray:
    margin = np.array([np.quantile(e, service_level) for e in inputs.naive_errors])
    return np.maximum(inputs.naive_point + margin[None, :], 0.0)


@dataclass(frozen=True)
class InventoryBacktest:
    table: pd.DataFrame  # one row per policy
    curves: dict[str, pd.DataFrame]  # policy -> service level vs average inventory sweep
    tuned_k: float
    service_level: float
    lead_time: int
    review_period: int


def run_policies(inputs: PolicyInputs, service_level: float, lead_time: int, review_period: int) -> InventoryBacktest:
    """Simulate the three rules (and their service-vs-inventory curves) on ``inputs``."""
    protect = lead_time + review_period

    def run(levels):
        return simulate(levels, inputs.demand, lead_time, review_period)

    ours = run(bayesian_levels(inputs, service_level))
    textbook_k = float(norm.ppf(service_level))
    textbook = run(safety_factor_levels(inputs, textbook_k, protect))
    tuned_k = _tune_k(lambda k: run(safety_factor_levels(inputs, k, protect)).cycle_service_level,
                      ours.cycle_service_level)
    tuned = run(safety_factor_levels(inputs, tuned_k, protect))
    naive = run(naive_levels(inputs, service_level))
    table = pd.DataFrame([
        ours.as_row("(a) Bayesian LSTM sample paths"),
        textbook.as_row(f"(b) point + z*sigma*sqrt(L+R), k = {textbook_k:.2f}"),
        tuned.as_row(f"(b) point + k*sigma*sqrt(L+R), k = {tuned_k:.2f} tuned to (a)'s service"),
        naive.as_row("(c) seasonal naive + empirical quantile"),
    ])
    grid = np.array([0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99])
    curves = {
        "(a) Bayesian LSTM": _curve([run(bayesian_levels(inputs, q)) for q in grid], grid),
        "(b) point + k sigma": _curve([run(safety_factor_levels(inputs, float(norm.ppf(q)), protect))
                                       for q in grid], grid),
        "(c) seasonal naive": _curve([run(naive_levels(inputs, q)) for q in grid], grid),
    }
    return InventoryBacktest(table, curves, tuned_k, service_level, lead_time, review_period)


def stock_at_service(curve: pd.DataFrame, service_level: float) -> float:
    """Average stock a rule needs for ``service_level``, interpolated along its sweep
    (NaN when the sweep does not reach it)."""
    ordered = curve.sort_values("cycle_service_level")
    achieved = ordered["cycle_service_level"].to_numpy()
    if not achieved[0] <= service_level <= achieved[-1]:
        return float("nan")
    return float(np.interp(service_level, achieved, ordered["average_inventory"].to_numpy()))


def _curve(results: list[SimulationResult], grid: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"target": grid, "cycle_service_level": [r.cycle_service_level for r in results],
                         "average_inventory": [r.average_inventory for r in results]})


def _tune_k(achieved, target: float, low: float = -2.0, high: float = 8.0, steps: int = 40) -> float:
    """Smallest ``k`` whose achieved service level reaches ``target`` (bisection; the achieved
    level is non-decreasing in ``k``)."""
    if achieved(high) < target:
        return high
    for _ in range(steps):
        mid = 0.5 * (low + high)
        if achieved(mid) >= target:
            high = mid
        else:
            low = mid
    return high
