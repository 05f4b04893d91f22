"""Daily prediction-interval coverage (PIC) from stored forecasts and actuals. Pure functions.

For a day ``D``, every series may have several forecasts that targeted it (issued 1, 2, ..
days before). The headline ``overall`` PIC uses each series' most recent forecast (the
smallest horizon); ``hNN`` scopes use all forecasts issued ``NN`` days ahead; segment
scopes split the headline forecasts by their mean (slow / medium / fast movers).

The ``protection`` scope is the coverage the orders live on: of the series whose order-up-to
level was set on day ``D - P + 1`` (``P`` = lead time + review period), the share whose demand
over days ``D - P + 1 .. D`` stayed within it (:func:`protection_coverage`). With
``monitoring.breach_rule: protection`` it, not ``overall``, decides breaches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from pipeline_lib.config import PipelineConfig
from pipeline_lib.contract import interval_columns
from pipeline_lib.evaluation.metrics import inside_interval

OVERALL = "overall"
PROTECTION = "protection"  # a coverage scope and a breach rule
OK, PARTIAL, PENDING = "ok", "partial", "pending"
THRESHOLD, BINOMIAL = "threshold", "binomial"


@dataclass(frozen=True)
class BreachRule:
    """When a day's PIC counts as a breach (``monitoring.breach_rule``).

    ``threshold`` (the source's rule, the default): PIC below ``threshold``.
    ``protection``: the same threshold on the orders' coverage (the ``protection`` scope),
    which then decides breaches instead of the one-day PIC.
    ``binomial``: the covered count is significantly low for a calibrated ``level``
    interval: ``P(X <= covered) < alpha`` for ``X ~ Binomial(n, level)``. It scales with the
    number of series (with 50 series a PIC of 0.88 is common chance, 0.84 is not; with 5,000
    series 0.94 already is not) but assumes independent series; holidays that move every
    series together make breaches likelier than it says (see :func:`breach_probability`).
    """

    level: float
    threshold: float
    rule: str = THRESHOLD
    alpha: float = 0.01

    @classmethod
    def of(cls, config: PipelineConfig) -> BreachRule:
        mon = config.monitoring
        return cls(config.evaluation.nominal_level, mon.pic_threshold, mon.breach_rule, mon.breach_alpha)

    @property
    def deciding_scope(self) -> str:
        """The coverage scope whose breach flag drives alerts and retrains."""
        return PROTECTION if self.rule == PROTECTION else OVERALL

    def describe(self) -> str:
        """How a breach day's coverage is described in alerts."""
        if self.rule == BINOMIAL:
            return f"significantly low (one-sided binomial test at {self.alpha:g})"
        return f"below the {self.threshold:.0%} threshold"

    def __call__(self, covered: int, n: int) -> bool:
        if n <= 0:
            raise ValueError("a breach needs at least one observed series")
        if self.rule == BINOMIAL:
            return bool(stats.binom.cdf(covered, n, self.level) < self.alpha)
        return covered / n < self.threshold


def breach_probability(rule: BreachRule, n: int, correlation: float = 0.0) -> float:
    """Probability that a calibrated model's day is a breach under ``rule`` with ``n``
    series whose coverage indicators have intra-day correlation ``correlation`` (0 =
    independent; the covered count is then beta-binomial with that intra-class correlation)."""
    covered = np.arange(n + 1)
    if correlation <= 0:
        pmf = stats.binom.pmf(covered, n, rule.level)
    else:
        concentration = 1.0 / correlation - 1.0
        pmf = stats.betabinom.pmf(covered, n, rule.level * concentration, (1 - rule.level) * concentration)
    return float(sum(p for c, p in zip(covered, pmf, strict=True) if rule(int(c), n)))


def protection_covered(levels: np.ndarray, demand: np.ndarray, protection_days: int) -> np.ndarray:
    """Whether each order-up-to level held: ``(T, N)`` levels set on days ``0 .. T-1`` (each
    protecting its day and the ``protection_days - 1`` after it) and the ``(T, N)`` demand of
    the same days -> ``(T - protection_days + 1, N)``: row ``t`` is True where the demand of
    days ``t .. t + protection_days - 1`` did not exceed day ``t``'s level. This is the
    coverage a planner's orders live on (a one-day interval can cover while the orders fall
    short); a level set at service level ``s`` holds with probability at least ``s``."""
    levels, demand = np.asarray(levels, dtype=float), np.asarray(demand, dtype=float)
    if levels.shape != demand.shape or levels.ndim != 2:
        raise ValueError(f"levels {levels.shape} and demand {demand.shape} must both be (days, series)")
    if protection_days < 1:
        raise ValueError(f"protection_days must be at least 1, got {protection_days}")
    if len(demand) < protection_days:
        return np.zeros((0, demand.shape[1]), dtype=bool)
    cumulative = np.concatenate([np.zeros((1, demand.shape[1])), np.cumsum(demand, axis=0)])
    period = cumulative[protection_days:] - cumulative[:-protection_days]
    # A relative tolerance, so a level equal to the demand's sum holds despite rounding.
    return period <= levels[:len(period)] * (1 + 1e-9) + 1e-9


def protection_coverage(orders: pd.DataFrame, demand: pd.DataFrame, protection_days: int, service_level: float,
                        rule: BreachRule) -> dict | None:
    """The ``protection`` coverage row of a day ``D`` (fields as :func:`daily_coverage`'s rows).

    ``orders``: ``series_id, model_version, order_up_to`` of the levels set on day
    ``D - protection_days + 1``; ``demand``: ``series_id, date, actual`` of the days
    ``D - protection_days + 1 .. D``. A series is observed once all ``protection_days`` actuals
    are in; ``picp`` is the share of observed series whose demand over the period stayed
    within their level (:func:`protection_covered`), judged against ``rule.threshold`` once
    every series is observed. ``None`` when no level was set that day.
    """
    orders = orders[orders["order_up_to"].notna()]
    if orders.empty:
        return None
    days = demand.groupby("series_id")["actual"].agg(["sum", "count"])
    joined = orders.join(days, on="series_id")
    observed = joined[joined["count"] == protection_days]
    n, expected = len(observed), len(joined)
    status = PENDING if n == 0 else (PARTIAL if n < expected else OK)
    picp = breach = None
    if n:
        held = protection_covered(observed["order_up_to"].to_numpy()[None], observed["sum"].to_numpy()[None], 1)[0]
        picp = float(held.mean())
        breach = rule(int(held.sum()), n) if status == OK else None
    return {"scope": PROTECTION, "level": float(service_level),
            "model_version": ",".join(sorted(set(joined["model_version"].astype(str)))), "status": status,
            "picp": picp, "mpiw": None, "n": n, "expected": expected, "breach": breach}


def segment_names(edges: tuple[float, ...]) -> list[str]:
    """``(10, 50)`` -> ``['slow', 'medium', 'fast']``; other edge counts get ``seg0..``."""
    if len(edges) == 2:
        return ["slow", "medium", "fast"]
    return [f"seg{k}" for k in range(len(edges) + 1)]


def segment_of(mean: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Segment name of each forecast mean (units/day); edges are left-closed."""
    names = np.array(segment_names(edges), dtype=object)
    return names[np.searchsorted(np.asarray(edges, dtype=float), np.asarray(mean, dtype=float), side="right")]


def daily_coverage(forecasts: pd.DataFrame, actuals: pd.DataFrame, breach: BreachRule,
                   segment_edges: tuple[float, ...]) -> list[dict]:
    """Coverage rows of one day.

    ``forecasts``: store rows targeting the day (``series_id, horizon, model_version`` and
    the quantile columns); ``actuals``: ``series_id, actual``. Returns one dict per scope
    with ``scope, level, model_version, status, picp, mpiw, n, expected, breach``. A day
    without any actual is ``pending`` (PIC unknown, not 0); with some missing ``partial``
    (PIC of those present, ``breach`` left open until the rest arrive). Only the
    ``overall`` scope decides breaches; other scopes report ``breach`` for reading.
    """
    if forecasts.empty:
        return []
    lower, upper = interval_columns(breach.level)
    joined = forecasts.merge(actuals[["series_id", "actual"]], on="series_id", how="left")
    latest = joined.sort_values(["series_id", "horizon"]).drop_duplicates("series_id", keep="first")
    rows = [_scope_row(OVERALL, latest, lower, upper, breach)]
    for horizon, group in joined.groupby("horizon", sort=True):
        rows.append(_scope_row(f"h{int(horizon):02d}", group, lower, upper, breach))
    segments = segment_of(latest["mean"].to_numpy(), segment_edges)
    for name in segment_names(segment_edges):
        group = latest[segments == name]
        if len(group):
            rows.append(_scope_row(f"segment:{name}", group, lower, upper, breach))
    return rows


def _scope_row(scope: str, group: pd.DataFrame, lower: str, upper: str, breach_rule: BreachRule) -> dict:
    observed = group[group["actual"].notna()]
    n, expected = len(observed), len(group)
    status = PENDING if n == 0 else (PARTIAL if n < expected else OK)
    versions = ",".join(sorted(set(group["model_version"].astype(str))))
    picp = mpiw = breach = None
    if n:
        covered = inside_interval(observed["actual"], observed[lower], observed[upper])
        picp = float(np.mean(covered))
        mpiw = float((observed[upper] - observed[lower]).mean())
        # A partial day is judged once its actuals are complete (a rerun re-evaluates it):
        # an alert raised on a third of the series could not be taken back.
        breach = breach_rule(int(covered.sum()), n) if status == OK else None
    return {"scope": scope, "level": float(breach_rule.level), "model_version": versions, "status": status,
            "picp": picp, "mpiw": mpiw, "n": n, "expected": expected, "breach": breach}
