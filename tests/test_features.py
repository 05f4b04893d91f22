"""Features, scaling and the panel operations, against hand computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support import synthetic_demand

from pipeline_lib.config import DataConfig, WindowConfig
from pipeline_lib.data.features import (
    LAG_COLUMN,
    N_WEEKDAYS,
    OBSERVED_COLUMN,
    STEP_TEST_LEVEL,
    FeatureSpec,
    LazyWindows,
    center_windows,
    feature_rows,
    fit_scalers,
    forward_transform,
    inverse_transform,
    step_sse,
    target_offsets,
    target_transform,
    windows_for_days,
)
from pipeline_lib.data.validate import Series, validate_table

WINDOW = WindowConfig(context_length=14, validation_days=14, test_days=7, min_train_days=14)


@pytest.fixture
def panel():
    return validate_table(synthetic_demand(n_series=3, n_days=60), DataConfig(), min_days=1)


def test_the_feature_layout_names_every_column(panel):
    """Lag, observed flag, covariates, weekday one-hot, magnitude: at the columns the layout
    says, for every row of a series (row r is day r - L)."""
    scalers, spec = fit_scalers(panel, WINDOW, target_transform(True))
    series = panel.series[1]
    scaler = scalers[series.series_id]
    rows = feature_rows(series, scaler, spec)
    L = spec.context_length
    assert rows.shape == (L + len(series) + 1, spec.num_features)
    assert spec.covariate_columns == slice(2, 3) and spec.weekday_columns == slice(3, 3 + N_WEEKDAYS)
    assert spec.magnitude_column == spec.num_features - 1 == 3 + N_WEEKDAYS
    # Day t (row t + L) reads the target of day t - 1, standardised; padding rows are zeros.
    np.testing.assert_allclose(rows[L + 1:, LAG_COLUMN], scaler.forward(series.target), rtol=1e-6)
    assert (rows[:L + 1, OBSERVED_COLUMN] == 0).all() and (rows[L + 1:, OBSERVED_COLUMN] == 1).all()
    np.testing.assert_allclose(rows[L + 1:, spec.covariate_columns][:, 0], scaler.scale_covariates(
        series.covariates)[:, 0], rtol=1e-6)
    weekdays = series.dates[0].dayofweek + np.arange(-L, len(series) + 1)
    assert (rows[:, spec.weekday_columns].argmax(axis=1) == weekdays % 7).all()
    assert np.unique(rows[:, spec.magnitude_column]).size == 1


def test_yearly_features_give_the_target_days_season(panel):
    """With ``yearly_features`` two columns after the weekday hold the sine and cosine of each
    row's day in a 365.25-day year (computed here from the dates themselves); the rest of
    the layout moves up by two."""
    scalers, spec = fit_scalers(panel, WINDOW, target_transform(True), yearly_features=True)
    series = panel.series[2]
    rows = feature_rows(series, scalers[series.series_id], spec)
    L = spec.context_length
    assert spec.yearly_columns == slice(3 + N_WEEKDAYS, 5 + N_WEEKDAYS)
    assert spec.magnitude_column == spec.num_features - 1 == 5 + N_WEEKDAYS
    dates = series.dates[0] + pd.to_timedelta(np.arange(-L, len(series) + 1), unit="D")
    phase = 2 * np.pi * (dates - pd.Timestamp("1970-01-01")).days.to_numpy() / 365.25
    np.testing.assert_allclose(rows[:, spec.yearly_columns], np.stack([np.sin(phase), np.cos(phase)], axis=1),
                               atol=1e-6)
    assert (rows[:, spec.weekday_columns].argmax(axis=1) == dates.dayofweek).all()


@pytest.mark.parametrize("features", ["plain", "profile", "profile+yearly", "profile+trend"])
@pytest.mark.parametrize("part", ["train", "validation", "all"])
def test_lazy_windows_are_the_serving_paths_windows(part, features):
    """A batch assembled from the compact per-series arrays equals the windows the serving
    path cuts from each series' full feature rows (feature_rows -> windows_for_days ->
    center_windows), in any order, for ragged series shorter than the context and with
    covariates."""
    frame = synthetic_demand(n_series=4, n_days=70)
    frame = frame[~((frame.series_id == "S2") & (frame.index % 70 < 45))]  # S2: 25 days, L = 14
    panel = validate_table(frame, DataConfig(), min_days=1)
    profile = features != "plain"
    scalers, spec = fit_scalers(panel, WINDOW, target_transform(True), level_days=7 if profile else 0,
                                weekday_profile=profile, yearly_features=features.endswith("yearly"),
                                trend_days=14 if features.endswith("trend") else 0)
    lazy = LazyWindows(panel, scalers, spec, WINDOW, part)
    index = np.random.default_rng(0).permutation(len(lazy))[:200]
    got = lazy.batch(index)
    series_index, days = lazy.locate(index)
    inputs, targets, offsets = [], [], []
    for k, d in zip(series_index, days, strict=True):
        series = panel.series[k]
        scaler = scalers[series.series_id]
        inputs.append(windows_for_days(feature_rows(series, scaler, spec), np.array([d]), WINDOW.context_length))
        targets.append(scaler.forward(series.target[[d]]))
        offsets.append(target_offsets(scaler, spec, series, np.array([d])))
    centred, levels, _ = center_windows(np.concatenate(inputs), spec.level_days, spec.trend_days, spec.trend_column)
    np.testing.assert_array_equal(got.inputs, centred)
    np.testing.assert_array_equal(got.levels, levels + np.concatenate(offsets))
    np.testing.assert_allclose(got.targets, np.concatenate(targets) - got.levels, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got.units, [panel.series[k].target[d] for k, d in zip(series_index, days,
                                                                                          strict=True)])
    # S2's 25 days: train days 1..3, validation 4..17, all 1..24; the others' 70: 1..48, 49..62, 1..69.
    assert len(lazy) == {"train": 3 * 48 + 3, "validation": 4 * 14, "all": 3 * 69 + 24}[part]
    assert (got.day_index == days).all() and (got.series_index == series_index).all()
    shared = LazyWindows(panel, scalers, spec, WINDOW, "test").for_part(panel, WINDOW, part)
    assert len(shared) == len(lazy)
    np.testing.assert_array_equal(shared.batch(index).inputs, got.inputs)
    np.testing.assert_array_equal(shared.batch(index).targets, got.targets)


def test_trend_centring_extrapolates_a_line_to_the_target_day():
    """Lags on a line ``a + b t`` (row j of a window holds day ``d - L + j``, the target day
    sits at position L), after padding rows of a short series: the trend-centred lags are 0,
    the slope is ``b`` and the target's centre is the line at L, from any level window;
    without a trend the centre is the level's mean and the lags keep the line's tilt."""
    length, a, b = 14, 0.3, 0.05
    window = np.zeros((2, length, 4), dtype=np.float32)
    for i, padding in enumerate((0, 5)):
        j = np.arange(padding, length)
        window[i, j, 0] = a + b * j
        window[i, j, 1] = 1.0
    for level_days in (3, 7):
        centred, levels, slopes = center_windows(window, level_days, trend_days=10)
        np.testing.assert_allclose(centred[:, :, 0], 0.0, atol=1e-6)
        np.testing.assert_allclose(slopes, b, rtol=1e-5)
        np.testing.assert_allclose(levels, a + b * length, rtol=1e-5)
    flat, level_only, none = center_windows(window, 7)
    np.testing.assert_allclose(level_only, a + b * (length - 4), rtol=1e-5)  # the last 7 days' mean
    assert (none == 0).all() and np.ptp(flat[0, :, 0]) > 0.5
    short = window.copy()
    short[:, :-1, 1] = 0.0  # one observed day: no slope to fit
    assert (center_windows(short, 7, trend_days=10)[2] == 0).all()


def test_step_sse_is_the_best_single_break_found_by_brute_force():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(20, 12))
    observed = (rng.random((20, 12)) > 0.25).astype(float)
    observed[0] = 0.0
    observed[0, :3] = 1.0  # three observed values: no break with two on each side

    def brute(z, w):
        best = np.inf
        for k in range(1, len(z)):
            a, b = z[:k][w[:k] > 0], z[k:][w[k:] > 0]
            if len(a) >= 2 and len(b) >= 2:
                best = min(best, ((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum())
        return best

    np.testing.assert_allclose(step_sse(values, observed), [brute(z, w) for z, w in zip(values, observed, strict=True)])
    assert np.isinf(step_sse(values, observed)[0])


def test_a_level_shift_is_not_read_as_a_trend():
    """A window across a step gets the level alone (slope 0, the last days' mean), wherever
    the step lies in the window; a noisy line with a clear slope keeps its trend."""
    rng = np.random.default_rng(0)
    length, noise = 28, 0.05
    window = np.zeros((4, length, 4), dtype=np.float32)
    window[:, :, 1] = 1.0
    for i, since in enumerate((7, 10, 14, 21)):
        window[i, :, 0] = (np.arange(length) >= length - since) + rng.normal(0, noise, length)
    centred, levels, slopes = center_windows(window, 7, trend_days=length)
    assert (slopes == 0).all()
    np.testing.assert_allclose(levels, window[:, -7:, 0].mean(axis=1), rtol=1e-6)
    line = window[:1].copy()
    line[0, :, 0] = 0.02 * np.arange(length) + rng.normal(0, noise, length)
    assert center_windows(line, 7, trend_days=length)[2][0] == pytest.approx(0.02, abs=0.005)


def test_the_step_test_declares_a_step_in_pure_noise_at_its_level_and_finds_real_steps():
    """Windows of noise with neither step nor slope (other draws than the critical ratio's)
    are read as shifts about 5% of the time; a 3-sd step almost always, a line rising 4 sd
    over the window almost never."""
    rng = np.random.default_rng(7)
    length, n = 28, 4000
    days = np.arange(length)

    def slopes(values):
        window = np.zeros((n, length, 4), dtype=np.float32)
        window[:, :, 0], window[:, :, 1] = values, 1.0
        return center_windows(window, 7, trend_days=length)[2]

    noise = rng.normal(size=(n, length))
    flat = noise + 0.5  # a flat level: the slope is noise, and 0 where a step is declared
    assert np.mean(slopes(flat) == 0) == pytest.approx(STEP_TEST_LEVEL, abs=0.012)
    assert np.mean(slopes(noise + 3.0 * (days >= 18)) == 0) > 0.85
    assert np.mean(slopes(noise + 4.0 * days / length) == 0) < 0.06
    # A young series: 12 observed days after 16 rows of padding. The test keeps its level
    # there too (the critical ratio of 12 values; 28 values' declared a step in 32% of them).
    young = np.zeros((n, length, 4), dtype=np.float32)
    young[:, -12:, 0], young[:, -12:, 1] = flat[:, -12:], 1.0
    assert np.mean(center_windows(young, 7, trend_days=length)[2] == 0) == pytest.approx(STEP_TEST_LEVEL, abs=0.012)


def test_a_series_sample_is_fixed_whatever_the_order_and_size(panel):
    """Panel.sample_series picks the same series in any order of the data, keeps panel
    order, returns the panel itself when it is small enough, and a chosen series stays
    chosen when the catalogue grows by series that hash above it."""
    from dataclasses import replace

    big = validate_table(synthetic_demand(n_series=40, n_days=30), DataConfig(), min_days=1)
    chosen = big.sample_series(10).series_ids
    assert len(chosen) == 10 == len(set(chosen))
    assert chosen == [sid for sid in big.series_ids if sid in chosen]  # panel order
    shuffled = replace(big, series=tuple(big.series[k] for k in np.random.default_rng(1).permutation(40)))
    assert set(shuffled.sample_series(10).series_ids) == set(chosen)
    assert big.sample_series(40) is big and big.sample_series(100) is big
    assert set(big.sample_series(9).series_ids) < set(chosen)  # the lowest hashes, nested
    assert set(chosen) != set(big.series_ids[:10])


def test_transforms_round_trip_and_clip():
    y = np.array([0.0, 1.0, 7.0, 250.0])
    np.testing.assert_allclose(forward_transform(y, "log1p"), np.log1p(y))
    np.testing.assert_allclose(inverse_transform((np.log1p(y) - 1.0) / 2.0, 1.0, 2.0, "log1p"), y, rtol=1e-12)
    assert forward_transform(np.array([-3.0]), "log1p")[0] == 0.0  # negative demand counts as none
    assert inverse_transform(np.array([-5.0]), 0.0, 1.0, "log1p")[0] == 0.0
    np.testing.assert_allclose(inverse_transform(forward_transform(-y, "none"), 0.0, 1.0, "none"), -y)
    assert target_transform(True) == "log1p" and target_transform(False) == "none"


def test_panel_truncate_until_between_and_chunks(panel):
    cut = panel.truncate([10, 20, 30])
    assert [len(s) for s in cut.series] == [10, 20, 30]
    np.testing.assert_array_equal(cut.series[1].target, panel.series[1].target[:20])
    day = panel.series[0].dates[9]
    until = panel.until(day)
    assert all(s.dates[-1] == day and len(s) == 10 for s in until.series)
    assert panel.until(panel.series[0].dates[0] - pd.Timedelta(days=1)).series == ()  # nothing known yet
    first, last = cut.series[2].dates[12], cut.series[2].dates[25]  # series 0 ends before, 1 inside
    frame = cut.to_frame()
    inside = frame[(frame["date"] >= first) & (frame["date"] <= last)].reset_index(drop=True)
    pd.testing.assert_frame_equal(cut.between(first, last).to_frame(), inside)
    assert cut.between(first, last).series_ids == panel.series_ids[1:]
    chunks = panel.chunks(2)
    assert [len(c.series) for c in chunks] == [2, 1]
    assert [s.series_id for c in chunks for s in c.series] == panel.series_ids
    assert all(c.source == panel.source and c.covariate_names == panel.covariate_names for c in chunks)


def test_the_data_fingerprint_sees_every_value_and_only_the_values():
    """Same data in any row order: the same sha256; one changed target, covariate, date or
    id anywhere: a different one. Rows, series and dates are counted from the panel."""
    from pipeline_lib.stages import data_fingerprint

    frame = synthetic_demand(n_series=3, n_days=40)
    base = data_fingerprint(validate_table(frame, DataConfig(), min_days=1))
    assert base["rows"] == 120 and base["series"] == 3
    assert (base["first_date"], base["last_date"]) == ("2023-01-02", "2023-02-10")
    shuffled = frame.sample(frac=1.0, random_state=0)
    assert data_fingerprint(validate_table(shuffled, DataConfig(), min_days=1))["sha256"] == base["sha256"]
    last = frame.index[-1]
    for column, value in (("units", frame.at[last, "units"] + 1), ("price", frame.at[last, "price"] + 0.01),
                          ("series_id", "S9")):
        changed = frame.copy()
        changed.at[last, column] = value
        assert data_fingerprint(validate_table(changed, DataConfig(), min_days=1))["sha256"] != base["sha256"], column
    later = frame.assign(date=pd.to_datetime(frame["date"]) + pd.Timedelta(days=1))
    assert data_fingerprint(validate_table(later, DataConfig(), min_days=1))["sha256"] != base["sha256"]


def test_a_panel_back_in_long_format_is_the_table_it_came_from():
    """Panel.to_frame gives back the validated table, row for row: ids, dates, targets and
    covariates in series and date order, with the canonical column names; empty stays empty."""
    from dataclasses import replace

    frame = synthetic_demand(n_series=3, n_days=20)
    frame = frame[(frame.series_id != "S0") | (frame.index >= 12)].sample(frac=1.0, random_state=1)  # S0: 8 days
    panel = validate_table(frame, DataConfig(), min_days=1)
    back = panel.to_frame()
    expected = (frame.assign(date=pd.to_datetime(frame["date"]), units=frame["units"].astype(float))
                .rename(columns={"units": "target"}).sort_values(["series_id", "date"], ignore_index=True))
    pd.testing.assert_frame_equal(back, expected[["series_id", "date", "target", "price"]], check_dtype=False)
    assert list(replace(panel, series=()).to_frame().columns) == ["series_id", "date", "target", "price"]


def _path_inputs(spec, scalers, panel, horizon, monkeypatch) -> tuple[np.ndarray, np.ndarray]:
    """The origin windows ``(B, L, F)`` and fed-back rows ``(H, B, F)`` a small model's
    ``forecast`` hands to ``sample_paths`` (which is replaced by a recorder)."""
    from pipeline_lib.config import ModelConfig
    from pipeline_lib.model import forecast as forecasting
    from pipeline_lib.model.forecast import ForecastModel

    model = ForecastModel.create(spec, scalers, ModelConfig(lstm_units=(4,), head="normal"))
    captured = {}

    def capture(network, centred, future, num_samples, seed, context):
        captured["centred"], captured["future"] = centred, future
        return np.zeros((num_samples, future.shape[1], future.shape[0]), dtype=np.float32)

    monkeypatch.setattr(forecasting, "sample_paths", capture)
    model.forecast(panel, horizon=horizon, num_samples=2)
    return captured["centred"], captured["future"]


@pytest.mark.parametrize("yearly", [False, True])
def test_sample_paths_read_the_calendar_of_the_days_they_forecast(panel, monkeypatch, yearly):
    """The rows a path feeds back for days n+1 .. n+H carry those days' calendar (weekday and
    season) exactly as the feature rows of a series that had reached them."""
    scalers, spec = fit_scalers(panel, WINDOW, target_transform(True), yearly_features=yearly)
    horizon = 9
    _, future = _path_inputs(spec, scalers, panel, horizon, monkeypatch)
    L = spec.context_length
    for k, series in enumerate(panel.series):
        n = len(series)
        reached = Series(series.series_id, pd.date_range(series.dates[0], periods=n + horizon + 1, freq="D"),
                         np.zeros(n + horizon + 1), np.zeros((n + horizon + 1, len(panel.covariate_names))))
        rows = feature_rows(reached, scalers[series.series_id], spec)
        expected = rows[L + n + 1:L + n + 1 + horizon, spec.calendar_columns]  # days n+1 .. n+H
        np.testing.assert_array_equal(future[:, k, spec.calendar_columns], expected)  # (H, B, F)


def test_every_day_of_a_path_reads_its_origin_windows_slope(panel, monkeypatch):
    """With a trend the slope is an input: the origin window's column holds the slope of its
    centring times the window's length on every row, and so does every fed-back row of its
    path; without a trend there is no such column (nor in models saved before it)."""
    scalers, spec = fit_scalers(panel, WINDOW, target_transform(True), level_days=7, trend_days=14)
    centred, future = _path_inputs(spec, scalers, panel, 5, monkeypatch)
    L, column = spec.context_length, spec.trend_column
    origins = np.stack([windows_for_days(feature_rows(s, scalers[s.series_id], spec), np.array([len(s)]), L)[0]
                        for s in panel.series])
    _, _, slopes = center_windows(origins, 7, 14)
    assert np.abs(slopes).max() > 0  # the test would prove nothing on flat windows
    np.testing.assert_allclose(centred[:, :, column], np.repeat(slopes[:, None] * L, L, axis=1),
                               rtol=1e-6)
    np.testing.assert_allclose(future[:, :, column], np.repeat(slopes[None, :] * L, 5, axis=0),
                               rtol=1e-6)
    assert spec.num_features == spec.magnitude_column + 2
    plain = fit_scalers(panel, WINDOW, target_transform(True), level_days=7)[1]
    assert plain.trend_column is None and plain.num_features == plain.magnitude_column + 1
    saved = spec.to_dict()
    del saved["trend_input"]
    assert FeatureSpec.from_dict(saved).trend_column is None


def test_a_saved_path_calibration_recalibrates_each_day_of_the_paths_by_its_days_ahead(panel, monkeypatch, tmp_path):
    """Saved and loaded with the model, the path calibration remaps days 2.. of every path by
    its range of days ahead, day 1 by the one-day calibration; raw paths stay raw."""
    from pipeline_lib.config import ModelConfig
    from pipeline_lib.evaluation.calibration import HorizonRecalibration, PitRecalibration
    from pipeline_lib.model import forecast as forecasting
    from pipeline_lib.model.forecast import ForecastModel

    scalers, spec = fit_scalers(panel, WINDOW, target_transform(True))
    model = ForecastModel.create(spec, scalers, ModelConfig(lstm_units=(4,), head="normal"))
    rng = np.random.default_rng(0)
    model.calibration = PitRecalibration.fit(rng.beta(2, 2, 500))  # narrows
    model.path_calibration = HorizonRecalibration.fit(rng.beta(0.5, 0.5, 900), np.repeat([2, 8, 15], 300))
    raw_paths = rng.normal(size=(50, len(panel.series), 20)).astype(np.float32)  # (K, B, H)
    monkeypatch.setattr(forecasting, "sample_paths", lambda *args, **kwargs: raw_paths)
    loaded = ForecastModel.load(model.save(tmp_path / "model"))
    assert loaded.path_calibration == model.path_calibration and loaded.calibration == model.calibration

    raw = loaded.forecast(panel, horizon=20, num_samples=50, calibrated=False).samples
    served = loaded.forecast(panel, horizon=20, num_samples=50).samples
    days = np.tile(np.arange(1, 21), len(panel.series))
    np.testing.assert_allclose(served[:, days == 1], model.calibration.apply(raw[:, days == 1]))
    for first, last, bucket in ((2, 7, 0), (8, 14, 1), (15, 20, 2)):
        chosen = (days >= first) & (days <= last)
        np.testing.assert_allclose(served[:, chosen], model.path_calibration.buckets[bucket].apply(raw[:, chosen]))


@pytest.fixture
def planned_panel():
    """Three series whose ``price`` is declared known in advance, without plan rows."""
    return validate_table(synthetic_demand(n_series=3, n_days=60), DataConfig(known_covariates=("price",)),
                          min_days=1)


def test_known_covariates_are_read_on_their_own_day_and_a_cut_series_keeps_them_as_its_plan(planned_panel):
    """A covariate known in advance sits in the row of its own day (others a day late), and the
    row of the day after the data reads the plan. Cut at day m, a series' rows are the full
    series' rows up to day m: a forecast made then saw the planned value of day m."""
    scalers, spec = fit_scalers(planned_panel, WINDOW, target_transform(True))
    assert spec.known_covariates == ("price",) and spec.known_covariate_columns == [spec.covariate_columns.start]
    series = planned_panel.series[0]
    scaler = scalers[series.series_id]
    L, n, column = spec.context_length, len(series), spec.covariate_columns.start
    rows = feature_rows(series, scaler, spec)
    scaled = scaler.scale_covariates(series.covariates)[:, 0]
    np.testing.assert_allclose(rows[L:L + n, column], scaled, rtol=1e-6)  # day t reads price(t)
    assert rows[L + n, column] == pytest.approx(scaled[-1], rel=1e-6)  # no plan: the last price carried
    m = 40
    cut_rows = feature_rows(series.head(m), scaler, spec)
    np.testing.assert_array_equal(cut_rows, rows[:L + m + 1])


def test_sample_paths_read_the_plan_of_the_days_they_forecast(monkeypatch):
    """The rows a path feeds back for days n+1 .. n+H carry the planned values of a known
    covariate (then the last plan value), as the rows of a series that had reached them."""
    frame = synthetic_demand(n_series=2, n_days=60)
    frame["units"] = frame["units"].astype(float)
    frame.loc[frame.groupby("series_id").tail(6).index, "units"] = np.nan  # 6 plan rows each
    panel = validate_table(frame, DataConfig(known_covariates=("price",)), min_days=1)
    scalers, spec = fit_scalers(panel, WINDOW, target_transform(True))
    horizon = 8  # beyond the 6 planned days: the last planned value is carried
    window, future = _path_inputs(spec, scalers, panel, horizon, monkeypatch)
    column = spec.covariate_columns.start
    for k, series in enumerate(panel.series):
        scaler = scalers[series.series_id]
        planned = scaler.scale_covariates(series.plan(horizon + 1))[:, 0]  # days n .. n+H
        assert window[k, -1, column] == pytest.approx(planned[0], rel=1e-6)  # day n, in the window
        np.testing.assert_allclose(future[:, k, column], planned[1:], rtol=1e-6)  # days n+1 .. n+H
        assert planned[5] != planned[4]  # the plan really moves where it was given
