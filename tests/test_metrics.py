"""Metrics against closed forms and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipeline_lib.contract import CRPS_LEVELS, QUANTILE_COLUMNS, QUANTILE_LEVELS, interval_columns
from pipeline_lib.evaluation import metrics as m
from pipeline_lib.evaluation.report import evaluate_samples


def normal_crps(y, mu, sigma):
    """Closed form (Gneiting & Raftery 2007)."""
    z = (y - mu) / sigma
    return sigma * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / np.sqrt(np.pi))


def test_sample_crps_matches_normal_closed_form():
    rng = np.random.default_rng(0)
    y = np.array([-2.0, 0.0, 0.7, 3.0])
    mu, sigma = np.array([0.0, 1.0, 0.5, -1.0]), np.array([1.0, 2.0, 0.3, 1.5])
    samples = mu + sigma * rng.standard_normal((40000, 4))
    np.testing.assert_allclose(m.crps_from_samples(y, samples), normal_crps(y, mu, sigma), rtol=0.02)


def test_fair_crps_is_unbiased_for_few_samples():
    rng = np.random.default_rng(1)
    y = np.zeros(20000)
    estimates = m.crps_from_samples(y, rng.standard_normal((5, 20000)))
    assert abs(estimates.mean() - normal_crps(0.0, 0.0, 1.0)) < 0.01


def test_quantile_crps_approaches_closed_form():
    y = np.array([0.3, -1.2])
    levels = np.linspace(0.005, 0.995, 199)
    quantiles = stats.norm.ppf(levels)[:, None] * np.ones((1, 2))
    np.testing.assert_allclose(m.crps_from_quantiles(y, quantiles, levels), normal_crps(y, 0, 1), rtol=0.02)


def test_coverage_width_and_interval_score_by_hand():
    y = np.array([1.0, 5.0, 10.0, 3.0])
    lower = np.array([0.0, 6.0, 0.0, 3.0])
    upper = np.array([2.0, 8.0, 9.0, 4.0])
    assert m.prediction_interval_coverage(y, lower, upper) == 0.5  # bounds count as inside
    assert m.mean_interval_width(lower, upper) == (2 + 2 + 9 + 1) / 4
    alpha = 0.2
    by_hand = np.mean([2, 2 + 2 / alpha * 1, 9 + 2 / alpha * 1, 1])
    assert np.isclose(m.interval_score(y, lower, upper, 0.8), by_hand)


def test_seasonal_scale_and_pinball():
    history = np.array([1, 2, 3, 4, 5, 6, 7, 3, 2, 3, 4, 5, 6, 7], dtype=float)
    assert np.isclose(m.seasonal_naive_scale(history), np.mean(np.abs(history[7:] - history[:-7])))
    assert m.seasonal_naive_scale(np.ones(20)) == 1.0  # constant history: finite fallback
    loss = m.pinball_loss(np.array([10.0]), np.array([[8.0], [12.0]]), [0.9, 0.9])
    np.testing.assert_allclose(loss[:, 0], [0.9 * 2, 0.1 * 2])


def test_calibrated_samples_have_flat_pit_and_nominal_coverage():
    rng = np.random.default_rng(2)
    y = rng.standard_normal(5000)
    samples = rng.standard_normal((400, 5000))
    nominal, observed = m.calibration_curve(y, samples)
    assert m.calibration_error(nominal, observed) < 0.02
    counts, _ = np.histogram(m.probability_integral_transform(y, samples), bins=10, range=(0, 1))
    assert counts.min() > 0.8 * 500
    # Intervals shrunk by half are caught.
    _, shrunk = m.calibration_curve(y, 0.5 * samples)
    assert (shrunk[-5:] < nominal[-5:] - 0.1).all()


def test_report_scales_per_series():
    rng = np.random.default_rng(3)
    y = np.concatenate([rng.normal(10, 1, 50), rng.normal(1000, 100, 50)])
    samples = np.concatenate([rng.normal(10, 1, (300, 50)), rng.normal(1000, 100, (300, 50))], axis=1)
    index = np.repeat([0, 1], 50)
    result = evaluate_samples(y, samples, index, np.array([1.0, 100.0]))
    # A calibrated Normal forecast has expected CRPS sigma / sqrt(pi); scaling each series by
    # its own sigma makes both series score the same, 1 / sqrt(pi) (23 quantiles: a bit less).
    assert abs(result["crps_scaled"] - 1 / np.sqrt(np.pi)) < 0.06
    assert abs(result["crps"] - np.mean([1, 100]) / np.sqrt(np.pi)) < 3
    assert 0.9 < result["picp_95"] <= 1.0


def test_contract_quantile_grid():
    assert len(QUANTILE_LEVELS) == 25 and len(CRPS_LEVELS) == 23
    assert "q0.05" in QUANTILE_COLUMNS and "q0.995" in QUANTILE_COLUMNS and "q0.165" in QUANTILE_COLUMNS
    assert list(QUANTILE_LEVELS) == sorted(QUANTILE_LEVELS)
    assert interval_columns(0.9) == ("q0.05", "q0.95")
    assert interval_columns(0.99) == ("q0.005", "q0.995")


def test_coverage_by_horizon_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    lower, upper = np.zeros(4), np.array([2.0, 1.0, 5.0, 5.0])
    assert m.coverage_by_horizon(y, lower, upper, np.array([1, 1, 2, 2])) == {1: 0.5, 2: 1.0}


def test_spl_is_scaled_pinball_at_the_m5_levels():
    from pipeline_lib.evaluation.report import M5_LEVELS

    rng = np.random.default_rng(5)
    y = rng.normal(size=40)
    samples = rng.normal(size=(500, 40))
    result = evaluate_samples(y, samples, np.zeros(40, int), np.array([2.0]))
    # Sample quantiles at the Weibull plotting position (contract.sample_quantiles).
    by_hand = m.pinball_loss(y, np.quantile(samples, M5_LEVELS, axis=0, method="weibull"), M5_LEVELS).mean() / 2.0
    assert np.isclose(result["spl_scaled"], by_hand)


def test_scoring_a_forecast_table_matches_scoring_its_samples():
    import pandas as pd

    from pipeline_lib.evaluation.report import score_forecast_table
    from pipeline_lib.model.forecast import forecast_table

    rng = np.random.default_rng(6)
    dates = pd.date_range("2024-01-01", periods=40, freq="D")
    history = pd.concat([pd.DataFrame({"series_id": sid, "date": dates, "target": rng.poisson(lam, 40).astype(float)})
                         for sid, lam in (("a", 5.0), ("b", 50.0))], ignore_index=True)
    test = history[history["date"] >= dates[30]]
    samples = rng.poisson(test["target"].to_numpy() + 1.0, size=(300, len(test))).astype(float)
    table = forecast_table(samples, test["series_id"], test["date"], "1")
    before = history.date < dates[30]
    scales = np.array([m.seasonal_naive_scale(history.loc[(history.series_id == s) & before, "target"])
                       for s in ("a", "b")])
    expected = evaluate_samples(test["target"].to_numpy(), samples, np.repeat([0, 1], 10), scales)
    got = score_forecast_table(table, history)
    for key in ("picp_80", "picp_90", "picp_95", "crps_scaled", "mase"):
        assert np.isclose(got[key], expected[key]), key


def test_scores_agree_with_scoringrules():
    """Our CRPS of an ensemble (the fair estimator), interval score and pinball loss against
    scoringrules, an independent implementation, on skewed integer-valued samples with ties."""
    import scoringrules as sr

    rng = np.random.default_rng(3)
    y = rng.poisson(6.0, 200).astype(float)
    samples = rng.negative_binomial(3, 0.3, size=(100, 200)).astype(float)
    np.testing.assert_allclose(m.crps_from_samples(y, samples), sr.crps_ensemble(y, samples, m_axis=0,
                                                                                  estimator="fair"), atol=1e-9)
    lower, upper = m.interval_from_samples(samples, 0.9)
    ours = m.interval_score(y, lower, upper, 0.9)
    assert ours == pytest.approx(np.mean(sr.interval_score(y, lower, upper, 0.1)), rel=1e-9)
    quantiles = np.quantile(samples, [0.1, 0.5, 0.9], axis=0)
    levels = (0.1, 0.5, 0.9)
    for k, row in enumerate(m.pinball_loss(y, quantiles, levels)):
        np.testing.assert_allclose(row, sr.quantile_score(y, quantiles[k], levels[k]), atol=1e-9)
