"""Synthetic daily demand whose generating process is known, so the best possible
forecast is known too.

Real data cannot say how far a model is from the best forecast anyone could make. Here
every day's demand is drawn from a distribution we write down, so the *oracle* (that exact
distribution) is the physical limit: its CRPS cannot be beaten in expectation, and its
central intervals cover exactly their nominal share.

Two kinds of series (:func:`synthetic_panel`, ``kind``):

``retail``
    Zero-inflated negative binomial counts::

        mean(t) = level * trend(t) * weekly(weekday(t)) * yearly(t) * (price(t) / base_price) ** elasticity
                  * promo_lift ** promo(t) * shift(t)
        y(t) ~ pi * 0 + (1 - pi) * NegBin(mean(t), dispersion r)

    Levels span fast and slow movers (0.3-60 units a day); slow movers get zero inflation
    ``pi`` up to 0.4. ``price`` is a covariate that moves in steps; ``promo`` marks one-week
    promotions. A level shift (x0.6-1.8) happens once in the first 70% of each series.
``smooth``
    High-volume series (300-5,000 a day) with trend, weekly and yearly seasonality and noise
    proportional to the level (negative binomial with a large dispersion, coefficient of
    variation 3-8%). No covariates.

The oracle is the distribution of ``y(t)`` given ``mean(t)``: it knows the covariates of
the target day, the shift and the seasonal shape. Models see the past only, so a model
within a few percent of the oracle's CRPS has learned nearly all there is to learn.

#### Examples

```python
data = synthetic_panel("retail", n_series=50, n_days=730, seed=0)
data.frame        # long format: series_id, date, units, price, promo
data.oracle_quantiles(levels, series_index=3, days=np.arange(700, 728))  # (Q, 28)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

SyntheticKind = Literal["retail", "smooth"]
START_DATE = "2022-01-03"  # a Monday


@dataclass(frozen=True)
class SyntheticPanel:
    """Long-format data plus the exact predictive distribution of every (series, day).

    ``mean``: ``(n_series, n_days)`` mean of the negative-binomial part; ``dispersion``:
    ``(n_series,)`` its total count ``r`` (variance ``mean + mean**2 / r``); ``zero_share``:
    ``(n_series,)`` the zero-inflation probability ``pi``.
    """

    kind: str
    frame: pd.DataFrame
    mean: np.ndarray
    dispersion: np.ndarray
    zero_share: np.ndarray

    def oracle_quantiles(self, levels, series_index: int, days: np.ndarray) -> np.ndarray:
        """Exact quantiles ``(Q, len(days))`` of the zero-inflated NB at ``levels`` ``(Q,)``.

        For ``P(Y <= y) = pi + (1 - pi) F_NB(y)``, the ``tau``-quantile is 0 when
        ``tau <= pi`` and the NB quantile at ``(tau - pi) / (1 - pi)`` otherwise.
        """
        levels = np.asarray(levels, dtype=float)[:, None]
        mu = self.mean[series_index, np.asarray(days)][None, :]
        r = self.dispersion[series_index]
        pi = self.zero_share[series_index]
        inner = np.clip((levels - pi) / (1.0 - pi), 0.0, 1.0)
        quantiles = stats.nbinom.ppf(inner, r, r / (r + mu))
        return np.where(levels <= pi, 0.0, np.nan_to_num(quantiles, nan=0.0))

    def oracle_samples(self, days: dict[int, np.ndarray], num_samples: int = 1000) -> np.ndarray:
        """The oracle's quantiles at evenly spaced levels ``(j + 0.5) / num_samples`` as
        samples ``(num_samples, N)`` for ``days`` (series position -> day indices), in the
        order the evaluation uses (series by series)."""
        levels = (np.arange(num_samples) + 0.5) / num_samples
        return np.concatenate([self.oracle_quantiles(levels, k, d) for k, d in days.items()], axis=1)


def synthetic_panel(kind: SyntheticKind, n_series: int = 50, n_days: int = 730, seed: int = 0,
                    start: str = START_DATE) -> SyntheticPanel:
    """Draw ``n_series`` series of ``n_days`` days of ``kind`` demand (see the module docstring)."""
    if kind not in ("retail", "smooth"):
        raise ValueError(f"unknown synthetic kind {kind!r}: expected 'retail' or 'smooth'")
    rng = np.random.default_rng(seed)
    dates = pd.date_range(start, periods=n_days, freq="D")
    t = np.arange(n_days)
    weekday = dates.dayofweek.to_numpy()
    year_phase = 2 * np.pi * dates.dayofyear.to_numpy() / 365.25
    means, dispersions, zero_shares, parts = [], [], [], []
    for k in range(n_series):
        weekly_shape = np.exp(rng.normal(0.0, 0.25, 7))
        weekly = (weekly_shape / weekly_shape.mean())[weekday]
        amplitude = rng.uniform(0.1, 0.4)
        yearly = np.exp(amplitude * np.sin(year_phase + rng.uniform(0, 2 * np.pi)))
        trend = np.exp(rng.normal(0.0, 0.25) * t / 365.25)
        columns: dict[str, np.ndarray] = {}
        if kind == "retail":
            level = float(np.exp(rng.uniform(np.log(0.3), np.log(60.0))))
            dispersion = float(rng.uniform(1.0, 8.0))
            zero_share = float(rng.uniform(0.05, 0.4)) if level < 3.0 else 0.0
            base_price = float(rng.uniform(1.0, 20.0))
            price = base_price * _step_walk(rng, n_days, step_prob=0.02, step_std=0.08)
            elasticity = rng.uniform(-2.5, -0.5)
            promo = _promotions(rng, n_days, per_year=2.0, length=7)
            shift = np.where(t >= rng.integers(n_days // 5, int(0.7 * n_days)), rng.uniform(0.6, 1.8), 1.0)
            mean = (level * trend * weekly * yearly * (price / base_price) ** elasticity
                    * rng.uniform(1.8, 3.0) ** promo * shift)
            columns = {"price": np.round(price, 2), "promo": promo.astype(float)}
        else:
            level = float(np.exp(rng.uniform(np.log(300.0), np.log(5000.0))))
            cv = rng.uniform(0.03, 0.08)
            dispersion = float(1.0 / cv**2)  # NB variance ~ mean**2 / r at high volume
            zero_share = 0.0
            mean = level * trend * weekly * yearly
        target = rng.negative_binomial(dispersion, dispersion / (dispersion + mean))
        target = np.where(rng.uniform(size=n_days) < zero_share, 0, target)
        parts.append(pd.DataFrame({"series_id": f"{kind[0].upper()}{k:03d}", "date": dates,
                                   "units": target.astype(float), **columns}))
        means.append(mean)
        dispersions.append(dispersion)
        zero_shares.append(zero_share)
    return SyntheticPanel(kind=kind, frame=pd.concat(parts, ignore_index=True), mean=np.array(means),
                          dispersion=np.array(dispersions), zero_share=np.array(zero_shares))


def _step_walk(rng: np.random.Generator, n_days: int, step_prob: float, step_std: float) -> np.ndarray:
    """A multiplicative walk that changes on a few days only (shelf prices), starting at 1."""
    steps = np.where(rng.uniform(size=n_days) < step_prob, rng.normal(0.0, step_std, n_days), 0.0)
    steps[0] = 0.0
    return np.exp(np.cumsum(steps))


def _promotions(rng: np.random.Generator, n_days: int, per_year: float, length: int) -> np.ndarray:
    """0/1 flags of promotions of ``length`` days, about ``per_year`` of them a year."""
    flags = np.zeros(n_days, dtype=int)
    for start in np.flatnonzero(rng.uniform(size=n_days) < per_year / 365.25):
        flags[start:start + length] = 1
    return flags
