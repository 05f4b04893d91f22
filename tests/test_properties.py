"""Property-based tests: whatever the input, a clear rejection or finite, well-formed output.

Hypothesis generates hostile long-format frames (mixed column types, NaN/inf, duplicate
keys, unsorted and time-zoned dates, huge values, single-row series, unicode ids) and
random sample matrices for the metrics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline_lib.config import DataConfig
from pipeline_lib.contract import QUANTILE_COLUMNS, check_forecast_frame
from pipeline_lib.data.validate import validate_table
from pipeline_lib.errors import DataValidationError
from pipeline_lib.evaluation import metrics as m
from pipeline_lib.evaluation.report import evaluate_samples
from pipeline_lib.model.forecast import forecast_table

SOURCE = "generated.csv"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.one_of(st.sampled_from(["A", "B", "ß-ü", "店铺-7", "🛒", " ", "1"]), st.integers(-3, 3), st.none())
days = st.integers(0, 60).map(lambda d: pd.Timestamp("2024-01-01") + pd.Timedelta(days=d))
dates = st.one_of(
    days.map(lambda d: d.strftime("%Y-%m-%d")),
    days.map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S+05:00")),  # a foreign time zone
    days.map(lambda d: d.strftime("%Y-%m-%dT23:30:00-08:00")),
    days.map(lambda d: d.strftime("%d/%m/%Y")),
    st.sampled_from(["", "not a date", "2024-13-45", None]),
)
targets = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 10**12),
    st.sampled_from(["12", "x", "", None, True]),
)
rows = st.lists(st.tuples(ids, dates, targets), min_size=0, max_size=40)


def _frame(generated: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(generated, columns=["series_id", "date", "units"])


@SETTINGS
@given(rows, st.sampled_from(["zero", "ffill", "reject"]), st.integers(1, 5))
def test_validator_rejects_clearly_or_returns_a_clean_panel(generated, gap_policy, min_days):
    data = DataConfig(gap_policy=gap_policy)
    try:
        panel = validate_table(_frame(generated), data, min_days=min_days, source=SOURCE)
    except DataValidationError as exc:
        message = str(exc)
        assert message.startswith(f"{SOURCE}: ") and "\n" not in message and len(message) < 600
        return
    assert panel.series
    for series in panel.series:
        assert len(series) >= min_days
        assert np.isfinite(series.target).all() and (series.target >= 0).all()
        steps = np.diff(series.dates.values).astype("timedelta64[D]").astype(int)
        assert (steps == 1).all()  # contiguous, sorted calendar days
    assert len(set(panel.series_ids)) == len(panel.series)


@SETTINGS
@given(st.data())
def test_accepted_series_keep_every_given_day(data):
    """On clean input the panel holds exactly the given days plus filled gaps."""
    n_series = data.draw(st.integers(1, 4))
    frames = []
    for k in range(n_series):
        # Mostly daily (the validator rejects data whose most common step exceeds a day).
        span = data.draw(st.integers(1, 20))
        dropped = data.draw(st.sets(st.integers(1, max(span - 2, 1)), max_size=max((span - 1) // 3, 0)))
        chosen = sorted(set(range(span)) - dropped)
        values = data.draw(st.lists(st.floats(0, 1e9), min_size=len(chosen), max_size=len(chosen)))
        frames.append(pd.DataFrame({"series_id": f"S{k}", "date": [pd.Timestamp("2024-03-01") + pd.Timedelta(days=d)
                                                                  for d in sorted(chosen)], "units": values}))
    raw = pd.concat(frames).sample(frac=1.0, random_state=0)  # unsorted
    panel = validate_table(raw, DataConfig(), min_days=1, source=SOURCE)
    for series, frame in zip(panel.series, frames, strict=True):
        given_days = frame.set_index("date")["units"]
        np.testing.assert_array_equal(series.target[series.dates.isin(given_days.index)], given_days.to_numpy())
        assert (series.target[~series.dates.isin(given_days.index)] == 0).all()  # gap policy 'zero'


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(arrays(np.float64, st.tuples(st.integers(2, 30), st.integers(1, 12)), elements=finite), st.data())
def test_metrics_of_any_finite_samples_are_finite_and_bounded(samples, data):
    n = samples.shape[1]
    actuals = np.asarray(data.draw(st.lists(finite, min_size=n, max_size=n)))
    series_index = np.asarray(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
    scales = np.asarray(data.draw(st.lists(st.floats(1e-3, 1e3), min_size=3, max_size=3)))
    scores = evaluate_samples(actuals, samples, series_index, scales, (0.5, 0.8, 0.95))
    for key, value in scores.items():
        assert np.isfinite(value), key
        if key.startswith("picp_"):
            assert 0.0 <= value <= 1.0
    assert scores["crps"] >= -1e-9
    pit = m.probability_integral_transform(actuals, samples)
    assert ((pit >= 0) & (pit <= 1)).all()


@SETTINGS
@given(arrays(np.float64, st.tuples(st.integers(2, 40), st.integers(1, 6)),
              elements=st.floats(0, 1e12, allow_nan=False)))
def test_forecast_table_of_any_samples_meets_the_contract(samples):
    frame = forecast_table(samples, [f"S{k}" for k in range(samples.shape[1])],
                           pd.date_range("2024-01-01", periods=samples.shape[1]), "1")
    check_forecast_frame(frame)
    quantiles = frame[list(QUANTILE_COLUMNS)].to_numpy()
    assert (quantiles >= samples.min(axis=0)[:, None] - 1e-6).all()
    assert (quantiles <= samples.max(axis=0)[:, None] + 1e-6).all()
