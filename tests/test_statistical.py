"""The served pool of the network with per-series ETS (``evaluation.pool_with_ets``):
ETS's one-day forecasts against statsforecast's own, the mixtures, the weight's choice, and
a training run that serves, saves and scores the pooled forecast."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsforecast.models import AutoETS
from test_quality import _small_default, _synthetic

from pipeline_lib import stages
from pipeline_lib.data.features import part_days
from pipeline_lib.data.validate import Panel, Series
from pipeline_lib.model.statistical import FIT_DAYS, EtsPool, EtsSpec, linear_pool, pool_paths


def _same(a: EtsSpec, b: EtsSpec) -> bool:
    """Equal specs (their parameters hold NaN for the components a model does not have)."""
    return json.dumps(asdict(a)) == json.dumps(asdict(b))


def _series(y: np.ndarray, start: str = "2021-01-04") -> Series:
    return Series("s", pd.date_range(start, periods=len(y)), y.astype(float), np.zeros((len(y), 0)))


@pytest.mark.parametrize("errors", ["additive", "multiplicative"])
def test_ets_one_day_forecasts_are_statsforecasts_own_from_the_days_before(errors):
    """Each day's forecast from the actuals before it equals statsforecast's ``forward`` on
    those actuals (same fitted parameters), on days after the fit and on the day after the
    data; on the first day after the fit the sd is its own 95% interval's."""
    rng = np.random.default_rng(3)
    t = np.arange(300)
    if errors == "additive":
        y = 100 + np.cumsum(rng.normal(size=300)) + 10 * np.sin(2 * np.pi * t / 7)
    else:
        y = (200 + 0.3 * t) * (1 + 0.3 * np.sin(2 * np.pi * t / 7)) * (1 + 0.05 * rng.normal(size=300))
    spec = EtsSpec.fit(_series(y), 240)
    assert spec.components[0] == ("A" if errors == "additive" else "M")
    fitted = AutoETS(season_length=7).fit(y[:240])
    days = np.array([240, 241, 265, 299, 300])
    mean, sd = spec.one_day(y, days)
    expected = [fitted.forward(y=y[:day], h=1, level=[95]) for day in days]
    np.testing.assert_allclose(mean, [e["mean"][0] for e in expected], rtol=1e-9)
    first = expected[0]
    assert sd[0] == pytest.approx((first["hi-95"][0] - first["mean"][0]) / stats.norm.ppf(0.975), rel=1e-6)
    # On a longer history ETS is fitted on its last FIT_DAYS days only, and the pool reads
    # the history from that day on: the same model and forecasts as on the cut history.
    longer = _series(np.concatenate([y.mean() + rng.normal(size=1000), y]), start="2017-01-02")
    first = len(longer) - FIT_DAYS
    cut = _series(longer.target[first:], start=str(longer.dates[first].date()))
    late = EtsSpec.fit(longer, len(longer))
    assert late.start == cut.dates[0].strftime("%Y-%m-%d") and _same(late, EtsSpec.fit(cut, len(cut)))
    pool = EtsPool(1.0, {"s": late}, whole_units=False, non_negative=False)
    expected_mean, _ = late.one_day(cut.target, np.array([20, len(cut)]))  # 20 days after its first day, and after
    served = pool.one_day_samples(Panel((longer,), (), "longer"), {0: np.array([first + 20, len(longer)])}, 3, None)
    np.testing.assert_allclose(served[1], expected_mean, rtol=1e-9)
    # A series that never moved, or too short to see two weeks, gets no ETS.
    assert EtsSpec.fit(_series(np.zeros(100)), 100) is None
    assert EtsSpec.fit(_series(y[:10]), 10) is None


@pytest.mark.parametrize("model", ["AAN", "MAN"])
def test_ets_paths_follow_statsforecasts_own_forecast_of_an_undamped_trend(model):
    """ETS paths from the end of the data: each day's mean is statsforecast's point forecast
    (which is the mean for these models), within 4 standard errors of a mean of this many
    paths, so an undamped trend is carried on every day ahead (statsforecast stores its phi
    as NaN); for additive errors the day-28 80% interval is its own, within 5%."""
    rng = np.random.default_rng(5)
    t = np.arange(200)
    noise = rng.normal(size=200)
    y = 100 + 2.0 * t + (5 * noise if model == "AAN" else (100 + 2.0 * t) * 0.02 * noise)
    fitted = AutoETS(season_length=7, model=model, damped=False).fit(y)
    spec = EtsSpec.from_statsforecast(fitted.model_, "2021-01-04")
    assert np.isnan(spec.par[3]) and spec.components[1] == "A"
    n_paths, horizon = 4000, 28
    paths = spec.paths(y, horizon, n_paths, seed=0)
    expected = fitted.predict(h=horizon, level=[80])
    standard_error = paths.std(axis=0) / np.sqrt(n_paths)
    assert (np.abs(paths.mean(axis=0) - expected["mean"]) < 4 * standard_error).all()
    if model == "AAN":
        low, high = np.quantile(paths[:, -1], [0.1, 0.9])
        assert high - low == pytest.approx(expected["hi-80"][-1] - expected["lo-80"][-1], rel=0.05)


def test_a_pool_mixes_in_proportion_and_paths_stay_whole():
    rng = np.random.default_rng(0)
    ours = rng.normal(0, 1, size=(100, 6))
    theirs = rng.normal(50, 1, size=(100, 6))
    pooled = linear_pool(ours, theirs, 0.3)
    assert pooled.shape == ours.shape
    assert ((pooled > 25).sum(axis=0) == 30).all()
    assert linear_pool(ours, theirs, 0.0) is ours
    # Paths: whole rows of each, so a path's sum over days is one source's path sum.
    paths = pool_paths(ours, theirs[:30], 0.3)
    np.testing.assert_array_equal(paths[:70], ours[:70])
    np.testing.assert_array_equal(paths[70:], theirs[:30])
    with pytest.raises(ValueError, match="ETS paths"):
        pool_paths(ours, theirs[:29], 0.3)


def test_the_weight_chosen_goes_to_the_forecast_that_is_right():
    """Actuals from N(m, 1); the other forecast is N(m + 1.5, 2): the right one gets all (or
    nearly all) of the weight, whichever side it is on; two equally wrong forecasts on either
    side of the truth are mixed about equally."""
    rng = np.random.default_rng(1)
    n, k = 2000, 200
    centre = np.repeat(rng.uniform(20, 80, 20), n // 20)
    actuals = centre + rng.normal(size=n)
    standard = stats.norm.ppf((np.arange(k) + 0.5) / k)[:, None]
    right, wrong = centre + standard, centre + 1.5 + 2 * standard
    index, scales = np.repeat(np.arange(20), n // 20), np.ones(20)
    pool = EtsPool(0.0, {}, whole_units=False, non_negative=True)
    assert pool.with_weight_chosen(right, wrong, actuals, index, scales).weight <= 0.05
    assert pool.with_weight_chosen(wrong, right, actuals, index, scales).weight >= 0.95
    low, high = centre - 1.5 + standard, centre + 1.5 + standard
    assert 0.35 <= pool.with_weight_chosen(low, high, actuals, index, scales).weight <= 0.65
    # A gain that does not hold across series is not taken: ETS is right on half the series
    # and far off on the others, so the best pool wins on average but not series by series.
    ets_right = np.repeat(np.arange(20) % 2 == 0, n // 20)
    ours = np.where(ets_right, centre + 1.0 + standard, centre + standard)
    theirs = np.where(ets_right, centre + standard, centre - 3.0 + standard)
    assert pool.with_weight_chosen(ours, theirs, actuals, index, scales, min_t=0).weight > 0
    assert pool.with_weight_chosen(ours, theirs, actuals, index, scales).weight == 0


@pytest.mark.model
def test_a_training_run_serves_saves_and_scores_the_pool_it_chose(tmp_path):
    """On smooth synthetic series (where ETS is close to the limit), the refit's weight is
    chosen on the holdout with the evaluation fit's ETS, the served ETS is refitted on every
    day, the saved model reads it back, and what is served (one day: the calibrated network
    mixed with ETS's Normal; paths: whole network paths, then ETS paths) is what the
    evaluation scores."""
    from pipeline_lib.model.forecast import ForecastModel

    config = _small_default(tmp_path, epochs=2, patience=1)  # the pool is on by default
    assert config.evaluation.pool_with_ets
    _, panel = _synthetic("smooth", n_series=10, n_days=200, seed=4)
    fitted = stages.train(config, panel, progress=False)
    served = stages.refit(config, panel, fitted, progress=False).model
    validation_start = 200 - 56
    assert {spec.start for spec in fitted.model.pool.specs.values()} == {str(panel.series[0].dates[0].date())}
    assert fitted.model.pool.weight > 0 and served.pool.weight > 0  # ETS helps here
    # The served ETS saw every day, the evaluation fit's only the days before the validation days.
    one = panel.series[0]
    assert _same(served.pool.specs[one.series_id], EtsSpec.fit(one, 200))
    assert _same(fitted.model.pool.specs[one.series_id], EtsSpec.fit(one, validation_start))
    loaded = ForecastModel.load(served.save(tmp_path / "model"))
    assert json.dumps(loaded.pool.to_dict()) == json.dumps(served.pool.to_dict())

    test = part_days(panel, config.window, "test")
    seed = config.evaluation.seed
    raw = served.one_step(panel, test, 100, seed=seed, calibrated=False)
    calibrated = served.calibration.apply(raw.samples, raw.series_ids)
    ets = served.pool.one_day_samples(panel, test, calibrated.shape[0], calibrated)
    expected = linear_pool(calibrated, ets, served.pool.weight)
    np.testing.assert_allclose(loaded.one_step(panel, test, 100, seed=seed).samples, expected, rtol=1e-6)
    evaluation = stages.evaluate(config, served, panel, by_horizon=False)
    np.testing.assert_allclose(evaluation.sampled.samples, expected, rtol=1e-6)
    assert evaluation.metrics["ets_pool_weight"] == served.pool.weight

    k = 200
    paths = loaded.forecast(panel, 5, k, seed=3)
    kept = int(round(k * (1 - served.pool.weight)))
    unpooled = ForecastModel.load(tmp_path / "model")
    unpooled.pool = None
    network = unpooled.forecast(panel, 5, k, seed=3).samples
    np.testing.assert_allclose(paths.samples[:kept], network[:kept], rtol=1e-6)
    ets_paths = paths.samples[kept:]
    np.testing.assert_array_equal(ets_paths, served.pool.path_samples(panel, 5, k - kept, 3, network))
    # ETS's paths follow each series: their day-1 mean is its one-day forecast's, within
    # three standard errors of a mean of this many paths.
    after = {j: np.array([len(s)]) for j, s in enumerate(panel.series)}
    mean, sd = (np.concatenate(v) for v in zip(*(served.pool.specs[s.series_id].one_day(s.target, after[j])
                                                 for j, s in enumerate(panel.series)), strict=True))
    assert (np.abs(ets_paths[:, ::5].mean(axis=0) - mean) < 3 * sd / np.sqrt(k - kept)).all()
    # A series without an ETS keeps the network's paths, every one of them.
    loaded.pool.specs[one.series_id] = None
    np.testing.assert_allclose(loaded.forecast(panel, 5, k, seed=3).samples[:, :5], network[:, :5], rtol=1e-6)


@pytest.mark.model
def test_at_weight_zero_nothing_of_ets_is_kept_or_served(tmp_path, monkeypatch):
    """A pool whose chosen weight is 0 serves the network alone and stores no ETS."""
    config = _small_default(tmp_path, epochs=2, patience=1)
    _, panel = _synthetic("retail", n_series=4, n_days=200, seed=4)
    monkeypatch.setattr(EtsPool, "with_weight_chosen", lambda self, *args: self)  # weight stays 0
    fitted = stages.train(config, panel, progress=False)
    served = stages.refit(config, panel, fitted, progress=False).model
    assert served.pool.weight == 0 and served.pool.specs == {}
    test = part_days(panel, config.window, "test")
    alone = served.one_step(panel, test, 50, seed=1)
    served.pool = None
    np.testing.assert_array_equal(alone.samples, served.one_step(panel, test, 50, seed=1).samples)
