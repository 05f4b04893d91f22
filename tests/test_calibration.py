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
