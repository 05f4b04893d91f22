"""PIT recalibration against a closed form: a Normal forecast that is too narrow."""

from __future__ import annotations

import json

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


def test_tails_let_the_recalibration_reach_beyond_the_samples_range():
    """Truth N(mu, 2^2), forecast N(mu, 1) with 100 samples: the calibrated 95% interval
    (+-3.92) lies beyond the samples' range (+-2.6 or so), so a remap of the samples stays
    stuck near 78% coverage. With tails, the PITs of the actuals beyond the samples say how
    far out they fell, and the remap extrapolates by as much: every band is met, and the
    farthest extrapolation stays within MAX_TAIL_MULTIPLE tail scales of the largest sample."""
    from pipeline_lib.evaluation.calibration import MAX_TAIL_MULTIPLE, recalibration_pit, tail_scales

    rng = np.random.default_rng(11)

    def days(n):
        mu = rng.normal(0, 3, n)
        return mu + 2.0 * rng.standard_normal(n), mu + rng.standard_normal((100, n))

    y_fit, samples_fit = days(4000)
    y, samples = days(4000)
    stuck = PitRecalibration.fit(recalibration_pit(y_fit, samples_fit, tails=False))
    reaching = PitRecalibration.fit(recalibration_pit(y_fit, samples_fit, tails=True), tails=True)
    for level, band in ((0.8, 0.02), (0.9, 0.02), (0.95, 0.015)):
        covered = m.prediction_interval_coverage(y, *m.interval_from_samples(reaching.apply(samples), level))
        assert covered == pytest.approx(level, abs=band), (level, covered)
    assert m.prediction_interval_coverage(y, *m.interval_from_samples(stuck.apply(samples), 0.95)) < 0.8
    upper, _ = tail_scales(np.sort(samples, axis=0))
    assert (reaching.apply(samples).max(axis=0) <= samples.max(axis=0) + MAX_TAIL_MULTIPLE * upper + 1e-9).all()
    assert PitRecalibration.from_dict(vars(reaching)) == reaching
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # far beyond either end: PIT 0 or 1
        far = recalibration_pit(np.array([-1e6, 1e6]), samples[:, :2], tails=True)
    assert far.tolist() == [0.0, 1.0]
    assert not PitRecalibration.from_dict({"levels": [0.0, 1.0], "n_calibration": 0}).tails  # files before tails


def test_tails_of_count_forecasts_stay_whole_non_negative_units():
    """Counts: the extrapolated samples are whole units, never below 0, and an actual tied
    with the largest sample keeps a PIT below the tail's share (so it does not read as
    "beyond")."""
    from pipeline_lib.evaluation.calibration import recalibration_pit

    rng = np.random.default_rng(12)
    samples = rng.poisson(5, (100, 3000)).astype(float)
    truth = rng.poisson(5, 3000) * rng.choice([1, 2], 3000)  # half of the days double: beyond the samples
    reaching = PitRecalibration.fit(recalibration_pit(truth, samples, tails=True), tails=True)
    out = reaching.apply(samples)
    assert np.array_equal(out, np.round(out)) and out.min() >= 0 and out.max() > samples.max()
    top = samples.max(axis=0)
    pit_at_top = recalibration_pit(top, samples, tails=True)
    assert (pit_at_top <= 1 - 0.5 / 100 + 1e-12).all() and (pit_at_top < 1).all()


def test_maps_by_series_correct_each_series_bias_shrunk_towards_the_global_map(monkeypatch):
    """Forecast N(0, 1) for every series; series 0-19 sell N(+1, 1), series 20-39 N(-1, 1).
    A series' PITs then have the CDF ``F_s(u) = Phi(Phi^-1(u) -+ 1)`` (closed form) and the
    pooled ones the average ``F``; its map must invert ``w F_s + (1 - w) F`` with
    ``w = n / (n + SERIES_PRIOR_DAYS)``. On later days its 90% intervals cover about 90% in
    each group and are far narrower than the global map's, which must widen every series
    alike to cover both biases."""
    from scipy import optimize

    from pipeline_lib.evaluation import calibration

    rng = np.random.default_rng(3)
    bias = np.repeat([1.0, -1.0], 20)
    ids = np.array([f"sku-{s}" for s in range(40)])

    def days(n):
        series = np.repeat(np.arange(40), n)
        return bias[series] + rng.standard_normal(len(series)), rng.standard_normal((400, len(series))), ids[series]

    y, samples, series_ids = days(400)
    pit = m.probability_integral_transform(y, samples, rng)
    fitted = PitRecalibration.fit(pit, series_ids=series_ids)
    assert sorted(fitted.by_series) == sorted(ids) and all(len(v) == 400 for v in fitted.by_series.values())
    w = 400 / (400 + calibration.SERIES_PRIOR_DAYS)

    def closed_form(tau, b):
        def mixed(u):
            return w * stats.norm.cdf(stats.norm.ppf(u) - b) + (1 - w) * np.mean(
                [stats.norm.cdf(stats.norm.ppf(u) - c) for c in (1.0, -1.0)]) - tau
        return optimize.brentq(mixed, 1e-9, 1 - 1e-9)

    tau = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    for group, b in ((bias > 0, 1.0), (bias < 0, -1.0)):  # averaged over a group's 20 series against the noise
        mean_map = np.mean([fitted.level(tau, series_id) for series_id in ids[group]], axis=0)
        np.testing.assert_allclose(mean_map, [closed_form(t, b) for t in tau], atol=0.015)
    # A series without PITs of its own, and columns without series ids, get the global map.
    np.testing.assert_array_equal(fitted.level(tau, "new-sku"), fitted.level(tau))
    global_map = PitRecalibration(fitted.levels, fitted.n_calibration)
    np.testing.assert_array_equal(fitted.apply(samples[:, :5]), global_map.apply(samples[:, :5]))
    beside_new = fitted.apply(samples[:, :5], np.r_[series_ids[:3], ["new-sku"] * 2])
    np.testing.assert_array_equal(beside_new[:, 3:], global_map.apply(samples[:, 3:5]))
    np.testing.assert_array_equal(beside_new[:, :3], fitted.apply(samples[:, :3], series_ids[:3]))
    assert not np.allclose(beside_new[:, :3], global_map.apply(samples[:, :3]))
    # Saved as JSON and read back, the maps are the same.
    again = PitRecalibration.from_dict(json.loads(json.dumps(vars(fitted))))
    np.testing.assert_array_equal(again.level(tau, "sku-7"), fitted.level(tau, "sku-7"))

    y, samples, series_ids = days(200)
    widths = {}
    for name, recalibration in (("by series", fitted), ("global", global_map)):
        lower, upper = m.interval_from_samples(recalibration.apply(samples, series_ids), 0.9)
        widths[name] = np.mean(upper - lower)
        for group in (bias > 0, bias < 0):
            inside = np.isin(series_ids, ids[group])
            # Both cover 90% in each group (the biases are symmetric, so the global map's
            # widening covers each group alike) ...
            assert m.prediction_interval_coverage(y[inside], lower[inside], upper[inside]) == pytest.approx(
                0.9, abs=0.03), name
    # ... but only the maps by series centre each interval on its series: N(0, 1)'s 90%
    # width is 3.29, the global map's must cover N(+-1, 1) and is about 4.3.
    assert widths["by series"] < 0.85 * widths["global"], widths
    # With no weight on the pooled PITs a series' map is its own PITs' quantiles (read
    # between order statistics, Hyndman and Fan's type 4).
    monkeypatch.setattr(calibration, "SERIES_PRIOR_DAYS", 0.0)
    own = rng.beta(2.0, 5.0, 56)  # continuous PITs: no ties
    alone = PitRecalibration.fit(np.r_[own, rng.uniform(size=500)], series_ids=np.r_[["a"] * 56, ["b"] * 500])
    np.testing.assert_allclose(alone.level(tau, "a"), np.quantile(own, tau, method="interpolated_inverted_cdf"),
                               atol=1e-3)
