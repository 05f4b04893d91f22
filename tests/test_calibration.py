"""PIT recalibration against a closed form: a Normal forecast that is too narrow."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipeline_lib.evaluation import metrics as m
from pipeline_lib.evaluation.calibration import PitRecalibration


def test_recalibration_restores_the_coverage_of_an_overconfident_forecast():
    """Truth N(mu, 1), forecast N(mu, 0.8^2): its 90% interval covers about 81%. Fitted on
    one set of days, the recalibration widens the next days' intervals to about 90%, and
    maps the nominal level tau to the raw level Phi(Phi^-1(tau) / 0.8) (closed form)."""
    rng = np.random.default_rng(0)

    def days(n):
        mu = rng.normal(0, 3, n)
        return mu + rng.normal(0, 1, n), mu + 0.8 * rng.standard_normal((400, n))

    y_fit, samples_fit = days(3000)
    recalibration = PitRecalibration.fit(m.probability_integral_transform(y_fit, samples_fit))
    tau = np.array([0.05, 0.25, 0.75, 0.95])
    np.testing.assert_allclose(recalibration.level(tau), stats.norm.cdf(stats.norm.ppf(tau) / 0.8), atol=0.02)
    y, samples = days(3000)
    raw = m.prediction_interval_coverage(y, *m.interval_from_samples(samples, 0.9))
    fixed = m.prediction_interval_coverage(y, *m.interval_from_samples(recalibration.apply(samples), 0.9))
    assert raw == pytest.approx(2 * stats.norm.cdf(1.645 * 0.8) - 1, abs=0.03)
    assert fixed == pytest.approx(0.90, abs=0.02)


def test_identity_keeps_samples_and_ranks():
    samples = np.random.default_rng(1).gamma(2.0, size=(50, 7))
    np.testing.assert_allclose(PitRecalibration.identity().apply(samples), samples)
    widened = PitRecalibration.fit(np.random.default_rng(2).beta(0.5, 0.5, 500)).apply(samples)
    # A monotone map within each column (each sample keeps its rank), so joint sample paths
    # keep their dependence; and the samples did move.
    in_raw_order = np.take_along_axis(widened, np.argsort(samples, axis=0), axis=0)
    assert (np.diff(in_raw_order, axis=0) >= 0).all() and not np.allclose(widened, samples)
    with pytest.raises(ValueError, match="at least 20"):
        PitRecalibration.fit(np.full(5, 0.5))


def test_paths_are_recalibrated_by_days_ahead():
    """Paths whose spread falls further behind the truth's each day ahead (forecast N(mu, 1),
    truth N(mu, (1 + 0.025 (h - 1))^2) on day h): one range of days ahead, fitted on other
    paths, brings each range's 90% interval to about 90%, and leaves day 1 alone. (The truth
    stays within the raw samples' range: a remap of samples cannot widen beyond it.)"""
    from pipeline_lib.evaluation.calibration import HorizonRecalibration

    rng = np.random.default_rng(3)
    horizon, n_series = 28, 400

    def paths():
        days = np.tile(np.arange(1, horizon + 1), n_series)
        mu = rng.normal(0, 3, len(days))
        truth = mu + (1 + 0.025 * (days - 1)) * rng.standard_normal(len(days))
        return truth, mu + rng.standard_normal((300, len(days))), days

    y_fit, samples_fit, days_fit = paths()
    recalibration = HorizonRecalibration.fit(m.probability_integral_transform(y_fit, samples_fit), days_fit)
    assert recalibration.first_days == (2, 8, 15)
    assert recalibration.bucket_of(np.array([1, 2, 7, 8, 14, 15, 28, 60])).tolist() == [-1, 0, 0, 1, 1, 2, 2, 2]
    y, samples, days = paths()
    fixed = recalibration.apply(samples, days)
    np.testing.assert_array_equal(fixed[:, days == 1], samples[:, days == 1])
    for first, last in ((2, 7), (8, 14), (15, 28)):
        chosen = (days >= first) & (days <= last)
        raw = m.prediction_interval_coverage(y[chosen], *m.interval_from_samples(samples[:, chosen], 0.9))
        covered = m.prediction_interval_coverage(y[chosen], *m.interval_from_samples(fixed[:, chosen], 0.9))
        assert raw < {2: 0.89, 8: 0.83, 15: 0.76}[first] and covered == pytest.approx(0.90, abs=0.02), (
            first, raw, covered)
    assert HorizonRecalibration.fit(np.full(50, 0.5), np.full(50, 3)) is None  # too few points


def test_orders_above_what_the_samples_and_their_recalibration_resolve_are_named():
    """A recalibration whose calibration days' actuals fell above every sample 3% of the time
    reads the largest sample from level 0.97 up (the first grid level whose PIT quantile is
    1, computed here directly); the forecast's order check names the tighter of that and the
    sample count's (K - 1) / K, and only the path buckets the protection period uses."""
    from types import SimpleNamespace

    from pipeline_lib.config import PipelineConfig
    from pipeline_lib.evaluation.calibration import HorizonRecalibration
    from pipeline_lib.forecasting.batch import order_resolution

    rng = np.random.default_rng(5)
    pit = np.concatenate([rng.uniform(0, 0.999, 970), np.ones(30)])
    short_tail = PitRecalibration.fit(pit)
    grid = np.linspace(0, 1, 201)
    expected = grid[np.argmax(np.quantile(pit, grid) >= 1.0)]
    assert short_tail.saturation_level() == expected and 0.965 <= expected <= 0.975
    assert PitRecalibration.identity().saturation_level() == 1.0
    assert PitRecalibration.fit(rng.uniform(0, 0.999, 1000)).saturation_level() == 1.0

    honest = PitRecalibration.fit(rng.uniform(0, 0.999, 1000))
    paths = HorizonRecalibration((2, 8), (short_tail, honest))
    late_only = HorizonRecalibration((2, 8), (honest, short_tail))
    config = PipelineConfig(inventory={"service_level": 0.98})  # lead time 2 + review 1: days 1-3
    assert order_resolution(config, SimpleNamespace(calibration=honest, path_calibration=late_only), 100) is None
    warning = order_resolution(config, SimpleNamespace(calibration=honest, path_calibration=paths), 100)
    assert warning.startswith(f"inventory.service_level 0.98 is above what this model's orders resolve "
                              f"(about {expected:g}, set by the sample paths' recalibration)")
    few = order_resolution(config, SimpleNamespace(calibration=honest, path_calibration=None), 20)
    assert "(about 0.95, set by 20 sample paths)" in few
    assert order_resolution(config.updated(inventory={"service_level": 0.95}),
                            SimpleNamespace(calibration=honest, path_calibration=None), 20) is None
