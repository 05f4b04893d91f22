"""Time-based split, per-series scaling and sliding windows.

The feature layout, the scalers that fill it and the windows that read it change together
(a new feature touches all three), so they share one module of about 500 lines.

Each model input is a window of ``context_length`` days ending on the target day ``d``.
The feature row of day ``t`` holds what is known at the start of that day::

    [ z(t-1), observed(t-1), covariates(t-1 or t) ..., one_hot(weekday(t)) x 7, [sin, cos of
      the year's phase of t,] magnitude ]

where ``z`` is the target after the per-series transform (``log1p`` for non-negative
demand, identity otherwise) and standardisation fitted on the series' training part only.
Lagging the target and the covariates by one day means a forecast never sees the day it
predicts. Covariates known in advance (``data.known_covariates``: a price plan, a promotion
calendar) are read on the target day itself, from the series' plan rows for days after its
data (:meth:`Series.plan`). The weekday of the target day is known in advance too (it carries the Saturday
closures), and so is the season: with ``yearly_features`` two columns give the target day's
place in the year. Days before a series starts are zero rows with ``observed = 0``, so short series
still produce full-length windows.

The model predicts ``z(d)``; :func:`inverse_transform` maps samples back to units.

Training reads windows through :class:`LazyWindows`, which keeps a few bytes per series-day
and assembles each batch on demand; :func:`build_windows` materialises every window (about
``L * F * 4`` bytes per series-day), which only small panels afford.

With ``level_days > 0`` (:func:`center_windows`) each window is also centred on its recent
level: the mean of its last ``level_days`` observed lags is subtracted from the lags and
from the target (and added back to every sample). The network then forecasts demand
*relative to the last week*, so a lasting level shift (the 1,000 -> 1,800 story) reaches
the forecasts within days instead of waiting for a retrain to refit the scalers. With
``trend_days > 0`` the centre also moves along the window's local linear trend (Holt's
linear method): the lags are taken net of it and each day ahead is centred one slope
further on, so a 28-day sample path extrapolates the trend instead of holding its origin's
level (which a network trained one day ahead does not learn to undo). A window whose days
are significantly better explained by one step than by a line (a level shift) keeps the
level alone. The slope is also an input (``FeatureSpec.trend_column``), the same on every
row of a window and of the path that starts from it.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass

import numpy as np

from pipeline_lib.config import WindowConfig
from pipeline_lib.data.validate import Panel, Series

N_WEEKDAYS = 7
_THURSDAY = 3  # the weekday (Monday = 0) of epoch day 0, 1970-01-01
# The feature layout (see the module docstring): the lagged target first, so a sample path
# can write a sampled value into column 0 of the next day's row and keep the rest.
LAG_COLUMN = 0  # z(t-1)
OBSERVED_COLUMN = 1  # 1 where the lag is a real day, 0 on padding before the series starts
FIRST_COVARIATE_COLUMN = 2
_INPUT_CLIP = 50.0  # scaled values beyond this carry no extra signal but can blow up gates
# No predictive sample of demand exceeds this multiple of the series' largest fitted day. A
# heavy-tailed head (Student-t in log space) otherwise draws a few samples of 1e6-1e13 units
# that dominate sample means, sample CRPS and any order quantity built from the paths; ten
# times the record day is beyond any demand a planner would stock for.
SAMPLE_CEILING_FACTOR = 10.0
STEP_TEST_LEVEL = 0.05  # a window is read as a level shift, not a trend, at this significance


def target_transform(non_negative: bool) -> str:
    """The per-series transform of the target: ``log1p`` for non-negative demand (multiplicative
    noise, samples that never go below 0), ``none`` for targets that can be negative."""
    return "log1p" if non_negative else "none"


def forward_transform(y: np.ndarray, transform: str) -> np.ndarray:
    """Units -> transformed target, before standardisation (negative demand counts as 0
    under ``log1p``). The count head's sampled-lag feedback is the same map in TensorFlow
    (:meth:`pipeline_lib.model.heads.CountHead.to_lag`)."""
    if transform == "log1p":
        return np.log1p(np.maximum(y, 0.0))
    return np.asarray(y, dtype=float)


def inverse_transform(z: np.ndarray, loc, scale, transform: str) -> np.ndarray:
    """Model space -> units; ``loc``/``scale`` broadcast against ``z`` (one value per series).

    ``log1p`` values are clipped to [0, 30] before ``expm1``: below 0 is no demand, and 30
    (about 1e13 units) only guards against overflow of a wild sample.
    """
    raw = np.asarray(z, dtype=float) * scale + loc
    if transform == "log1p":
        return np.expm1(np.clip(raw, 0.0, 30.0))
    return raw


@dataclass(frozen=True)
class SeriesScaler:
    """Per-series affine scaling of the transformed target and covariates."""

    transform: str  # "log1p" or "none"
    loc: float
    scale: float
    covariate_loc: tuple[float, ...]
    covariate_scale: tuple[float, ...]
    peak: float | None = None  # largest target of the fitted days, units (None: models saved before it)
    weekday_profile: tuple[float, ...] = ()  # 7 model-space offsets, Monday first (empty: none)

    def profile_at(self, weekdays: np.ndarray) -> np.ndarray:
        """The series' weekday offsets at ``weekdays`` (ints, Monday = 0), model space;
        zeros without a profile."""
        weekdays = np.asarray(weekdays) % N_WEEKDAYS
        if not self.weekday_profile:
            return np.zeros(weekdays.shape, dtype=np.float32)
        return np.asarray(self.weekday_profile, dtype=np.float32)[weekdays]

    @property
    def sample_ceiling(self) -> float:
        """Largest value a predictive sample of this series may take, in units: ``inf`` for
        models saved before the peak was stored, and without the ``log1p`` transform."""
        if self.peak is None or self.transform != "log1p":
            return np.inf
        return SAMPLE_CEILING_FACTOR * max(self.peak, 1.0)

    def forward(self, y: np.ndarray) -> np.ndarray:
        """Units -> model space (:func:`inverse_transform` maps samples back, vectorised over
        series)."""
        return (forward_transform(y, self.transform) - self.loc) / self.scale

    def scale_covariates(self, covariates: np.ndarray) -> np.ndarray:
        if covariates.shape[-1] == 0:
            return covariates
        loc = np.asarray(self.covariate_loc)
        scale = np.asarray(self.covariate_scale)
        return np.clip((covariates - loc) / scale, -_INPUT_CLIP, _INPUT_CLIP)


@dataclass(frozen=True)
class FeatureSpec:
    """What the network's inputs mean; stored with the model."""

    context_length: int
    covariate_names: tuple[str, ...]
    transform: str
    magnitude_loc: float
    magnitude_scale: float
    level_days: int = 0  # 0: no window centring (models saved before it existed)
    trend_days: int = 0  # > 0: windows also centred on a local linear trend fitted to this many days
    weekday_profile: bool = False  # lags and targets net of each series' weekday offsets
    yearly_features: bool = False  # sin and cos of the target day's phase in the year
    known_covariates: tuple[str, ...] = ()  # of covariate_names: read on the target day, not a day late
    trend_input: bool = False  # with trend_days: the window's slope is also an input (models saved before: no)

    @property
    def known_covariate_index(self) -> list[int]:
        """Positions in ``covariate_names`` of the covariates known in advance."""
        return [self.covariate_names.index(name) for name in self.known_covariates]

    @property
    def known_covariate_columns(self) -> list[int]:
        """Feature columns of the covariates known in advance."""
        return [FIRST_COVARIATE_COLUMN + j for j in self.known_covariate_index]

    @property
    def covariate_columns(self) -> slice:
        return slice(FIRST_COVARIATE_COLUMN, FIRST_COVARIATE_COLUMN + len(self.covariate_names))

    @property
    def weekday_columns(self) -> slice:
        """The one-hot weekday of the target day (Monday first)."""
        start = self.covariate_columns.stop
        return slice(start, start + N_WEEKDAYS)

    @property
    def yearly_columns(self) -> slice:
        """Sine and cosine of the target day's phase in the year (empty without them)."""
        start = self.weekday_columns.stop
        return slice(start, start + (2 if self.yearly_features else 0))

    @property
    def calendar_columns(self) -> slice:
        """Everything known in advance about the target day: weekday and season."""
        return slice(self.weekday_columns.start, self.yearly_columns.stop)

    @property
    def magnitude_column(self) -> int:
        return self.yearly_columns.stop

    @property
    def trend_column(self) -> int | None:
        """The window's slope times its length (the trend's rise over the window, scaled), the
        same on every row, so the network can weigh the extrapolated trend; None without it."""
        return self.magnitude_column + 1 if self.trend_input and self.trend_days > 0 else None

    @property
    def num_features(self) -> int:
        return self.magnitude_column + (2 if self.trend_column is not None else 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> FeatureSpec:
        return cls(**{**raw, "covariate_names": tuple(raw["covariate_names"]),
                      "known_covariates": tuple(raw.get("known_covariates", ()))})


@dataclass(frozen=True)
class SplitPoints:
    """Index of the first validation day and first test day of one series."""

    validation_start: int
    test_start: int


def split_points(series: Series, window: WindowConfig) -> SplitPoints:
    """Time-based split: the last ``test_days`` are test, the ``validation_days`` before are validation."""
    test_start = len(series) - window.test_days
    return SplitPoints(validation_start=test_start - window.validation_days, test_start=test_start)


def _robust_scale(values: np.ndarray, floor: float) -> tuple[float, float]:
    loc = float(np.mean(values)) if len(values) else 0.0
    std = float(np.std(values)) if len(values) else 0.0
    if not np.isfinite(std) or std < 1e-8:
        std = max(abs(loc), 1.0)
    return loc, max(std, floor)


def fit_scaler(series: Series, fit_end: int, transform: str, weekday_profile: bool = False) -> SeriesScaler:
    """Fit on ``series`` days ``[0, fit_end)`` only (the training part).

    ``weekday_profile``: also the series' own weekly shape, ES-RNN style: the mean
    standardised value of each weekday minus the mean over weekdays (zeros with fewer than
    two weeks), which the features take out of every lag and the target.
    """
    y = series.target[:fit_end]
    z = forward_transform(y, transform)
    loc, scale = _robust_scale(z, floor=0.1 if transform == "log1p" else 1e-6)
    profile: tuple[float, ...] = ()
    if weekday_profile:
        weekdays = series.dates[:fit_end].dayofweek.to_numpy()
        standard = (np.asarray(z, dtype=float) - loc) / scale
        means = np.zeros(N_WEEKDAYS)
        if len(standard) >= 2 * N_WEEKDAYS:
            means = np.array([standard[weekdays == w].mean() for w in range(N_WEEKDAYS)])
            means -= means.mean()
        profile = tuple(float(v) for v in means)
    cov_loc, cov_scale = [], []
    for j in range(series.covariates.shape[1]):
        c_loc, c_scale = _robust_scale(series.covariates[:fit_end, j], floor=1e-6)
        cov_loc.append(c_loc)
        cov_scale.append(c_scale)
    peak = float(np.max(y)) if len(y) else 0.0
    return SeriesScaler(transform, loc, scale, tuple(cov_loc), tuple(cov_scale), peak, profile)


def fit_scalers(
    panel: Panel, window: WindowConfig, transform: str, level_days: int = 0, part: str = "train",
    weekday_profile: bool = False, yearly_features: bool = False, trend_days: int = 0,
) -> tuple[dict[str, SeriesScaler], FeatureSpec]:
    """Fit every series' scaler on its ``part`` (``train``, or ``all`` days for the refit of
    the served model) and the cross-series magnitude feature."""
    if part not in ("train", "all"):
        raise ValueError(f"scalers are fitted on 'train' or 'all' days, not {part!r}")
    scalers = {
        s.series_id: fit_scaler(s, split_points(s, window).validation_start if part == "train" else len(s), transform,
                                weekday_profile)
        for s in panel.series
    }
    magnitudes = np.array([sc.loc for sc in scalers.values()])
    spec = FeatureSpec(
        context_length=window.context_length,
        covariate_names=panel.covariate_names,
        transform=transform,
        magnitude_loc=float(magnitudes.mean()),
        magnitude_scale=float(max(magnitudes.std(), 1e-3)),
        level_days=level_days,
        trend_days=trend_days if level_days > 0 else 0,
        trend_input=level_days > 0 and trend_days > 0,
        weekday_profile=weekday_profile,
        yearly_features=yearly_features,
        known_covariates=panel.known_covariates,
    )
    return scalers, spec


def weekday_one_hot(weekdays: np.ndarray) -> np.ndarray:
    """``(n,)`` ints in 0..6 (Monday = 0) -> ``(n, 7)`` one-hot floats."""
    return np.eye(N_WEEKDAYS, dtype=np.float32)[np.asarray(weekdays) % N_WEEKDAYS]


def epoch_day(timestamp) -> int:
    """Days since 1970-01-01 (a Thursday) of a date: the calendar position of feature rows."""
    return int(np.datetime64(timestamp, "D").astype(np.int64))


def calendar_features(days: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The calendar columns (:attr:`FeatureSpec.calendar_columns`) of target days given as
    epoch days ``(...)`` -> ``(..., 7 [+ 2])``: the weekday one-hot, then with
    ``spec.yearly_features`` the sine and cosine of the day's phase in a 365.25-day year."""
    days = np.asarray(days)
    weekdays = weekday_one_hot(days + _THURSDAY)
    if not spec.yearly_features:
        return weekdays
    phase = (2 * np.pi / 365.25) * days
    return np.concatenate([weekdays, np.stack([np.sin(phase), np.cos(phase)], axis=-1).astype(np.float32)], axis=-1)


def magnitude_feature(scaler: SeriesScaler, spec: FeatureSpec) -> float:
    return float((scaler.loc - spec.magnitude_loc) / spec.magnitude_scale)


def _write_features(out: np.ndarray, lag: np.ndarray, observed: np.ndarray, covariates: np.ndarray,
                    days: np.ndarray, magnitude, spec: FeatureSpec) -> None:
    """Fill feature rows ``out (..., F)`` in the module's layout from their parts, each shaped
    like ``out``'s leading axes (``covariates`` with a trailing ``C``; ``days`` the rows'
    epoch days): one definition for a series' rows (:func:`feature_rows`) and a batch of
    windows (:class:`LazyWindows`)."""
    out[..., LAG_COLUMN] = lag
    out[..., OBSERVED_COLUMN] = observed
    out[..., spec.covariate_columns] = covariates
    out[..., spec.calendar_columns] = calendar_features(days, spec)
    out[..., spec.magnitude_column] = magnitude
    if spec.trend_column is not None:
        out[..., spec.trend_column] = 0.0  # the window's slope, written when it is centred


def _lag_rows(series: Series, scaler: SeriesScaler, spec: FeatureSpec, target: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """The rows' changing parts for days ``-L .. n``: the lagged model-space target ``(L + n + 1,)``
    and the scaled covariates ``(L + n + 1, C)`` (lagged, but the known-in-advance ones of the
    row's own day, day ``n``'s from the plan), zero before the series starts."""
    L = spec.context_length
    y = series.target if target is None else target
    n = len(y)
    z = np.clip(scaler.forward(y), -_INPUT_CLIP, _INPUT_CLIP)
    if spec.weekday_profile:  # each lag net of its own weekday's offset
        z = z - scaler.profile_at(series.dates[0].dayofweek + np.arange(n))
    lag = np.zeros(L + n + 1, dtype=np.float32)
    covariates = np.zeros((L + n + 1, len(spec.covariate_names)), dtype=np.float32)
    # Day t (row t + L) sees z(t-1): rows L+1 .. L+n hold days 1 .. n.
    lag[L + 1:] = z
    covariates[L + 1:] = scaler.scale_covariates(series.covariates)
    known = spec.known_covariate_index
    if known:  # day t (row t + L) sees its own value; tomorrow's comes from the plan
        own = scaler.scale_covariates(np.concatenate([series.covariates, series.plan(1)]))
        covariates[L:, known] = own[:, known]
    return lag, covariates


def feature_rows(series: Series, scaler: SeriesScaler, spec: FeatureSpec,
                 target: np.ndarray | None = None) -> np.ndarray:
    """Feature rows for days ``-L .. n`` (row ``r`` is day ``r - L``): shape ``(L + n + 1, F)``.

    ``target`` overrides ``series.target`` (same length), e.g. for planted shifts.
    """
    L = spec.context_length
    lag, covariates = _lag_rows(series, scaler, spec, target)
    row = np.arange(len(lag))
    rows = np.empty((len(lag), spec.num_features), dtype=np.float32)
    _write_features(rows, lag, row >= L + 1, covariates, epoch_day(series.dates[0]) + row - L,
                    magnitude_feature(scaler, spec), spec)
    return rows


def windows_for_days(rows: np.ndarray, days: np.ndarray, context_length: int) -> np.ndarray:
    """Windows ending on each target day: ``(len(days), L, F)``. Day ``d`` may be ``n`` (tomorrow)."""
    L = context_length
    view = np.lib.stride_tricks.sliding_window_view(rows, L, axis=0)  # (rows - L + 1, F, L)
    # The window ending on day d covers rows d+1 .. d+L, i.e. view index d+1.
    return np.ascontiguousarray(view[np.asarray(days) + 1].transpose(0, 2, 1))


def target_offsets(scaler: SeriesScaler, spec: FeatureSpec, series: Series, days: np.ndarray) -> np.ndarray:
    """``(len(days),)`` model-space offset of each target day beyond its window's level: the
    series' weekday offset of that day with ``spec.weekday_profile``, else zeros. Day ``d``
    may lie beyond the series (forecast days)."""
    if not spec.weekday_profile:
        return np.zeros(len(days), dtype=np.float32)
    return scaler.profile_at(series.dates[0].dayofweek + np.asarray(days))


def step_sse(values: np.ndarray, observed: np.ndarray, min_rows: int = 2) -> np.ndarray:
    """``(N,)`` residual sum of squares of the best single step through each row of
    ``values`` ``(N, T)``: the mean before and the mean after one break, the break placed
    where the sum is least, with at least ``min_rows`` observed values (``observed`` 0/1) on
    each side; ``inf`` where no break has that many."""
    weights = observed.astype(float)
    count = np.cumsum(weights, axis=1)[:, :-1]  # rows 0..k before a break after row k
    total = np.cumsum(weights * values, axis=1)
    squares = np.cumsum(weights * values ** 2, axis=1)
    before, before_sq = total[:, :-1], squares[:, :-1]
    all_count, all_total, all_sq = count[:, -1:] + weights[:, -1:], total[:, -1:], squares[:, -1:]
    after_count = all_count - count
    valid = (count >= min_rows) & (after_count >= min_rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        sse = (before_sq - before ** 2 / count) + (all_sq - before_sq - (all_total - before) ** 2 / after_count)
    return np.where(valid, sse, np.inf).min(axis=1, initial=np.inf)


@functools.cache
def step_critical_ratio(rows: int, level: float = STEP_TEST_LEVEL) -> float:
    """The ``1 - level`` quantile of (line's residual sum of squares) / (:func:`step_sse`) over
    windows of ``rows`` values of pure noise, neither step nor slope (the null under which a
    step beats a line most often). A window with a larger ratio is a level shift at that
    significance. Simulated once per length (20,000 Gaussian windows, fixed seed); ``inf``
    below 4 rows, where no step fits."""
    if rows < 4:
        return float("inf")
    noise = np.random.default_rng(0).normal(size=(20_000, rows))
    observed = np.ones_like(noise)
    ratio = _line_sse(noise, observed)[0] / step_sse(noise, observed)
    return float(np.quantile(ratio, 1.0 - level))


def _line_sse(values: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N,)`` residual sum of squares of the least-squares line through each row's observed
    values (``values``, ``observed``: ``(N, T)``, row position = day) and the line's slope
    (0 with fewer than two observed values)."""
    n, rows = values.shape
    x = np.arange(rows, dtype=float)
    count = np.maximum(observed.sum(axis=1), 1.0)
    x_mean = (x * observed).sum(axis=1) / count
    z_mean = (values * observed).sum(axis=1) / count
    spread = (observed * (x - x_mean[:, None]) ** 2).sum(axis=1)
    covariance = (observed * (x - x_mean[:, None]) * (values - z_mean[:, None])).sum(axis=1)
    fits = (observed.sum(axis=1) >= 2) & (spread > 0)
    slope = np.divide(covariance, spread, out=np.zeros(n), where=fits)
    total = (observed * (values - z_mean[:, None]) ** 2).sum(axis=1)
    return total - slope * covariance, slope


def center_windows(inputs: np.ndarray, level_days: int, trend_days: int = 0,
                   trend_column: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subtract each window's recent level (and trend) from its lagged target (``LAG_COLUMN``).

    ``inputs``: ``(N, L, F)``; the level of a window is the mean of the lag over its last
    ``level_days`` rows that are observed (``OBSERVED_COLUMN``), 0 when none is. With
    ``trend_days`` the window also has a local linear trend: the least-squares slope of the
    lag over its last ``trend_days`` observed rows (per day; 0 with fewer than two), and each
    observed lag is taken net of it too, measured from the level's centre, so the lags are
    level- and trend-free and the target day, ``(level_days + 1) / 2`` days after that centre,
    is centred on the level extrapolated along the trend (as Holt's linear method forecasts).
    A window where the best single step (:func:`step_sse`) fits those rows significantly
    better than the line (:func:`step_critical_ratio` of their observed count, a 5% test) is a level shift, not a
    trend: it gets slope 0, i.e. the level alone, which the shift's new days take over within
    ``level_days``.

    With ``trend_column`` (``FeatureSpec.trend_column``) every row of that column gets the
    window's slope times its length, so the network sees how far the trend it is centred on
    carries (and can learn how far to trust it).

    Returns the centred copy, the centre of the target day ``(N,)`` (which the caller
    subtracts from targets and adds to samples) and the slopes ``(N,)`` (day ``h`` of a
    path from the window is centred ``(h - 1) * slope`` further on; zeros without a trend).
    """
    n, length = inputs.shape[:2]
    if level_days <= 0:
        zeros = np.zeros(n, dtype=np.float32)
        return inputs, zeros, zeros
    recent = inputs[:, -level_days:, :]
    observed = recent[:, :, OBSERVED_COLUMN]
    weight = np.maximum(observed.sum(axis=1), 1.0)
    level = (recent[:, :, LAG_COLUMN] * observed).sum(axis=1) / weight
    centred = inputs.copy()
    centred[:, :, LAG_COLUMN] -= level[:, None] * inputs[:, :, OBSERVED_COLUMN]  # padding rows stay zero
    slope = np.zeros(n)
    if trend_days > 0:
        position = np.arange(length, dtype=float)
        # The level's centre: the mean position of the rows it averaged (row j holds the lag
        # of day d - L + j, so the target day d sits at position L).
        centre = (position[-level_days:] * observed).sum(axis=1) / weight
        fitted = inputs[:, -trend_days:, OBSERVED_COLUMN].astype(float)
        values = inputs[:, -trend_days:, LAG_COLUMN].astype(float)
        line_sse, slope = _line_sse(values, fitted)
        # A level shift also has a least-squares slope, and extrapolating it overshoots the
        # new level for a window's length; so a window where one step fits significantly
        # better than the line keeps the level alone.
        # The critical ratio of as many values as each window observes: a young series'
        # padded window has fewer, and by chance a step fits few values better.
        counts, which = np.unique(fitted.sum(axis=1).astype(int), return_inverse=True)
        critical = np.array([step_critical_ratio(int(c)) for c in counts])[which]
        shifted = line_sse > critical * step_sse(values, fitted)
        slope = np.where(shifted, 0.0, slope)
        centred[:, :, LAG_COLUMN] -= slope[:, None] * (position - centre[:, None]) * inputs[:, :, OBSERVED_COLUMN]
        level = level + slope * (length - centre)
        if trend_column is not None:
            centred[:, :, trend_column] = (slope * length)[:, None]
    return centred, level.astype(np.float32), slope.astype(np.float32)


def part_days(panel: Panel, window: WindowConfig, part: str) -> dict[int, np.ndarray]:
    """Day indices of ``part`` (``train``, ``validation``, ``test``, ``holdout`` = validation +
    test, or ``all``: what the served model is refitted on) for each series, keyed by its
    position in ``panel.series``. Training days start at 1, because day 0 has no observed lag."""
    days = {}
    for k, s in enumerate(panel.series):
        points = split_points(s, window)
        bounds = {
            "train": (1, points.validation_start),
            "validation": (points.validation_start, points.test_start),
            "test": (points.test_start, len(s)),
            "holdout": (points.validation_start, len(s)),
            "all": (1, len(s)),
        }[part]
        days[k] = np.arange(*bounds)
    return days


def actuals_for(panel: Panel, days: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``(N,)`` of ``days`` in their order, and the series position of each ``(N,)``."""
    actuals = np.concatenate([panel.series[k].target[d] for k, d in days.items()])
    series_index = np.concatenate([np.full(len(d), k) for k, d in days.items()])
    return actuals, series_index


@dataclass(frozen=True)
class WindowSet:
    """Model-ready arrays for one part of the split.

    ``inputs``: ``(N, L, F)`` float32; ``targets``: ``(N,)`` float32 in model space, both
    centred on each window's recent level; ``levels`` ``(N,)``: where each target is centred
    (the level plus the target day's weekday offset; zeros without centring or profile);
    ``series_index``/``day_index``: which series and which day of it each window predicts.
    """

    inputs: np.ndarray
    targets: np.ndarray
    series_index: np.ndarray
    day_index: np.ndarray
    levels: np.ndarray
    units: np.ndarray | None = None  # (N,) the targets in units (count heads learn these)
    context: np.ndarray | None = None  # (N, 3) [offset, scale, shift] of log-demand, see window_context

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, index: np.ndarray) -> WindowSet:
        """The windows at ``index`` (ints into ``0 .. len - 1``), as :meth:`LazyWindows.batch`."""
        return WindowSet(*(None if part is None else part[index] for part in (
            self.inputs, self.targets, self.series_index, self.day_index, self.levels, self.units, self.context)))

    def head_targets(self, space: str) -> np.ndarray:
        """What a head of ``space`` (``model`` or ``units``) is trained on."""
        if space == "model":
            return self.targets
        if self.units is None:
            raise ValueError("these windows carry no unit targets")
        return self.units

    def head_context(self) -> np.ndarray:
        """``(N, 3)`` float32; ``[0, 1, 0]`` rows when the windows carry no context."""
        return neutral_context(len(self)) if self.context is None else self.context


def neutral_context(n: int) -> np.ndarray:
    """``(n, 3)`` rows ``[0, 1, 0]``: the context of heads in model space, which ignore it."""
    return np.tile(np.array([[0.0, 1.0, 0.0]], np.float32), (n, 1))


def window_context(locs: np.ndarray, scales: np.ndarray, levels: np.ndarray,
                   shifts: np.ndarray | None = None) -> np.ndarray:
    """``(N, 3)`` ``[loc + level * scale, scale, shift]`` for heads in units: the first two
    map the head's output to log-demand (``log(mean) = p0 * scale + offset``); ``shift`` is
    the target day's weekday offset, which the lag of a sampled value is net of
    (``(log1p(y) - offset) / scale - shift``). A units head learns the weekday's effect on
    its mean from the weekday input, as without a profile: ``log1p(0) = 0`` put into the
    offset would make a closed day's baseline mean e^0 = 1 unit, not 0.
    """
    shifts = np.zeros_like(levels) if shifts is None else shifts
    return np.stack([locs + levels * scales, scales, shifts], axis=1).astype(np.float32)


def build_windows(
    panel: Panel,
    scalers: dict[str, SeriesScaler],
    spec: FeatureSpec,
    window: WindowConfig,
    part: str,
) -> WindowSet:
    """Every one-day-ahead window of ``part`` (see :func:`part_days`) at once. Training
    targets start at day 1, because day 0 has no observed lag. For a large panel, train
    from :class:`LazyWindows` instead: this holds ``L * F`` floats per series-day."""
    return LazyWindows(panel, scalers, spec, window, part).materialise()


class LazyWindows:
    """The windows of :func:`build_windows` for ``part``, assembled a batch at a time.

    :func:`build_windows` materialises ``(N, L, F)`` floats, ``L * F`` (about 300) times the
    data, which does not fit in memory at a retailer's catalogue size. This keeps only each
    series' lagged model-space target and covariates, its model-space and unit targets
    (together ``12 + 4 C`` bytes per series-day, less than the panel itself) and builds any
    batch of windows from them on demand: :meth:`batch` returns exactly the rows
    ``build_windows(...).batch(index)`` would. Windows are numbered as there: series by
    series, days in order.
    """

    def __init__(self, panel: Panel, scalers: dict[str, SeriesScaler], spec: FeatureSpec, window: WindowConfig,
                 part: str):
        self.spec = spec
        L = spec.context_length
        ordered = panel.series
        n_rows = sum(L + len(s) + 1 for s in ordered)
        n_days = sum(len(s) for s in ordered)
        # Filled in place, series by series: no second copy of the data while building.
        self._lag = np.empty(n_rows, dtype=np.float32)
        self._covariates = np.empty((n_rows, len(spec.covariate_names)), dtype=np.float32)
        self._targets = np.empty(n_days, dtype=np.float32)
        self._units = np.empty(n_days, dtype=np.float32)
        self._row_starts = np.zeros(len(ordered), dtype=np.int64)
        self._day_starts = np.zeros(len(ordered), dtype=np.int64)
        rows = days = 0
        for k, s in enumerate(ordered):
            scaler = scalers[s.series_id]
            lag, cov = _lag_rows(s, scaler, spec)
            self._lag[rows:rows + len(lag)] = lag
            self._covariates[rows:rows + len(lag)] = cov
            self._targets[days:days + len(s)] = scaler.forward(s.target)
            self._units[days:days + len(s)] = s.target
            self._row_starts[k], self._day_starts[k] = rows, days
            rows, days = rows + len(lag), days + len(s)
        self._first_epoch_day = np.array([epoch_day(s.dates[0]) for s in ordered], dtype=np.int64)
        fitted = [scalers[s.series_id] for s in ordered]
        self._magnitude = np.array([magnitude_feature(sc, spec) for sc in fitted], dtype=np.float32)
        self._loc = np.array([sc.loc for sc in fitted])
        self._scale = np.array([sc.scale for sc in fitted])
        self._profile = np.stack([sc.profile_at(np.arange(N_WEEKDAYS)) for sc in fitted]) if fitted else None
        self._window_days = np.arange(1, L + 1)  # a window ending on day d holds rows d+1 .. d+L
        self._select(panel, window, part)

    def _select(self, panel: Panel, window: WindowConfig, part: str) -> None:
        days = part_days(panel, window, part)
        counts = [len(d) for d in days.values()]
        self._first_day = np.array([d[0] if len(d) else 0 for d in days.values()], dtype=np.int64)
        self._window_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def for_part(self, panel: Panel, window: WindowConfig, part: str) -> LazyWindows:
        """The windows of another ``part`` of the same panel, sharing this one's arrays (the
        validation windows of a training run cost no second copy of the data)."""
        other = copy.copy(self)
        other._select(panel, window, part)
        return other

    def __len__(self) -> int:
        return int(self._window_starts[-1])

    def locate(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Series position and day of the windows at ``index``, each ``(B,)`` ints."""
        index = np.asarray(index, dtype=np.int64)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"window index out of range 0 .. {len(self) - 1}")
        k = np.searchsorted(self._window_starts, index, side="right") - 1
        return k, self._first_day[k] + (index - self._window_starts[k])

    def batch(self, index: np.ndarray) -> WindowSet:
        """The windows at ``index``: ``(B, L, F)`` inputs and their targets, as :class:`WindowSet`."""
        spec, L = self.spec, self.spec.context_length
        k, d = self.locate(index)
        local = d[:, None] + self._window_days  # (B, L) row of each step within its series
        flat = self._row_starts[k][:, None] + local
        inputs = np.empty((len(k), L, spec.num_features), dtype=np.float32)
        _write_features(inputs, self._lag[flat], local >= L + 1, self._covariates[flat],
                        self._first_epoch_day[k][:, None] + local - L, self._magnitude[k][:, None], spec)
        centred, levels, _ = center_windows(inputs, spec.level_days, spec.trend_days, spec.trend_column)
        if spec.weekday_profile:
            offsets = self._profile[k, (self._first_epoch_day[k] + d + _THURSDAY) % N_WEEKDAYS]
        else:
            offsets = np.zeros(len(k), dtype=np.float32)
        day = self._day_starts[k] + d
        return WindowSet(
            inputs=centred,
            targets=self._targets[day] - (levels + offsets),
            series_index=k,
            day_index=d,
            levels=levels + offsets,
            units=self._units[day],
            context=window_context(self._loc[k], self._scale[k], levels, offsets),
        )

    def materialise(self) -> WindowSet:
        """Every window at once (what :func:`build_windows` returns)."""
        return self.batch(np.arange(len(self)))
