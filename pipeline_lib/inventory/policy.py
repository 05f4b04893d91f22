"""Order-up-to levels from sampled demand over the protection period. Pure numpy.

Periodic review with review period ``R`` days and lead time ``L`` days: an order placed on
day ``t`` arrives on day ``t + L`` and must last until the next order arrives, on
``t + R + L``. The stock must therefore *protect* against the demand of days
``t .. t + L + R - 1`` (``L + R`` days). That demand is the **sum of each joint sample
path** over those days: adding per-day quantiles instead would assume perfectly
correlated days and overstock, while treating them as independent understates the risk
when demand moves together (a sample path keeps one weight draw and feeds its own
samples back, so it carries the correlation).

Targets:

- cycle service level ``a``: P(no stockout before the next order arrives) = ``a``
  -> the ``a``-quantile of protection-period demand;
- fill rate ``b``: expected units short <= ``(1 - b)`` x expected demand (per review
  period) -> the smallest level meeting it, from the same samples;
- newsvendor costs ``c_under``, ``c_over`` -> the critical ratio ``c_u / (c_u + c_o)``.

Safety stock = order-up-to level - mean protection-period demand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OrderUpTo:
    """Per series ``(N,)``: level to order up to, its safety stock, and the mean demand."""

    level: np.ndarray
    safety_stock: np.ndarray
    mean_demand: np.ndarray

    def order_quantity(self, inventory_position: np.ndarray) -> np.ndarray:
        """Units to order now: up to the level from on hand + on order - backorders."""
        return np.maximum(self.level - np.asarray(inventory_position, dtype=float), 0.0)


def protection_demand(paths: np.ndarray, days: int) -> np.ndarray:
    """Sum of the first ``days`` days of each sample path: ``(K, N, H) -> (K, N)``."""
    if paths.ndim != 3:
        raise ValueError(f"sample paths must be (samples, series, days), got shape {paths.shape}")
    if not 1 <= days <= paths.shape[2]:
        raise ValueError(f"protection period of {days} days needs paths of at least that many days, "
                         f"got {paths.shape[2]}")
    return paths[:, :, :days].sum(axis=2)


def critical_ratio(cost_under: float, cost_over: float) -> float:
    """Newsvendor: the cycle service level that minimises expected cost per unit short/over."""
    if cost_under <= 0 or cost_over <= 0:
        raise ValueError("understock and overstock costs must be positive")
    return cost_under / (cost_under + cost_over)


def cycle_service_level(demand: np.ndarray, level: float) -> OrderUpTo:
    """``demand``: samples ``(K, N)`` of protection-period demand; ``level`` in (0, 1)."""
    _check_level(level)
    up_to = np.quantile(demand, level, axis=0, method="inverted_cdf")
    mean = demand.mean(axis=0)
    return OrderUpTo(up_to, up_to - mean, mean)


def fill_rate(demand: np.ndarray, target: float, review_demand: np.ndarray | None = None) -> OrderUpTo:
    """Smallest level whose expected shortage ``E[(D - S)+]`` is at most ``(1 - target)``
    times the expected demand of one review period (``review_demand`` samples ``(K, N)``;
    default: the protection-period demand itself, i.e. R covers the whole period).

    ``E[(D - S)+]`` is piecewise linear and decreasing in ``S``; it is evaluated at every
    sample value (the candidates where its slope changes) and interpolated between them.
    """
    _check_level(target)
    per_review = (demand if review_demand is None else review_demand).mean(axis=0)  # (N,)
    allowed = (1.0 - target) * per_review
    ordered = np.sort(demand, axis=0)  # (K, N) candidate levels
    k = ordered.shape[0]
    # E[(D - s_j)+] at s_j = j-th order statistic: mean of the k - j - 1 larger samples minus s_j.
    tail_sums = np.cumsum(ordered[::-1], axis=0)[::-1]  # sum of samples from j to the end
    larger = np.vstack([tail_sums[1:], np.zeros((1, ordered.shape[1]))])
    shortage = (larger - ordered * (k - 1 - np.arange(k))[:, None]) / k  # (K, N), decreasing in j
    meets = shortage <= allowed[None, :]
    first = np.argmax(meets, axis=0)  # first candidate meeting the target (the max always does: shortage 0)
    level = ordered[first, np.arange(ordered.shape[1])]
    # Between the previous candidate and this one the shortage falls linearly: interpolate.
    prev = np.maximum(first - 1, 0)
    s0, s1 = ordered[prev, np.arange(len(first))], level
    e0, e1 = shortage[prev, np.arange(len(first))], shortage[first, np.arange(len(first))]
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where((first > 0) & (e0 > e1), (e0 - allowed) / (e0 - e1), 1.0)
    level = np.where(first > 0, s0 + np.clip(fraction, 0.0, 1.0) * (s1 - s0), level)
    mean = demand.mean(axis=0)
    return OrderUpTo(level, level - mean, mean)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"service level must lie strictly between 0 and 1, got {level}")


ORDER_COLUMNS = ("order_up_to", "safety_stock")


def order_columns(samples: np.ndarray, n_series: int, horizon: int, service_level: float,
                  protection_days: int) -> dict[str, np.ndarray]:
    """Order-up-to level and safety stock for an order placed on each forecast day.

    ``samples``: joint paths ``(K, n_series * horizon)``, series-major (as
    ``ForecastModel.forecast`` returns them). The row of day ``h`` gets the level
    protecting days ``h .. h + protection_days - 1``; rows too close to the end of the
    horizon to cover that period get NaN. Returns two ``(n_series * horizon,)`` arrays.
    """
    paths = samples.reshape(samples.shape[0], n_series, horizon)
    level = np.full((n_series, horizon), np.nan)
    safety = np.full((n_series, horizon), np.nan)
    for h in range(horizon - protection_days + 1):
        result = cycle_service_level(paths[:, :, h:h + protection_days].sum(axis=2), service_level)
        level[:, h], safety[:, h] = result.level, result.safety_stock
    return {"order_up_to": level.ravel(), "safety_stock": safety.ravel()}
