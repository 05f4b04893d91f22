"""Peer models scored side by side with the Bayesian LSTM."""

from __future__ import annotations

import numpy as np
import pytest
from support import synthetic_demand

from pipeline_lib.config import DataConfig
from pipeline_lib.data.features import WindowSet
from pipeline_lib.data.validate import validate_table
from pipeline_lib.evaluation.baselines import seasonal_naive_samples


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
    data = WindowSet(x, y, np.zeros(600, int), np.arange(600), np.zeros(600, np.float32))
    model = McDropoutLSTM(3, units=(8, 4), dropout=0.2).fit(data, data, epochs=3)
    means = model.sample_means(x[:5], num_samples=50)
    assert means.shape == (50, 5) and means.std(axis=0).min() > 0  # dropout stays on
    assert 0.3 < model.noise_std < 1.5  # residual std on validation, near the true 0.5
    samples = model.sample(x[:5], num_samples=50, samples_per_draw=4)
    assert samples.shape == (200, 5)
    assert samples.std(axis=0).mean() > means.std(axis=0).mean()  # noise term adds spread


def test_auto_ets_one_step_samples_match_its_own_intervals_and_cover():
    import pandas as pd
    from statsforecast.models import AutoETS

    from pipeline_lib.evaluation.metrics import interval_from_samples, prediction_interval_coverage
    from pipeline_lib.model.statistical import auto_ets_samples

    rng = np.random.default_rng(1)
    n = 160
    dates = pd.date_range("2024-01-01", periods=n, freq="D").strftime("%Y-%m-%d")
    weekly = 20 + 5 * np.sin(2 * np.pi * np.arange(n) / 7)
    frame = pd.concat([pd.DataFrame({"series_id": sid, "date": dates, "units": weekly + rng.normal(0, 1, n)})
                       for sid in ("a", "b")], ignore_index=True)
    panel = validate_table(frame, DataConfig(), 1)
    days = {0: np.arange(130, 160), 1: np.arange(130, 160)}
    samples = auto_ets_samples(panel, days, {0: 130, 1: 130}, num_samples=2000)
    assert samples.shape == (2000, 60)
    # Its 95% interval is the one statsforecast reports for the same origin.
    direct = AutoETS(season_length=7).fit(panel.series[0].target[:130]).forward(
        y=panel.series[0].target[:140], h=1, level=[95])
    lower, upper = interval_from_samples(samples, 0.95)
    assert np.isclose(upper[10], direct["hi-95"][0], rtol=1e-3) and np.isclose(lower[10], direct["lo-95"][0], rtol=1e-3)
    actuals = np.concatenate([panel.series[k].target[d] for k, d in days.items()])
    lower90, upper90 = interval_from_samples(samples, 0.9)
    assert 0.75 <= prediction_interval_coverage(actuals, lower90, upper90) <= 1.0


def test_peers_from_one_origin_read_no_actual_after_it():
    """The 28-day peers beside the LSTM's sample paths: AutoETS from one origin is
    statsforecast's own h-step forecast (its 95% interval, widening with days ahead), and
    neither it nor seasonal naive reads an actual after the origin (changing them changes
    nothing); seasonal naive takes day ``origin + 8`` from two seasons back."""
    import pandas as pd
    from statsforecast.models import AutoETS

    from pipeline_lib.evaluation.metrics import interval_from_samples
    from pipeline_lib.model.statistical import auto_ets_samples

    rng = np.random.default_rng(2)
    n, origin = 160, 130
    dates = pd.date_range("2024-01-01", periods=n, freq="D").strftime("%Y-%m-%d")
    walk = 50 + np.cumsum(rng.normal(0, 1, n))  # a random walk: uncertainty grows with days ahead
    frame = pd.DataFrame({"series_id": "a", "date": dates, "units": walk})
    panel = validate_table(frame, DataConfig(), 1)
    days = {0: np.arange(origin, n)}
    samples = auto_ets_samples(panel, days, {0: origin}, num_samples=2000, from_origin=True)
    direct = AutoETS(season_length=7).fit(panel.series[0].target[:origin]).predict(h=n - origin, level=[95])
    lower, upper = interval_from_samples(samples, 0.95)
    np.testing.assert_allclose(upper, direct["hi-95"], rtol=1e-3)
    assert upper[-1] - lower[-1] > 2 * (upper[0] - lower[0])
    changed = validate_table(frame.assign(units=np.where(np.arange(n) >= origin, 0.0, walk)), DataConfig(), 1)
    np.testing.assert_array_equal(auto_ets_samples(changed, days, {0: origin}, num_samples=2000, from_origin=True),
                                  samples)
    naive = seasonal_naive_samples(panel, days, {0: origin}, num_samples=100, non_negative=False, from_origin=True)
    np.testing.assert_array_equal(
        seasonal_naive_samples(changed, days, {0: origin}, num_samples=100, non_negative=False, from_origin=True),
        naive)
    y = panel.series[0].target
    residuals = y[14:origin] - y[:origin - 14]
    levels = (np.arange(100) + 0.5) / 100
    np.testing.assert_allclose(naive[:, 8], y[origin + 8 - 14] + np.quantile(residuals, levels))
    with pytest.raises(ValueError, match="before its origin"):
        auto_ets_samples(panel, {0: np.arange(origin - 1, n)}, {0: origin}, from_origin=True)
