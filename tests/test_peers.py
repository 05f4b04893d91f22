"""Peer models scored side by side with the Bayesian LSTM."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline_lib.config import DataConfig
from pipeline_lib.data.features import WindowSet
from pipeline_lib.data.validate import validate_table
from pipeline_lib.evaluation.baselines import seasonal_naive_samples
from tests.conftest import synthetic_demand


def test_seasonal_naive_is_last_week_plus_empirical_residual_quantiles():
    panel = validate_table(synthetic_demand(n_series=2, n_days=60), DataConfig(), 1)
    days = {0: np.array([50, 51]), 1: np.array([55])}
    samples = seasonal_naive_samples(panel, days, fit_end={0: 50, 1: 50}, num_samples=200, non_negative=False)
    assert samples.shape == (200, 3)
    y = panel.series[0].target
    residuals = y[7:50] - y[:43]
    np.testing.assert_allclose(np.median(samples[:, 0]), y[43] + np.median(residuals), atol=1.0)
    np.testing.assert_allclose(samples[:, 0].max(), y[43] + residuals.max(), atol=0.5)
    clipped = seasonal_naive_samples(panel, days, fit_end={0: 50, 1: 50}, num_samples=200)
    assert clipped.min() >= 0


@pytest.mark.model
def test_mc_dropout_samples_vary_and_include_inherent_noise():
    from pipeline_lib.model.mc_dropout import McDropoutLSTM

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 6, 3)).astype("float32")
    y = (x[:, -1, 0] + 0.5 * rng.normal(size=600)).astype("float32")
    data = WindowSet(x, y, np.zeros(600, int), np.arange(600))
    model = McDropoutLSTM(3, units=(8, 4), dropout=0.2).fit(data, data, epochs=3)
    means = model.sample_means(x[:5], num_samples=50)
    assert means.shape == (50, 5) and means.std(axis=0).min() > 0  # dropout stays on
    assert 0.3 < model.noise_std < 1.5  # residual std on validation, near the true 0.5
    samples = model.sample(x[:5], num_samples=50, samples_per_draw=4)
    assert samples.shape == (200, 5)
    assert samples.std(axis=0).mean() > means.std(axis=0).mean()  # noise term adds spread
