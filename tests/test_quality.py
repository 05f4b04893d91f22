"""Forecast quality against known answers: the synthetic oracle, the PIT calibration error,
the default model's calibration, the served refit and the bounded samples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from support import benchmark_module

from pipeline_lib import stages
from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.features import SAMPLE_CEILING_FACTOR, actuals_for, part_days
from pipeline_lib.data.synthetic import synthetic_panel
from pipeline_lib.data.validate import validate_table
from pipeline_lib.evaluation import metrics as m
from pipeline_lib.evaluation.baselines import seasonal_naive_samples
from pipeline_lib.evaluation.report import evaluate_samples


def _synthetic(kind: str, n_series: int, n_days: int, seed: int = 0):
    data = synthetic_panel(kind, n_series=n_series, n_days=n_days, seed=seed)
    return data, validate_table(data.frame, PipelineConfig().data, 1)


# --- metrics against independent computations ------------------------------------------
def test_pit_calibration_error_is_zero_for_uniform_and_exact_for_a_known_distortion():
    rng = np.random.default_rng(0)
    assert m.pit_calibration_error(rng.uniform(size=200_000)) < 0.003
    # PIT = U**2 has P(PIT <= tau) = sqrt(tau): the error is the mean of sqrt(tau) - tau.
    tau = np.array([0.005, 0.025, *np.round(np.arange(0.05, 0.951, 0.05), 3), 0.975, 0.995])
    expected = float(np.mean(np.sqrt(tau) - tau))
    assert m.pit_calibration_error(rng.uniform(size=200_000) ** 2) == pytest.approx(expected, abs=0.003)
    # ... and its central 80% interval holds P(0.1 < U**2 <= 0.9) = sqrt(0.9) - sqrt(0.1).
    assert m.randomised_coverage(rng.uniform(size=200_000) ** 2, 0.8) == pytest.approx(
        np.sqrt(0.9) - np.sqrt(0.1), abs=0.003)


def test_randomised_pit_of_a_calibrated_count_forecast_is_uniform_where_coverage_is_not():
    """Poisson(0.3) forecasts of Poisson(0.3) demand: the 80% interval [0, 1] covers 96% of
    days (most are zeros), yet the randomised PIT is uniform."""
    rng = np.random.default_rng(1)
    y = rng.poisson(0.3, size=20_000).astype(float)
    samples = rng.poisson(0.3, size=(400, 20_000)).astype(float)
    lower, upper = m.interval_from_samples(samples, 0.8)
    assert m.prediction_interval_coverage(y, lower, upper) > 0.95
    pit = m.probability_integral_transform(y, samples)
    assert m.pit_calibration_error(pit) < 0.01
    # The interval judged by the randomised PIT covers its nominal share; an over-dispersed
    # forecast of the same mean (negative binomial, 4x the variance) does not, although its
    # inclusive interval covers 0.95 of these days as well.
    for level in (0.8, 0.9, 0.95):
        assert m.randomised_coverage(pit, level) == pytest.approx(level, abs=0.01)
    spread = rng.negative_binomial(0.1, 0.1 / 0.4, size=(400, 20_000)).astype(float)
    assert abs(m.randomised_coverage(m.probability_integral_transform(y, spread), 0.8) - 0.8) > 0.03
    assert evaluate_samples(y, samples, np.zeros(len(y), dtype=int), np.ones(1))["picp_90_randomised"] == \
        pytest.approx(0.9, abs=0.01)


# --- the synthetic benchmark -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["retail", "smooth"])
def test_synthetic_oracle_is_the_distribution_the_data_was_drawn_from(kind):
    data, panel = _synthetic(kind, n_series=40, n_days=400)
    days = {k: np.arange(300, 400) for k in range(len(panel.series))}
    actuals, _ = actuals_for(panel, days)
    oracle = data.oracle_samples(days, num_samples=400)
    # Calibrated by construction: randomised PIT uniform, central intervals at nominal.
    assert m.pit_calibration_error(m.probability_integral_transform(actuals, oracle)) < 0.015
    lower, upper = m.interval_from_samples(oracle, 0.9)
    inside = m.prediction_interval_coverage(actuals, lower, upper)
    assert inside >= 0.9 - 0.015  # discrete quantiles can only cover more
    # Its exact quantiles agree with scipy's negative binomial where there is no zero inflation.
    k = int(np.argmax(data.zero_share == 0))
    mu, r = data.mean[k, 350], data.dispersion[k]
    assert data.oracle_quantiles([0.1, 0.9], k, np.array([350]))[:, 0] == pytest.approx(
        stats.nbinom.ppf([0.1, 0.9], r, r / (r + mu)))


def test_oracle_beats_seasonal_naive_on_the_metric_every_benchmark_uses():
    data, panel = _synthetic("retail", n_series=30, n_days=400, seed=3)
    days = {k: np.arange(372, 400) for k in range(len(panel.series))}
    actuals, series_index = actuals_for(panel, days)
    scales = np.array([m.seasonal_naive_scale(s.target[:372]) for s in panel.series])
    oracle = evaluate_samples(actuals, data.oracle_samples(days), series_index, scales)
    naive = evaluate_samples(actuals, seasonal_naive_samples(panel, days, {k: 372 for k in days}), series_index,
                             scales)
    assert oracle["crps_scaled"] < 0.8 * naive["crps_scaled"]


def test_synthetic_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown synthetic kind 'weekly'"):
        synthetic_panel("weekly")


# --- the default model ---------------------------------------------------------------
def _small_default(tmp_path, **train) -> PipelineConfig:
    """The default configuration (head, refit, recalibration) at a size that trains in seconds."""
    return PipelineConfig(
        workdir=tmp_path / "work",
        window={"context_length": 14, "validation_days": 28, "test_days": 28, "min_train_days": 28},
        model={"lstm_units": (16, 8)},
        train={"epochs": 6, "batch_size": 128, "patience": 2, "kl_ramp_epochs": 2, **train},
        evaluation={"num_samples": 100},
    )


@pytest.mark.model
def test_default_model_is_calibrated_on_synthetic_demand_and_a_miscalibrated_one_is_not(tmp_path):
    """Randomised-PIT calibration error over the 23 levels, pooled over the test days of a
    synthetic retail set: the served default model stays within 0.05 (the oracle's is about
    0.01 on this many points); the same forecasts with their spread halved around the median
    (over-confident) or doubled (too wide) fail the same bound."""
    config = _small_default(tmp_path)
    _, panel = _synthetic("retail", n_series=24, n_days=300, seed=5)
    trained = stages.backtest_model(config, panel, progress=False)
    assert trained.model.model_config.head == "count"  # head: auto on whole-number demand
    days = part_days(panel, config.window, "test")
    actuals, _ = actuals_for(panel, days)
    samples = trained.model.one_step(panel, days, config.evaluation.num_samples, seed=1).samples
    served = m.pit_calibration_error(m.probability_integral_transform(actuals, samples))
    median = np.median(samples, axis=0)
    narrow = np.round(np.maximum(median + 0.5 * (samples - median), 0.0))
    wide = np.round(np.maximum(median + 2.0 * (samples - median), 0.0))
    errors = {name: m.pit_calibration_error(m.probability_integral_transform(actuals, s))
              for name, s in (("narrow", narrow), ("wide", wide))}
    assert served < 0.05, served
    assert min(errors.values()) > 0.05, errors


@pytest.mark.model
def test_served_model_is_refitted_on_every_day_for_the_epochs_early_stopping_chose(tmp_path):
    config = _small_default(tmp_path, epochs=4, patience=1)
    data, panel = _synthetic("retail", n_series=6, n_days=200, seed=2)
    # A record day inside the test days: only a model fitted on every day has seen it.
    k = 0
    series = panel.series[k]
    series.target[-3] = series.target.max() * 5 + 10
    fitted = stages.train(config, panel, progress=False)
    served = stages.refit(config, panel, fitted, progress=False)
    assert served.evaluation_fit is fitted.training
    assert served.training.epochs_run == fitted.training.best_epoch
    assert served.model.scalers[series.series_id].peak == series.target.max()
    assert fitted.model.scalers[series.series_id].peak < series.target.max()
    # The refit's calibration comes from the evaluation fit's out-of-sample holdout days.
    holdout = sum(len(d) for d in part_days(panel, config.window, "holdout").values())
    assert served.model.calibration.n_calibration == holdout
    # refit: false serves the evaluation fit itself.
    assert stages.fit_served(config.updated(train={"refit": False}), panel, progress=False).evaluation_fit is None


@pytest.mark.model
def test_maps_by_series_are_fitted_saved_and_used_for_every_day_one_forecast(tmp_path):
    """``evaluation.recalibrate_by_series``: every scored series keeps its calibration days'
    PITs, the saved model reads them back, and both the one-day forecasts and day 1 of the
    sample paths are remapped by their own series' map (the same as a global recalibration
    whose levels are that map), not by the global one."""
    from pipeline_lib.evaluation.calibration import HorizonRecalibration, PitRecalibration
    from pipeline_lib.model.forecast import ForecastModel

    config = _small_default(tmp_path, epochs=2, patience=1, refit=False).updated(
        evaluation={"recalibrate_by_series": True, "pool_with_ets": False})  # the maps alone, no pool with ETS
    _, panel = _synthetic("retail", n_series=6, n_days=200, seed=4)
    model = stages.train(config, panel, progress=False).model
    calibration = model.calibration
    validation = part_days(panel, config.window, "validation")
    assert {sid: len(pits) for sid, pits in calibration.by_series.items()} == {
        s.series_id: len(validation[k]) for k, s in enumerate(panel.series)}
    loaded = ForecastModel.load(model.save(tmp_path / "model"))
    assert loaded.calibration == calibration

    grid = np.linspace(0.0, 1.0, 100_001)  # fine enough that reading the map between its points is exact
    test = part_days(panel, config.window, "test")
    raw_days = model.one_step(panel, test, 100, seed=config.evaluation.seed, calibrated=False)
    served_days = loaded.one_step(panel, test, 100, seed=config.evaluation.seed)
    # The training run's evaluation scores what is served: the same samples.
    evaluation = stages.evaluate(config, model, panel, by_horizon=False)
    np.testing.assert_array_equal(evaluation.sampled.samples, served_days.samples)
    raw_paths = model.forecast(panel, 3, 100, seed=6, calibrated=False)
    served_paths = loaded.forecast(panel, 3, 100, seed=6)
    # Day 1 of the paths beside a recalibration of later days (too few days here to fit one)
    assert loaded.path_calibration is None
    loaded.path_calibration = HorizonRecalibration((2,), (PitRecalibration.identity(),))
    served_beside = loaded.forecast(panel, 3, 100, seed=6)
    moved = 0
    for series in panel.series:
        own = PitRecalibration(tuple(calibration.level(grid, series.series_id)), 1)
        first_day = np.flatnonzero(raw_paths.series_ids == series.series_id)[:1]
        for raw, served, columns in ((raw_days, served_days, raw_days.series_ids == series.series_id),
                                     (raw_paths, served_paths, first_day), (raw_paths, served_beside, first_day)):
            np.testing.assert_allclose(served.samples[:, columns], own.apply(raw.samples[:, columns]), rtol=1e-6)
            moved += not np.allclose(served.samples[:, columns],
                                     PitRecalibration(calibration.levels, 1).apply(raw.samples[:, columns]))
    assert moved >= 9  # the series' maps are not the global one


def test_a_warm_refit_starts_from_the_model_and_keeps_the_full_kl_weight(tmp_path, monkeypatch):
    """The simulation's retrain budget: the start model's weights, scalers and calibration,
    every day of the panel, and no KL ramp (the start posterior was trained at full weight)."""
    config = _small_default(tmp_path, epochs=3, patience=1)
    _, panel = _synthetic("retail", n_series=4, n_days=150, seed=3)
    start = stages.train(config, panel, progress=False).model
    seen = []
    original = stages.training.train_model

    def recording(network, windows, validation, train_config, **kwargs):
        seen.append((train_config.kl_annealing, [w.copy() for w in network.get_weights()], kwargs["epochs"]))
        return original(network, windows, validation, train_config, **kwargs)

    monkeypatch.setattr(stages.training, "train_model", recording)
    warm = stages.warm_refit(config, panel, start, epochs=1)
    kl_annealing, initial, epochs = seen[0]
    assert kl_annealing == "none" and epochs == 1
    assert all(np.array_equal(a, b) for a, b in zip(initial, start.network.get_weights(), strict=True))
    assert warm.calibration is start.calibration
    assert warm.scalers == start.scalers and warm.spec == start.spec
    assert start.scalers[panel.series[0].series_id].peak < panel.series[0].target.max()  # the panel saw more


def test_the_simulations_full_retrain_budget_is_a_training_run_on_every_day_so_far(tmp_path):
    """``--retrain-budget full``: the retrain is what a training run on the day would serve
    (scalers refitted on every seen day, the recalibration fitted on the evaluation fit's
    holdout), not a warm refit of the current model; ``warm`` keeps the model's scalers."""
    from pipeline_lib.errors import ConfigError
    from pipeline_lib.monitoring.simulation import simulation_retrain

    config = _small_default(tmp_path, epochs=2, patience=1)
    _, panel = _synthetic("retail", n_series=4, n_days=150, seed=3)
    start = stages.train(config, panel.until(panel.series[0].dates[99].date()), progress=False).model
    series = panel.series[0]
    assert start.scalers[series.series_id].peak < series.target.max()  # the record day came later
    full = simulation_retrain(config, "full", epochs=1)(start, panel)
    assert full.scalers[series.series_id].peak == series.target.max()
    holdout = sum(len(d) for d in part_days(panel, config.window, "holdout").values())
    assert full.calibration.n_calibration == holdout
    warm = simulation_retrain(config, "warm", epochs=1)(start, panel)
    assert warm.scalers == start.scalers and warm.calibration is start.calibration
    with pytest.raises(ConfigError, match="unknown retrain budget 'cold'; budgets: warm, full"):
        simulation_retrain(config, "cold", epochs=1)


def test_auto_head_is_count_for_intermittent_whole_numbers_and_normal_otherwise():
    config = PipelineConfig()
    assert config.model.head == "auto"
    assert config.resolved_model(targets_are_counts=True, zero_share=0.25).head == "count"
    assert config.resolved_model(targets_are_counts=True, zero_share=0.0).head == "normal"  # smooth volumes
    assert config.resolved_model(targets_are_counts=False, zero_share=0.25).head == "normal"
    negative = config.updated(data={"non_negative": False})
    assert negative.resolved_model(targets_are_counts=True, zero_share=0.25).head == "normal"
    pinned = config.updated(model={"head": "student_t"})
    assert pinned.resolved_model(targets_are_counts=True, zero_share=0.25).head == "student_t"
    # The trend is auto by default and follows the head: over the whole window with the
    # Normal head, none with the others; 0 turns it off.
    assert config.model.trend_days is None
    assert config.updated(model={"trend_days": 0}).resolved_model(True, 0.0).trend_days == 0
    assert config.resolved_model(targets_are_counts=True, zero_share=0.0).trend_days == config.window.context_length
    assert config.resolved_model(targets_are_counts=True, zero_share=0.25).trend_days == 0
    assert config.updated(model={"head": "student_t"}).resolved_model(True, 0.25).trend_days == 0
    assert config.updated(model={"head": "normal"}).resolved_model(True, 0.25).trend_days == 28
    assert config.updated(model={"level_days": 0}).resolved_model(True, 0.0).trend_days == 0  # no centre to move
    assert config.updated(model={"trend_days": 14}).resolved_model(True, 0.25).trend_days == 14


# --- no head produces absurd samples -------------------------------------------------
@pytest.mark.model
@pytest.mark.parametrize("head", ["normal", "student_t", "count", "count_mixture", "quantile"])
def test_no_head_draws_samples_beyond_the_ceiling_even_with_exploding_tails(tmp_path, head):
    """Each head's output layer is pushed to a huge spread (and, for the Student-t, df near
    2): without the ceiling the samples reach 1e6+ units; with it, none exceeds
    SAMPLE_CEILING_FACTOR times the series' largest fitted day, and all are finite."""
    from dataclasses import replace

    config = _small_default(tmp_path, epochs=1).updated(model={"head": head})
    _, panel = _synthetic("retail", n_series=4, n_days=160, seed=4)
    trained = stages.train(config.updated(evaluation={"recalibrate": False}), panel, progress=False)
    model = trained.model
    bias = model.network.output_layer.bias_loc  # raw head parameters of every window
    spread = np.full(bias.shape, 8.0, np.float32)  # scale / gaps softplus(8) = 8 standard units
    spread[0] = 0.0
    if head == "student_t":
        spread[2] = -20.0  # df = 2 + softplus(-20): the heaviest tail the head allows
    if head == "count":
        spread[:] = (8.0, -20.0, -20.0)  # log-mean 8 standard units up, total count 0.01, no zeros
    if head == "count_mixture":  # the same, and half the days bulk orders e^8 times larger still
        spread[:] = (8.0, -20.0, -20.0, 0.0, 8.0, -20.0)
    bias.assign(spread)
    days = part_days(panel, config.window, "test")
    samples = model.one_step(panel, days, num_samples=200, seed=0).samples
    ceilings = np.concatenate([np.full(len(d), model.scalers[panel.series[k].series_id].peak) for k, d in days.items()])
    assert np.isfinite(samples).all()
    assert (samples <= SAMPLE_CEILING_FACTOR * np.maximum(ceilings, 1.0) + 1e-9).all()
    # The ceiling is what holds them: the same model without a stored peak explodes.
    model.scalers = {sid: replace(sc, peak=None) for sid, sc in model.scalers.items()}
    unbounded = model.one_step(panel, days, num_samples=200, seed=0).samples
    assert unbounded.max() > 100 * SAMPLE_CEILING_FACTOR * ceilings.max()


# --- per-series weekday profile (ES-RNN style normalisation) ---------------------------
@pytest.mark.model
def test_a_path_feeds_back_the_lag_a_one_step_forecast_reads(tmp_path):
    """With the weight noise and the head's noise switched off, day 2 of a sample path
    (conditioned on the path's own day 1) must equal the one-day-ahead forecast of day 2
    given that day 1 as an actual: the weekday offsets are taken out of the fed-back value
    and put back on every day exactly as for observed lags."""
    from dataclasses import replace

    # No level centring: a path keeps its origin's level for every day, a one-step forecast
    # re-centres on the latest week, so only without centring are the two the same function.
    config = _small_default(tmp_path, epochs=1).updated(
        model={"head": "normal", "weekday_profile": True, "level_days": 0}, evaluation={"recalibrate": False})
    _, panel = _synthetic("smooth", n_series=3, n_days=160, seed=6)
    model = stages.train(config, panel, progress=False).model
    assert any(abs(v) > 0.05 for sc in model.scalers.values() for v in sc.weekday_profile)
    for layer in model.network.variational_layers():
        for name in layer._posterior_names:
            getattr(layer, f"{name}_rho").assign(np.full(getattr(layer, f"{name}_rho").shape, -30.0, np.float32))
    head_bias = model.network.output_layer.bias_loc.numpy()
    head_bias[1] = -30.0  # scale = min_scale: samples are the location
    model.network.output_layer.bias_loc.assign(head_bias)
    kernel = model.network.output_layer.kernel_loc.numpy()
    kernel[:, 1] = 0.0
    model.network.output_layer.kernel_loc.assign(kernel)

    paths = model.forecast(panel, horizon=3, num_samples=4, seed=0, calibrated=False)
    days = paths.samples[0].reshape(len(panel.series), 3)  # (series, day) in units
    extended = replace(panel, series=tuple(
        replace(s, dates=s.dates.append(s.dates[-1:] + np.timedelta64(1, "D")),
                target=np.append(s.target, days[k, 0]), covariates=np.vstack([s.covariates, s.covariates[-1:]]))
        for k, s in enumerate(panel.series)))
    # Day index len(s) of the extended series is the path's second day ("tomorrow" of it).
    one_step = model.one_step(extended, {k: np.array([len(s)]) for k, s in enumerate(extended.series)},
                              num_samples=4, seed=0, calibrated=False).samples[0]
    np.testing.assert_allclose(days[:, 1], one_step, rtol=0.01)
    assert np.abs(days[:, 1] / days[:, 0] - 1).max() > 0.02  # weekday offsets differ: the check has teeth


@pytest.mark.model
def test_a_path_with_a_trend_follows_the_line_fitted_to_its_last_days(tmp_path):
    """With ``trend_days`` and the network's output switched off (deterministic weights,
    location 0, the smallest scale), a sample path is its origin window's centre carried
    along the trend: in model space the mean of the last ``level_days`` days plus the
    least-squares slope of the last ``trend_days`` (numpy's polyfit on the scaled series)
    times the days from that mean's centre, and the one-day forecast of day 1 is the path's
    day 1. Without the trend the path stays at the mean."""
    from pipeline_lib.data.features import inverse_transform

    config = _small_default(tmp_path, epochs=1).updated(
        model={"head": "normal", "weekday_profile": False, "level_days": 7, "trend_days": 14},
        evaluation={"recalibrate": False, "recalibrate_paths": False})
    _, panel = _synthetic("smooth", n_series=3, n_days=160, seed=6)
    model = stages.train(config, panel, progress=False).model
    for layer in model.network.variational_layers():
        for name in layer._posterior_names:
            getattr(layer, f"{name}_rho").assign(np.full(getattr(layer, f"{name}_rho").shape, -30.0, np.float32))
    model.network.output_layer.kernel_loc.assign(np.zeros_like(model.network.output_layer.kernel_loc.numpy()))
    bias = np.zeros_like(model.network.output_layer.bias_loc.numpy())
    bias[1] = -30.0  # scale = min_scale: samples are the location, 0 in the centred space
    model.network.output_layer.bias_loc.assign(bias)

    horizon = 5
    paths = model.forecast(panel, horizon=horizon, num_samples=4, seed=0, calibrated=False)
    days = paths.samples[0].reshape(len(panel.series), horizon)
    for k, series in enumerate(panel.series):
        scaler = model.scalers[series.series_id]
        z = scaler.forward(series.target)
        slope = np.polyfit(np.arange(14), z[-14:], 1)[0]
        centre = z[-7:].mean() + slope * (4 + np.arange(horizon))  # the mean's centre is 4 days before day 1
        expected = inverse_transform(centre, scaler.loc, scaler.scale, model.spec.transform)
        np.testing.assert_allclose(days[k], expected, rtol=2e-3)
        assert abs(slope) * horizon > 0.01  # the series move: the check has teeth
    one_step = model.one_step(panel, {k: np.array([len(s)]) for k, s in enumerate(panel.series)}, num_samples=4,
                              seed=0, calibrated=False).samples[0]
    np.testing.assert_allclose(one_step, days[:, 0], rtol=2e-3)


def test_intervals_read_off_samples_of_a_perfect_forecast_cover_their_nominal_share():
    """100 samples from the true distribution of each outcome: the central 95% and 80%
    intervals of ``sample_quantiles`` cover 95% and 80% on average (numpy's default linear
    interpolation covered 93.1% and 78.4%)."""
    from pipeline_lib.contract import sample_quantiles

    rng = np.random.default_rng(7)
    y = rng.lognormal(3.0, 0.4, size=40_000)
    samples = rng.lognormal(3.0, 0.4, size=(100, 40_000))
    for level in (0.95, 0.8):
        lower, upper = sample_quantiles(samples, [(1 - level) / 2, (1 + level) / 2])
        assert m.prediction_interval_coverage(y, lower, upper) == pytest.approx(level, abs=0.004)


def test_the_quality_benchmark_sets_an_override_to_none_and_names_a_mistyped_one():
    """``--set model.trend_days=null`` must reach the config as None (auto); a merge that
    reads None as "leave as is" silently benchmarked the default instead."""
    import argparse

    module = benchmark_module("quality")

    def args(*overrides):
        return argparse.Namespace(dataset="smooth", epochs=2, config=None, set=list(overrides))

    config = module.build_config(args("model.trend_days=null", "window.context_length=14"))
    assert config.model.trend_days is None and config.window.context_length == 14
    assert config.window.test_days == 28 and config.data.target_col == "units"
    with pytest.raises(SystemExit, match="trend_dayz"):
        module.build_config(args("model.trend_dayz=3"))


def test_paired_differences_pair_runs_by_fold_and_seed_across_files():
    """A variant split over two files against one file: only the (fold, seed) runs both
    have are paired, per model, with the mean difference and its standard error."""
    def result(runs):
        return {"runs": [{"model": m, "fold": f, "seed": s, "metrics": {"crps_scaled": v}} for m, f, s, v in runs]}

    a = [result([("lstm", 0, 42, 0.50), ("lstm", 1, 42, 0.40)]),
         result([("lstm", 0, 43, 0.60), ("naive", 0, 42, 0.9)])]
    b = [result([("lstm", 0, 42, 0.52), ("lstm", 1, 42, 0.41), ("lstm", 0, 43, 0.66), ("lstm", 2, 42, 0.1),
                 ("ets", 0, 42, 0.7)])]
    got = benchmark_module("quality").paired_differences(a, b)
    diff = np.array([-0.02, -0.01, -0.06])
    assert list(got) == ["lstm"] and got["lstm"]["n"] == 3
    assert got["lstm"]["mean_difference"] == pytest.approx(diff.mean())
    assert got["lstm"]["standard_error"] == pytest.approx(diff.std(ddof=1) / np.sqrt(3))


def test_the_headroom_bounds_recover_a_known_miscalibration_and_the_weekday_shares_add_up(tmp_path):
    """``benchmarks/headroom.py``: the in-sample recalibration of a forecast twice too wide
    reaches the CRPS of the true distribution (and leaves a calibrated one where it is); the
    weekday shares sum to ``crps_scaled``; the pool's end weights are its two inputs."""
    module = benchmark_module("headroom")
    rng = np.random.default_rng(3)
    n_series, n_days, k = 20, 70, 400
    series_index = np.repeat(np.arange(n_series), n_days)
    centre = np.repeat(rng.uniform(50, 100, n_series), n_days)
    actuals = centre + rng.normal(size=len(centre)) * 5.0
    standard = stats.norm.ppf((np.arange(k) + 0.5) / k)[:, None]
    true, wide = centre + 5.0 * standard, centre + 10.0 * standard
    np.savez_compressed(tmp_path / "fold0.npz", actuals=actuals, series_index=series_index,
                        dates=np.tile(np.arange(n_days), n_series), scales=np.full(n_series, 5.0),
                        lstm_seed42=true, lstm_raw_seed42=wide)
    fold = module.Fold(tmp_path / "fold0.npz")
    everyone = np.zeros(len(actuals), int)
    recalibrated = module.in_sample_recalibration(fold, wide, everyone)
    assert fold.crps_of_samples(wide) > 1.15 * fold.crps_of_samples(true)  # 1.19 for twice the sd
    assert recalibrated == pytest.approx(fold.crps_of_samples(true), rel=0.02)
    assert module.in_sample_recalibration(fold, true, everyone) == pytest.approx(fold.crps_of_samples(true), rel=0.01)
    assert fold.weekday_shares(true).sum() == pytest.approx(fold.crps_of_samples(true))
    assert (fold.weekday_shares(true) > 0).all()
    for weight, alone in ((0.0, true), (1.0, wide)):  # re-read at levels (i + 1/2) / K, so not bit-equal
        assert fold.crps_of_samples(module.linear_pool(true, wide, weight)) == pytest.approx(
            fold.crps_of_samples(alone), rel=5e-3)
    pooled = module.linear_pool(true, wide, 0.3)
    assert pooled.shape == true.shape
    assert fold.crps_of_samples(true) < fold.crps_of_samples(pooled) < fold.crps_of_samples(wide)


def test_the_headroom_series_maps_fitted_on_one_fold_correct_a_bias_that_persists_into_the_next(tmp_path):
    """``benchmarks/headroom.py`` section 4: when each series keeps its own bias from one fold
    to the next, its mean PIT correlates across the folds and maps by series fitted on the
    earlier fold beat the global map on the later one; without a bias, they cannot."""
    module = benchmark_module("headroom")
    rng = np.random.default_rng(4)
    n_series, n_days, k = 30, 28, 200
    series_index = np.repeat(np.arange(n_series), n_days)
    standard = stats.norm.ppf((np.arange(k) + 0.5) / k)[:, None]
    scores = {}
    for name, spread in (("biased", 1.0), ("unbiased", 0.0)):
        bias = np.repeat(rng.normal(0.0, spread, n_series), n_days)
        folds = []
        for f in range(2):
            centre = np.repeat(rng.uniform(50, 100, n_series), n_days)
            path = tmp_path / name / f"fold{f}.npz"
            path.parent.mkdir(exist_ok=True)
            np.savez_compressed(path, actuals=centre + bias + rng.normal(size=len(centre)), series_index=series_index,
                                dates=np.tile(np.arange(n_days), n_series), scales=np.ones(n_series),
                                lstm_raw_seed42=centre + 1.5 * standard)
            folds.append(module.Fold(path))
        now, past = folds
        scores[name] = {prior: module.series_recalibration_score(past, now, "lstm_raw_seed42", prior)
                        for prior in (28.0, 1e9)}
        scores[name]["correlation"] = module.mean_pit_correlation(past, now, "lstm_raw_seed42")
    assert scores["biased"]["correlation"] > 0.6
    assert scores["biased"][28.0] < 0.9 * scores["biased"][1e9]
    assert abs(scores["unbiased"]["correlation"]) < 0.4
    assert scores["unbiased"][28.0] > 0.99 * scores["unbiased"][1e9]
